// Package worker applies "update this conversation" messages from a JetStream pull consumer to
// the Kustomer API: a paced pool of goroutines that retries what may heal, dead-letters what
// never will, and acknowledges a message only once its outcome is stored.
//
// # Promises
//
//   - At-least-once. A message is acknowledged only after Kustomer accepted the update (2xx) or
//     after its dead letter was stored (the dead-letter publish acknowledged by JetStream).
//     Anything else stays unacknowledged: handed back at shutdown, or redelivered by JetStream
//     after AckWait when the process dies.
//   - Per-conversation order. The updates of one conversation that this pool holds are sent one
//     at a time, in the order received, even while an earlier one waits for a retry; a
//     conversation that waits holds up no other.
//   - No budget burnt on requests bound to fail: a message that fails validation is
//     dead-lettered without a request; while Kustomer refuses the key or the org budget is
//     spent, nothing is sent but one probe.
//
// # How a message flows
//
// Follow one message through pool.go from top to bottom:
//
//  1. fetch: each lane has a fetch goroutine (the live lane, Pool.Consumer, and with
//     Pool.Backfill the backfill lane). It takes a slot per message it will pull (Pool.slots,
//     at most Config.MaxAckPending; the backfill lane also has a smaller cap of its own),
//     pulls a batch from its consumer and hands each message to add.
//  2. held: add decodes and validates the message once and files it as a job under its
//     conversation (conv); a conversation with no earlier job goes onto the ready channel. An
//     invalid message gets a conversation of its own: it has no order to keep.
//  3. per-conversation queue: a conv's jobs are in receive order; only the head is ever tried.
//  4. paced: a worker takes a ready conv (process), passes the two gates (below) with a
//     ticket each and waits for the Budget (the Pacer) in its priority class.
//  5. sent: try sends the head job's update through the Updater and returns an outcome.
//  6. decided: decide, a pure function (decide.go), maps the outcome, the job's attempts and the
//     policy to a decision: ack; retry after a delay; dead-letter with class, status and reason;
//     pause everything (org 429); back off one conversation (its own 429); hold for the key; or
//     keep (shutdown).
//  7. settled: settle carries the decision out, the one place that acks (confirmed by
//     JetStream), dead-letters or schedules. Acking (directly, or after the dead letter was stored) drops the job, frees its
//     slot and makes the conv ready again if it has more jobs. A retry puts the conv on a timer
//     that makes it ready later.
//
// In bulk mode (Config.Bulk, bulk.go), step 5 differs for partial updates (with a Backfill
// lane, only the backfill lane's: live updates always go as single PUTs): process hands the
// conversation to the bulker (take), which puts its head job into the bulk job being filled,
// one job per conversation at most. A full job, or one that lingered with enough items, is
// stored in the bulk bucket, submitted and read through the gates and the Budget by a goroutine
// of its own; each item is then settled by Kustomer's outcome for it: acknowledged through ack,
// as an applied single PUT is, or handed back to the workers as a single PUT that goes through
// steps 4 to 7 (an item the job failed, a job refused or past its deadline, too few items to
// fill a job in time). A conversation whose older update may still be applied late by a job is
// held back by the bulker until that job is complete or known lost.
//
// Two gates stand before every request, single PUT or bulk submit or read: the auth gate
// (gate.go: Kustomer refuses the key) and the outage breaker (breaker.go: requests fail
// transiently across conversations); while either is closed, nothing is fetched and one probe
// at a time goes out.
//
// Meanwhile the heartbeat marks every held message in progress well before the consumer's
// AckWait, so waiting for budget, order or backoff never causes a redelivery; and at shutdown
// handBack naks every held message for prompt redelivery elsewhere.
//
// # Invariants
//
//   - A conv in Pool.convs is in exactly one place: parked, a ready channel, one worker's
//     hands, a retry timer, the bulker's hands (bulk mode), or the goroutine awaiting its
//     head's acknowledgement. So one goroutine at a time touches a conversation's head job,
//     and the job fields marked "owned by the goroutine that holds the conversation" need no
//     lock. A conv is parked while an older message of it, taken by a process that died or
//     by the replica active before this one, has not come back yet (recover.go, handover.go).
//   - A conversation's next job is tried only after the previous one's acknowledgement was
//     confirmed (JetStream's reply to a double ack, or, for a message acknowledged without
//     waiting because nothing newer of its conversation was held, the message gone from the
//     work stream: Pool.unconfirmed), and a settled job is only acknowledged again, never
//     sent: so no update is applied after a newer one of its conversation, even when an
//     acknowledgement is lost.
//   - Every message a pull brought holds one slot until it is let go; a message read directly
//     by the order check across lanes (addOlder) holds none, but its conversation is joined at
//     once by the pulled message that found it. So every conversation in Pool.convs has a
//     message with a slot, there are never more conversations than cap(Pool.slots), and a
//     send on Pool.readyLive or Pool.readyBackfill (each with room for 2×MaxAckPending+1)
//     never blocks, even under Pool.mu.
//   - A message leaves Pool.bySeq only through ack (after Kustomer or the dead-letter stream
//     confirmed), handBack (nak), or, once this replica is a standby on its lane, cut
//     (handover.go: nak, unsent messages only; a conversation's head only when nobody holds it).
//   - Every request passes both gates with a ticket each, handed back by a deferred call in
//     the function that makes the request (process for a single PUT, bulker.pass for a bulk
//     submit or read), panic or not: a probe is always answered or given back, so a closed
//     gate is never left waiting for a probe that is gone.
//
// # Seams
//
// The pool depends on small interfaces, each the little it uses of a collaborator, so that
// tests of order and decisions run without NATS (see order_test.go and bulk_unit_test.go) and
// new sources of work, request kinds and limits are implementations, not edits of the pool:
//
//   - seams.go: Consumer (a lane's pull consumer), Updater (the single PUT), DeadLetterer,
//     AttemptStore (attempts across deliveries), Budget (the pacer), Outstanding (what the
//     work stream still holds unacknowledged: recover.go, ack) and OlderFinder (the order
//     check across lanes);
//   - handover.go: Role (whether this replica is the active one on a lane);
//   - bulk.go: BulkClient (submits and reads bulk jobs) and BulkStore (the jobs in flight,
//     kept across processes).
package worker
