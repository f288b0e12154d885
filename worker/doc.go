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
// One message, from fetch to settle, through the files in this order:
//
//  1. fetch (fetch.go): each lane has a fetch goroutine (the live lane, Pool.Consumer, and with
//     Pool.Backfill the backfill lane). It takes a slot per message it will pull (takeSlots:
//     Pool.slots, at most Config.MaxAckPending; the backfill lane also has a smaller cap of
//     its own; one only after a pull that brought nothing, so that a pull waiting on an empty
//     lane holds no room the other lane could use), pulls a batch from its consumer and hands
//     each message to admit.
//  2. admitted (standby.go): admit hands the message back at once while this replica is a
//     standby on the lane (goesBack), and before the first message of a new turn as the
//     active replica holds back the conversations another replica held messages of
//     (takeTurn, recover.go); then it hands the message to add.
//  3. held (dispatch.go): add decodes and validates the message once, puts ahead of it the
//     older updates of its conversation still pending in the other lane (addOlder; no request
//     while the other lane holds nothing older, see queue.OrderCheck; a check that fails is
//     tried again, the message held in progress, until one answers), and
//     files it as a job under its conversation (conv, in stream order); a conversation
//     that may go is made ready (makeReady: the ready channel of its head's class). An
//     invalid message gets a conversation of its own: it has no order to keep. Only a
//     conversation's head is ever tried.
//  4. taken (process.go): a worker (work) takes a ready conversation to process, which hands
//     it back if this replica became a standby meanwhile (giveBack, standby.go), and waits
//     until the conversation's previous update, acknowledged without waiting for the
//     confirmation, is gone from the stream (previousGone, ack.go). In bulk mode it offers
//     the head to the bulker first (bulkhost.go, package bulk).
//     With Config.Coalesce on the head's lane, its first send fixes its group (gather,
//     coalesce.go): the partial updates queued behind it that package coalesce lets join go
//     in the same PUT, as its members; they count as sent from then on, and settle settles
//     them with it (settleGroup). In bulk mode the group is fixed when the head is first
//     offered to the bulker (bulkItem): the merged update is one item of a job, whose record
//     lists every member, and an applied item settles them all (bulkHost.Applied).
//  5. sent (process.go, passage.go): try sends the head's update along a passage: the auth
//     gate and the outage breaker (package gate) each hand out a ticket, the Budget (the
//     pacer, package pacer) a turn in the message's class; the request is counted in flight
//     and in the metrics, and what its answer taught goes to the gates and the budget. While
//     the breaker suspects or holds an outage, the worker handed its probe reads a
//     conversation first (probeRead, breaker.go: Pool.Reader), so that an outage is told
//     from conversations whose updates fail on their own; then it waits again.
//  6. decided (decide.go): decide, a pure function, maps the outcome, the message's attempts
//     and the policy to a decision: ack; retry after a delay; dead-letter with class, status
//     and reason; pause everything (org 429); back off one conversation (its own 429); hold
//     for the key; or keep (shutdown).
//  7. settled (settle.go): settle is the one place a decision is carried out: it acks,
//     dead-letters, or schedules a retry (a timer that makes the conversation ready later).
//     An applied message of a run (headers queue.HeaderRunID and HeaderRunLine) is recorded
//     in the runs stream first (appliedOK, through RunRecorder); when that fails the message
//     stays held, marked accepted, and only the record is tried again.
//  8. acknowledged (ack.go): ack acknowledges, confirmed by JetStream (confirm), or, when no
//     newer message of the conversation is held, at once (ackNow; the next update then waits
//     in previousGone). acked lets the message go, frees its slot and makes the conversation
//     ready again if it has more jobs.
//
// Every acknowledgement of a message this pool tried goes through ack: settle's, the bulker's
// for an item a job applied (bulkHost.Applied), and process's for a settled message whose
// acknowledgement is missing. Three more acknowledge without a try: add, a redelivery of a
// message settled before whose acknowledgement was lost; handBack, at shutdown, a settled
// message whose confirmation did not come; deadLetterLastDelivery, at shutdown, a message on
// its last delivery once its dead letter is stored. And one deletes a message no consumer
// will deliver again: sweepStranded (stranded.go), at start and every Config.StrandedEvery,
// dead-letters each message the work stream keeps at or below its lane's acknowledgement
// floor (one whose dead letter failed at shutdown, or whose process died on its last
// delivery) and deletes it from the stream once the dead letter is stored.
//
// In bulk mode (Config.Bulk, package bulk) step 5 differs for partial updates (with a
// Backfill lane, only the backfill lane's: live updates always go as single PUTs): the
// bulker takes the head into the bulk job being filled, one job per conversation at most,
// submits and reads jobs along the same passage (bulk.Host.Request), and gives each item
// back: applied (acknowledged through ack, as an applied single PUT is), or to go as a
// single PUT through steps 4 to 8. A conversation whose older update a job may still apply
// late is held back by the bulker until that job is complete or known lost.
//
// Meanwhile the heartbeat (pool.go) marks every held message in progress well before the
// consumer's AckWait, so waiting for budget, order or backoff never causes a redelivery (the
// housekeeping that reads NATS runs beside it, in tidy, never in its way); and at shutdown
// handBack naks every held message for prompt redelivery elsewhere. No lock is held across a
// request to NATS: a read several goroutines need (a lane's acknowledgement floor, the order
// check's indexes in package queue) is made by one of them while the others wait for it
// without the lock, and share its answer.
//
// # Invariants
//
//   - A conv in Pool.convs is in exactly one place: parked, a ready channel, one worker's
//     hands, a retry timer, the bulker's hands (bulk mode), or the goroutine awaiting its
//     head's acknowledgement. So one goroutine at a time touches a conversation's head job,
//     and the job fields marked "owned by the goroutine that holds the conversation" need no
//     lock. A conv is parked while an older message of it, taken by a process that died or
//     by the replica active before this one, has not come back yet (recover.go, standby.go).
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
//   - The members of a merged update (coalesce.go) stay right behind their head, in stream
//     order (insert files a late older message behind them), and are never handed back while
//     the head is held (giveBackFrom); once the group is applied or dead-lettered they are
//     settled, and acknowledged one after the other like any settled message.
//   - A message leaves Pool.bySeq only through acked (after Kustomer or the dead-letter stream
//     confirmed), handBack (nak), or, once this replica is a standby on its lane, cut
//     (dispatch.go: nak, unsent messages only; a conversation's head only when nobody holds
//     it).
//   - Every request passes both gates with a ticket each, on a passage whose done is deferred
//     by the function that makes the request (process for a single PUT, bulkHost.Request for
//     a bulk submit or read), panic or not: a probe is always answered or given back, so a
//     closed gate is never left waiting for a probe that is gone; and a request is counted in
//     flight until it returns, panic or not.
//   - The bulker holds no lock of its own while it calls the pool, and the pool none while it
//     calls the bulker.
//
// # Seams
//
// The pool depends on small interfaces, each the little it uses of a collaborator, so that
// tests of order and decisions run without NATS (see order_test.go and bulk_unit_test.go) and
// new sources of work, request kinds and limits are implementations, not edits of the pool:
//
//   - seams.go: Consumer (a lane's pull consumer), Updater (the single PUT), Reader (the
//     breaker's probe read), DeadLetterer,
//     AttemptStore (attempts across deliveries), Budget (the pacer), Outstanding (what the
//     work stream still holds unacknowledged: recover.go, ack) and OlderFinder (the order
//     check across lanes);
//   - standby.go: Role (whether this replica is the active one on a lane);
//   - package bulk: bulk.Client (submits and reads bulk jobs) and bulk.Store (the jobs in
//     flight, kept across processes); the pool is the bulker's bulk.Host.
package worker
