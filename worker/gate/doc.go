// Package gate holds the two gates every request to Kustomer passes: a Gate that stops
// every request while a fault outside the messages lasts (the API key refused) and lets one
// probe at a time through until an answer shows it gone, and a Breaker, a Gate that closes
// by itself when requests fail transiently across conversations (Kustomer down). Both know
// nothing of messages or of the pool that uses them: a request takes a Ticket and reports on
// it what its answer taught.
package gate
