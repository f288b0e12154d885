// Package kustomertest is a fake Kustomer API server for tests, demos, benchmarks and the
// mock command.
//
// It answers PUT /v1/conversations/{id} the way Kustomer's "Update conversation" endpoint
// does, as far as public sources tell: bearer-key authentication, an org-wide request budget
// per fixed window with the x-ratelimit-limit, x-ratelimit-remaining and x-ratelimit-reset
// headers on every answer, an optional per-conversation limit whose 429s arrive while the org
// budget remains, partial updates and ?replace=true, moves to another customer, a rev that
// goes up by one per applied update, and errors in both of Kustomer's shapes. On top of that
// it injects faults (5xx answers, dropped connections, answers slower than a client timeout,
// and, since Kustomer does not say whether a 5xx can follow work already done, 5xx answers
// after the update was applied or the bulk job made: StatusAfterWork), either at random with a reproducible seed or scripted per conversation, and it records every
// request it received so a test can assert what the code under test actually sent.
//
// Use it like net/http/httptest:
//
//	srv := kustomertest.NewServer(t, kustomertest.Config{Budget: 100})
//	srv.Script(id, kustomertest.Status(503)) // the first update of id fails, the next ones succeed
//	// ... point the code under test at srv.URL with API key "test-key" ...
//	conv, _ := srv.Conversation(id) // conv.Rev, conv.Attributes: what Kustomer would now hold
//	reqs := srv.RequestsFor(id)     // every request for id, with the status it got
//
// It answers GET /v1/conversations/{id} too, the read of a conversation, with the same
// document as an update's 200, for one unit of the budget. Knobs fail the writes alone
// ([Server.SetWritesDown]: Kustomer up but refusing every update), the reads alone
// ([Server.SetReadsDown]), or deny the read role (Config.ReadForbidden,
// [Server.SetReadForbidden]); [Server.SetDown] fails both.
//
// It also answers Kustomer's bulk update: PUT /v1/conversations/bulk creates a job of 1 to
// 100 partial updates (each item the attributes of a single update, flat beside "id" and an
// optional "_clientRef") for one unit of the budget; GET /v1/bulk/{id} and
// GET /v1/bulk/{id}/batches follow it. A job is queued for the first half of
// Config.BulkDuration and running for the second, its batches (Config.BulkBatchSize items each)
// completing one after another; a batch's items are applied when it completes, each exactly as
// a single PUT of its attributes would be (rev up by one). Knobs fail items (Config.BulkFailRate,
// [Server.FailBulk]), refuse the whole submit for one bad item (Config.BulkStrict), deny the
// reads (Config.BulkReadDenied, [Server.SetBulkReadDenied]), change the answers' shape
// (Config.BulkFlat) or say less in them (Config.BulkUncounted), and script answers
// ([Server.ScriptBulkSubmit], [Server.ScriptBulkRead]);
// [Server.BulkJob] shows a job's items as they stand. Stats count budget units spent, bulk
// submits, jobs, reads and items, so a benchmark can tell what a run cost; [Server.Windows]
// lists every org window with what requests over HTTP and the other clients spent in it.
//
// Outside tests, [Start] runs the same server on a chosen address. When the fake runs in a
// container, GET /_mock/stats, GET /_mock/requests[?id=...], GET /_mock/conversations/{id},
// GET /_mock/bulk and GET /_mock/bulk/{id} serve [Server.Stats], [Server.Requests],
// [Server.Conversation], [Server.BulkJobs] and [Server.BulkJob] as JSON.
//
// The fake is a test tool and must never be exposed publicly: the /_mock endpoints need no
// authentication and reveal every request body it received, and it keeps its log in memory.
// Bind it to loopback or to a private container network.
//
// What the fake assumes where Kustomer's documentation is silent: conversation ids are 24
// lowercase hex characters (anything else is answered 400); x-ratelimit-reset is UTC epoch
// seconds rounded up (Config.ResetDelta switches to seconds from now, Config.ResetRoundDown
// rounds down, Config.ResetAbsent and Config.RateHeadersAbsent leave headers out); a budget
// window begins with the first request after the last one ended (Config.WindowStart fixes
// windows to the fake's start or to the wall clock); the org has no other client spending
// its budget (Config.Others adds them, simulated inside the fake); 401, 403, unmatched
// routes and both kinds of 429 consume no budget, every other answer does, scripted answers
// and injected faults included; a read is checked like an update (outage, key, org budget) but
// not against the per-conversation limit, and Script, ScriptAny and injected faults do not
// touch reads, while Reject fails them only with Config.RejectReads (whether a conversation
// whose updates keep failing can be read is unconfirmed); a 502 has an HTML body, as from a load balancer; a request
// without Content-Type application/json is answered 400 (the real API would likely ignore
// its body and change nothing, which a test should notice); a "rev" sent in a body is
// ignored, since the server owns it; an object sent as an attribute's value replaces the
// one stored (Config.MergeNested merges it key by key instead); a slow answer has already applied its update, so a
// client that timed out cannot tell whether it took effect.
//
// What the fake assumes about bulk updates where Kustomer's documentation is silent: more than
// 100 items, an item that is not an object or lacks a valid id, and mixed, empty, over-long
// (255) or duplicate _clientRefs are answered 400 for the whole request; a bad attribute fails
// only its item unless Config.BulkStrict; the same conversation may appear twice in one submit,
// its items applied in item order; a submit body may be up to 10 MiB (413 above); every bulk
// request that passes authentication and the org budget costs one unit, reads of unknown jobs
// (404) included, and a 403 for the missing org.permission.bulk.read role costs nothing, like
// every 401 and 403; bulk items do not count against Config.ConversationLimit, and Script,
// ScriptAny and the per-conversation limit do not touch them, while Reject fails them with
// "<status> <text>" and Config.RequireSeeded with "not found" when they are applied;
// SetForbidden refuses submits but not reads; FaultRate, DropRate and SlowRate hit bulk
// requests like any other (a slow submit creates its job, a dropped one does not); the answer to a submit is 201 with the job as it
// stands when answered ("queued", or already "complete" with BulkDuration 0); batches are
// "queued" while their job is, then "scheduled", then "complete" with a completedAt; a complete
// batch lists the conversations updated in objectIds, its failures as {"objectId","message"}
// in errors, successCount and failureCount, and, only when the items carried _clientRefs,
// results of {"_clientRef","objectId","status":"updated"|"error","error"}; jobs are kept
// for the life of the fake, and Close leaves unfinished jobs unfinished.
package kustomertest
