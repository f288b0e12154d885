// Package kustomertest is a fake Kustomer API server for tests, demos, benchmarks and the
// mock command.
//
// It answers PUT /v1/conversations/{id} the way Kustomer's "Update conversation" endpoint
// does, as far as public sources tell: bearer-key authentication, an org-wide request budget
// per fixed window with the x-ratelimit-limit, x-ratelimit-remaining and x-ratelimit-reset
// headers on every answer, an optional per-conversation limit whose 429s arrive while the org
// budget remains, partial updates and ?replace=true, moves to another customer, a rev that
// goes up by one per applied update, and errors in both of Kustomer's shapes. On top of that
// it injects faults (5xx answers, dropped connections, answers slower than a client timeout),
// either at random with a reproducible seed or scripted per conversation, and it records every
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
// Outside tests, [Start] runs the same server on a chosen address. When the fake runs in a
// container, GET /_mock/stats, GET /_mock/requests[?id=...] and GET /_mock/conversations/{id}
// serve [Server.Stats], [Server.Requests] and [Server.Conversation] as JSON.
//
// The fake is a test tool and must never be exposed publicly: the /_mock endpoints need no
// authentication and reveal every request body it received, and it keeps its log in memory.
// Bind it to loopback or to a private container network.
//
// What the fake assumes where Kustomer's documentation is silent: conversation ids are 24
// lowercase hex characters (anything else is answered 400); x-ratelimit-reset is UTC epoch
// seconds rounded up (Config.ResetDelta switches to seconds from now); 401, 403, unmatched
// routes and both kinds of 429 consume no budget, every other answer does, scripted answers
// and injected faults included; a 502 has an HTML body, as from a load balancer; a request
// without Content-Type application/json is answered 400 (the real API would likely ignore
// its body and change nothing, which a test should notice); a "rev" sent in a body is
// ignored, since the server owns it; a slow answer has already applied its update, so a
// client that timed out cannot tell whether it took effect.
package kustomertest
