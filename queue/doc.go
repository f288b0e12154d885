// Package queue is the JetStream plumbing of kustomer-worker: connecting to NATS (or starting an
// embedded server), declaring the work stream, its durable pull consumer and the dead-letter
// stream, publishing dead letters, and remembering attempt counts across redeliveries.
//
// The package knows nothing of Kustomer: messages are bytes, dead letters carry a class and a
// reason chosen by the caller.
package queue
