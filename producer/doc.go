// Package producer publishes "update this conversation" messages for kustomer-worker to apply,
// for event producers written in Go. It checks every update with the worker's own rules
// (kustomer.Update.Validate, kustomer.Decode) before anything is sent, publishes it to
// <subject>.<conversation id> and waits until JetStream has stored it. The subject is the
// live lane's, kustomer.conversations.update, by default; Config.Lane = Backfill publishes
// bulk loads to the backfill lane, kustomer.conversations.backfill, which the worker serves
// with the budget live updates leave.
//
// # Deduplication: the caller's event id
//
// Every message carries a Nats-Msg-Id, so that a publish sent again after a lost
// acknowledgement (a timeout, a reconnect, a producer restarted mid-send) is stored once:
// JetStream drops a message whose id it has seen within the stream's dedup window (2 minutes
// by default). The id is the caller's: the id of the event the update reports (an order
// shipped, a ticket escalated), stable across the caller's own retries.
//
// It is never derived from the content alone. Updates A, B, A to one conversation (open,
// done, open again) are three events and must all be applied, in that order; an id hashed
// from the content would give the second A the id of the first, and JetStream would drop it
// as a duplicate, leaving the conversation in state B. Only the producer knows whether two
// equal messages are one event sent twice or two events.
//
// # Synchronous and asynchronous
//
// Producer.Publish returns once JetStream has stored the message (or recognised it as a
// duplicate): the right call for one event at a time. A Batch keeps many publishes in flight
// and reports failures from Batch.Wait, for bursts and backfills. A producer that validates
// its whole input before publishing any of it checks each message with CheckJSON and
// publishes it with Batch.PublishChecked, which does not decode it a second time.
//
// # Errors
//
// An invalid update matches kustomer.ErrInvalid and unwraps to a *kustomer.ValidationError
// listing every problem with its field path; nothing is sent. An unusable event id matches
// ErrEventID. A failed Producer.Publish is a *PublishError naming the event and the subject;
// its Retryable method says whether publishing again with the same event id may succeed. A
// Batch sends again by itself and reports the publish it gave up on, by subject, from Wait.
package producer
