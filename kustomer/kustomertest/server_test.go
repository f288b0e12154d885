package kustomertest_test

import (
	"encoding/json"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
)

func TestUpdate(t *testing.T) {
	t.Parallel()
	t.Run("a partial update changes only the fields sent, replacing arrays and objects whole", func(t *testing.T) {
		t.Parallel()
		f := setup(t, kustomertest.Config{})
		f.srv.Seed(id(1), map[string]any{
			"name": "a", "tags": []string{"x", "y"}, "priority": 2,
			"custom": map[string]any{"k1": "v1", "k2": "v2"},
		})
		a := f.put(id(1), `{"tags":["z"],"custom":{"k1":"new"}}`)
		mustStatus(t, a, http.StatusOK)

		want := map[string]any{"name": "a", "tags": []any{"z"}, "priority": 2.0, "custom": map[string]any{"k1": "new"}}
		c, ok := f.srv.Conversation(id(1))
		if !ok || c.Rev != 1 || !reflect.DeepEqual(c.Attributes, want) {
			t.Fatalf("conversation = %+v, %v; want rev 1, attributes %v", c, ok, want)
		}
		doc := docOf(t, a)
		want["rev"] = 1.0
		if doc.Data.Type != "conversation" || doc.Data.ID != id(1) || !reflect.DeepEqual(doc.Data.Attributes, want) {
			t.Fatalf("answer = %s; want the conversation with attributes %v", a.body, want)
		}
	})

	t.Run("replace=true replaces the attributes but keeps the customer", func(t *testing.T) {
		t.Parallel()
		f := setup(t, kustomertest.Config{})
		f.srv.Seed(id(1), map[string]any{"name": "a", "priority": 2, "customer": id(9)})
		mustStatus(t, f.send(http.MethodPut, "/v1/conversations/"+id(1)+"?replace=true", `{"name":"b"}`, "test-key"), http.StatusOK)

		c, _ := f.srv.Conversation(id(1))
		want := map[string]any{"name": "b", "customer": id(9)}
		if !reflect.DeepEqual(c.Attributes, want) {
			t.Fatalf("attributes = %v; want %v", c.Attributes, want)
		}
		if r := f.srv.RequestsFor(id(1)); len(r) != 1 || !r[0].Replace || r[0].RawQuery != "replace=true" {
			t.Fatalf("log = %+v; want one request with Replace", r)
		}
	})

	t.Run("a customer body moves the conversation and keeps its fields", func(t *testing.T) {
		t.Parallel()
		f := setup(t, kustomertest.Config{})
		f.srv.Seed(id(1), map[string]any{"name": "a", "customer": id(8)})
		a := f.put(id(1), `{"customer":"`+id(9)+`"}`)
		mustStatus(t, a, http.StatusOK)

		c, _ := f.srv.Conversation(id(1))
		if c.Attributes["customer"] != id(9) || c.Attributes["name"] != "a" {
			t.Fatalf("attributes = %v; want customer %s and name a", c.Attributes, id(9))
		}
		if got := docOf(t, a).Data.Relationships.Customer.Data; got.Type != "customer" || got.ID != id(9) {
			t.Fatalf("answer relationships.customer = %+v; want customer %s", got, id(9))
		}
	})

	t.Run("rev goes up by one per applied update and only then", func(t *testing.T) {
		t.Parallel()
		f := setup(t, kustomertest.Config{})
		for i := 1; i <= 3; i++ {
			a := f.put(id(1), `{"priority":`+strconv.Itoa(i)+`}`)
			mustStatus(t, a, http.StatusOK)
			if rev := docOf(t, a).Data.Attributes["rev"]; rev != float64(i) {
				t.Fatalf("update %d: rev %v; want %d", i, rev, i)
			}
		}
		mustStatus(t, f.put(id(1), `{"priority":9}`), http.StatusBadRequest)
		f.srv.Script(id(1), kustomertest.Status(503))
		mustStatus(t, f.put(id(1), `{"priority":4}`), http.StatusServiceUnavailable)

		c, _ := f.srv.Conversation(id(1))
		if c.Rev != 3 || c.Attributes["priority"] != 3.0 {
			t.Fatalf("conversation = %+v; want rev 3, priority 3", c)
		}
		if st := f.srv.Stats(); st.Applied != 3 || f.srv.Conversations() != 1 {
			t.Fatalf("Applied = %d, Conversations = %d; want 3, 1", st.Applied, f.srv.Conversations())
		}
	})

	t.Run("a rev in the body is ignored", func(t *testing.T) {
		t.Parallel()
		f := setup(t, kustomertest.Config{})
		f.srv.Seed(id(1), map[string]any{"rev": 7})
		a := f.put(id(1), `{"rev":1,"name":"x"}`)
		mustStatus(t, a, http.StatusOK)
		c, _ := f.srv.Conversation(id(1))
		if c.Rev != 8 || c.Attributes["rev"] != nil {
			t.Fatalf("conversation = %+v; want rev 8 and no rev attribute", c)
		}
	})
}

func TestBadRequests(t *testing.T) {
	t.Parallel()
	f := setup(t, kustomertest.Config{Budget: 100})
	tests := []struct {
		name, path, body, contentType string
		status                        int
		jsonAPI                       bool // JSON:API shape, else {code, message, meta}
	}{
		{"an id that is not 24 hex characters", "/v1/conversations/ABC", `{}`, "application/json", 400, false},
		{"a body that is not JSON", "/v1/conversations/" + id(1), `{"name":`, "application/json", 400, true},
		{"a body that is an array", "/v1/conversations/" + id(1), `[{"name":"x"}]`, "application/json", 400, true},
		{"a null body", "/v1/conversations/" + id(1), `null`, "application/json", 400, true},
		{"a body sent without Content-Type application/json", "/v1/conversations/" + id(1), `{"name":"x"}`, "text/plain", 400, true},
		{"a priority outside 1 to 5", "/v1/conversations/" + id(1), `{"priority":6}`, "application/json", 400, false},
		{"more than 10 assigned users", "/v1/conversations/" + id(1), `{"assignedUsers":["1","2","3","4","5","6","7","8","9","10","11"]}`, "application/json", 400, false},
		{"an unknown status", "/v1/conversations/" + id(1), `{"status":"closed"}`, "application/json", 400, false},
		{"tags that are not strings", "/v1/conversations/" + id(1), `{"tags":[1]}`, "application/json", 400, false},
		{"a customer that is not an id", "/v1/conversations/" + id(1), `{"customer":"bob"}`, "application/json", 400, false},
		{"replace that is not a boolean", "/v1/conversations/" + id(1) + "?replace=yes", `{}`, "application/json", 400, false},
		{"a body over 1 MiB", "/v1/conversations/" + id(1), `{"name":"` + strings.Repeat("x", 1<<20) + `"}`, "application/json", 413, true},
	}
	for _, tt := range tests {
		t.Run(tt.name+" is refused", func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodPut, f.srv.URL+tt.path, strings.NewReader(tt.body))
			req.Header.Set("Authorization", "Bearer test-key")
			req.Header.Set("Content-Type", tt.contentType)
			a := f.do(req)
			mustStatus(t, a, tt.status)
			e := errorsOf(t, a)[0]
			if tt.jsonAPI && (e.Status != strconv.Itoa(tt.status) || e.Code == "" || e.Title == "" || e.Detail == "") {
				t.Fatalf("error %+v; want the JSON:API shape (status, code, title, detail)", e)
			}
			if !tt.jsonAPI && (e.Code != "bad_request" || e.Message == "" || e.Meta == nil) {
				t.Fatalf("error %+v; want the {code, message, meta} shape", e)
			}
		})
	}
	if n := f.srv.Conversations(); n != 0 {
		t.Fatalf("%d conversations exist after refused updates; want 0", n)
	}
	if st := f.srv.Stats(); st.ByStatus[400]+st.ByStatus[413] != len(tests) {
		t.Fatalf("stats %+v; want %d refusals", st, len(tests))
	}
}

func TestAuthentication(t *testing.T) {
	t.Parallel()
	t.Run("a wrong or missing key is answered 401 and costs no budget", func(t *testing.T) {
		t.Parallel()
		f := setup(t, kustomertest.Config{Budget: 1})
		for _, key := range []string{"wrong-key", ""} {
			a := f.send(http.MethodPut, "/v1/conversations/"+id(1), `{}`, key)
			mustStatus(t, a, http.StatusUnauthorized)
			if got := a.int(t, "X-Ratelimit-Remaining"); got != 1 {
				t.Fatalf("401 with remaining %d; want 1", got)
			}
			if e := errorsOf(t, a)[0]; e.Code != "unauthorized" {
				t.Fatalf("401 error code %q; want unauthorized", e.Code)
			}
		}
		a := f.put(id(1), `{}`)
		mustStatus(t, a, http.StatusOK)
		if got := a.int(t, "X-Ratelimit-Remaining"); got != 0 {
			t.Fatalf("remaining %d after the first accepted request; want 0", got)
		}
		if reqs := f.srv.Requests(); len(reqs) != 3 || reqs[0].Status != 401 || reqs[2].Status != 200 {
			t.Fatalf("log = %+v; want 401, 401, 200", reqs)
		}
	})

	t.Run("SetAPIKey rotates the accepted key", func(t *testing.T) {
		t.Parallel()
		f := setup(t, kustomertest.Config{APIKey: "old"})
		mustStatus(t, f.send(http.MethodPut, "/v1/conversations/"+id(1), `{}`, "old"), http.StatusOK)
		f.srv.SetAPIKey("new")
		mustStatus(t, f.send(http.MethodPut, "/v1/conversations/"+id(1), `{}`, "old"), http.StatusUnauthorized)
		mustStatus(t, f.send(http.MethodPut, "/v1/conversations/"+id(1), `{}`, "new"), http.StatusOK)
	})

	t.Run("SetForbidden answers 403 until switched off", func(t *testing.T) {
		t.Parallel()
		f := setup(t, kustomertest.Config{Budget: 5})
		f.srv.SetForbidden(true)
		a := f.put(id(1), `{}`)
		mustStatus(t, a, http.StatusForbidden)
		if a.int(t, "X-Ratelimit-Remaining") != 5 {
			t.Fatalf("403 consumed budget: remaining %s", a.header.Get("X-Ratelimit-Remaining"))
		}
		mustStatus(t, f.send(http.MethodPut, "/v1/conversations/"+id(1), `{}`, "wrong"), http.StatusUnauthorized)
		f.srv.SetForbidden(false)
		mustStatus(t, f.put(id(1), `{}`), http.StatusOK)
	})
}

func TestBudgetUnderConcurrentLoad(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name                  string
		delta                 bool
		budget, workers, each int
	}{
		{"32 clients x 50 requests, x-ratelimit-reset in epoch seconds", false, 500, 32, 50},
		{"16 clients x 25 requests, x-ratelimit-reset in seconds from now", true, 150, 16, 25},
	} {
		t.Run(tc.name, func(t *testing.T) {
			budget, workers, each, delta := tc.budget, tc.workers, tc.each, tc.delta
			f := setup(t, kustomertest.Config{Budget: budget, ResetDelta: delta, RetryAfter: true})
			start := time.Now()
			answers := make(chan answer, workers*each)
			var wg sync.WaitGroup
			for w := range workers {
				wg.Go(func() {
					for i := range each {
						answers <- f.put(id(w*each+i), `{"priority":1}`)
					}
				})
			}
			wg.Wait()
			close(answers)

			byStatus := map[int]int{}
			seenRemaining := map[int]bool{}
			resets := map[int]bool{}
			for a := range answers {
				if a.err != nil {
					t.Fatal(a.err)
				}
				byStatus[a.status]++
				if a.int(t, "X-Ratelimit-Limit") != budget {
					t.Fatalf("x-ratelimit-limit %s; want %d", a.header.Get("X-Ratelimit-Limit"), budget)
				}
				rem := a.int(t, "X-Ratelimit-Remaining")
				switch {
				case rem < 0 || rem >= budget:
					t.Fatalf("remaining %d out of [0, %d)", rem, budget)
				case a.status == 200 && seenRemaining[rem]:
					t.Fatalf("remaining %d answered twice: budget double-spent", rem)
				case a.status == 200:
					seenRemaining[rem] = true
				case rem != 0:
					t.Fatalf("429 with remaining %d; want 0", rem)
				case a.int(t, "Retry-After") < 1 || a.int(t, "Retry-After") > 60:
					t.Fatalf("Retry-After %s; want 1 to 60", a.header.Get("Retry-After"))
				}
				resets[a.int(t, "X-Ratelimit-Reset")] = true
			}
			if byStatus[200] != budget || byStatus[429] != workers*each-budget {
				t.Fatalf("statuses %v; want exactly %d 200s and %d 429s", byStatus, budget, workers*each-budget)
			}
			for reset := range resets {
				if delta && (reset < 1 || reset > 60) {
					t.Fatalf("reset %d; want seconds from now in [1, 60]", reset)
				}
				windowEnd := start.Add(time.Minute)
				if !delta && (int64(reset) < windowEnd.Unix() || int64(reset) > time.Now().Add(time.Minute).Unix()+1) {
					t.Fatalf("reset %d; want the window's end, about %d", reset, windowEnd.Unix())
				}
			}
			if !delta && len(resets) != 1 {
				t.Fatalf("epoch resets %v; want one window end for all answers", resets)
			}
			st := f.srv.Stats()
			if st.Requests != workers*each || st.ByStatus[200] != budget || st.Applied != budget || f.srv.Conversations() != budget {
				t.Fatalf("stats %+v, %d conversations; want %d requests, %d applied", st, f.srv.Conversations(), workers*each, budget)
			}
		})
	}
}

// Not parallel: three requests must fit in a 200 ms window, which a loaded machine can miss.
func TestWindowReset(t *testing.T) {
	const window = 200 * time.Millisecond
	f := setup(t, kustomertest.Config{Budget: 2, Window: window})
	first := time.Now()
	mustStatus(t, f.put(id(1), `{}`), http.StatusOK)
	mustStatus(t, f.put(id(1), `{}`), http.StatusOK)
	limited := f.put(id(1), `{}`)
	mustStatus(t, limited, http.StatusTooManyRequests)
	if e := errorsOf(t, limited)[0]; e.Code != "too_many_requests" {
		t.Fatalf("429 error %+v; want code too_many_requests", e)
	}
	if limited.header.Get("Retry-After") != "" {
		t.Fatal("Retry-After sent although Config.RetryAfter is off")
	}
	reset := time.Unix(int64(limited.int(t, "X-Ratelimit-Reset")), 0)
	if reset.Before(first.Add(window)) {
		t.Fatalf("reset %v is before the window's end %v", reset, first.Add(window))
	}

	var ok answer
	eventually(t, "the window ends", func() bool {
		ok = f.put(id(1), `{}`)
		return ok.status == http.StatusOK
	})
	if elapsed := time.Since(first); elapsed < window {
		t.Fatalf("budget came back after %v; want at least the window of %v", elapsed, window)
	}
	if rem := ok.int(t, "X-Ratelimit-Remaining"); rem != 1 {
		t.Fatalf("first request of a new window left remaining %d; want 1", rem)
	}
	if st := f.srv.Stats(); st.Applied != 3 {
		t.Fatalf("applied %d; want 3 (429s are not applied)", st.Applied)
	}
}

// Not parallel: two requests must fit in a 100 ms conversation window, which a loaded machine
// can miss.
func TestConversationLimit(t *testing.T) {
	t.Run("is answered 429 while the org budget remains, without consuming it", func(t *testing.T) {
		f := setup(t, kustomertest.Config{Budget: 10, ConversationLimit: 2, RetryAfter: true})
		mustStatus(t, f.put(id(1), `{}`), http.StatusOK)
		mustStatus(t, f.put(id(1), `{}`), http.StatusOK)
		a := f.put(id(1), `{}`)
		mustStatus(t, a, http.StatusTooManyRequests)
		if rem := a.int(t, "X-Ratelimit-Remaining"); rem != 8 {
			t.Fatalf("conversation 429 with remaining %d; want 8", rem)
		}
		if ra := a.int(t, "Retry-After"); ra < 1 || ra > 10 {
			t.Fatalf("Retry-After %d; want up to the 10 s conversation window", ra)
		}
		b := f.put(id(2), `{}`)
		mustStatus(t, b, http.StatusOK)
		if rem := b.int(t, "X-Ratelimit-Remaining"); rem != 7 {
			t.Fatalf("remaining %d after the next accepted request; want 7", rem)
		}
	})

	t.Run("lifts after the conversation window", func(t *testing.T) {
		f := setup(t, kustomertest.Config{ConversationLimit: 1, ConversationWindow: 100 * time.Millisecond})
		mustStatus(t, f.put(id(1), `{}`), http.StatusOK)
		mustStatus(t, f.put(id(1), `{}`), http.StatusTooManyRequests)
		eventually(t, "the conversation window ends", func() bool { return f.put(id(1), `{}`).status == http.StatusOK })
		if c, _ := f.srv.Conversation(id(1)); c.Rev != 2 {
			t.Fatalf("rev %d; want 2", c.Rev)
		}
	})
}

func TestScripts(t *testing.T) {
	t.Parallel()
	t.Run("per-id scripts come first, then ScriptAny, then Reject", func(t *testing.T) {
		t.Parallel()
		f := setup(t, kustomertest.Config{})
		f.srv.Reject(id(1), http.StatusNotFound)
		f.srv.ScriptAny(kustomertest.Status(503))
		f.srv.Script(id(1), kustomertest.Status(500), kustomertest.Status(502))

		var got []int
		for range 5 {
			got = append(got, f.put(id(1), `{}`).status)
		}
		if want := []int{500, 502, 503, 404, 404}; !reflect.DeepEqual(got, want) {
			t.Fatalf("statuses %v; want %v", got, want)
		}
		mustStatus(t, f.put(id(2), `{}`), http.StatusOK)
		f.srv.Reject(id(1), 0)
		mustStatus(t, f.put(id(1), `{}`), http.StatusOK)
		if c, _ := f.srv.Conversation(id(1)); c.Rev != 1 {
			t.Fatalf("rev %d; want 1: scripted and rejected answers apply nothing", c.Rev)
		}
	})

	t.Run("a status after the work applies the update all the same", func(t *testing.T) {
		t.Parallel()
		f := setup(t, kustomertest.Config{})
		f.srv.Script(id(3), kustomertest.StatusAfterWork(http.StatusGatewayTimeout))
		mustStatus(t, f.put(id(3), `{"name":"x"}`), http.StatusGatewayTimeout)
		if c, _ := f.srv.Conversation(id(3)); c.Rev != 1 || c.Attributes["name"] != "x" {
			t.Fatalf("conversation %+v; want the update applied behind the 504", c)
		}
	})

	t.Run("ScriptAny answers whichever id comes next", func(t *testing.T) {
		t.Parallel()
		f := setup(t, kustomertest.Config{})
		f.srv.ScriptAny(kustomertest.Status(500))
		mustStatus(t, f.put(id(7), `{}`), http.StatusInternalServerError)
		mustStatus(t, f.put(id(8), `{}`), http.StatusOK)
	})

	t.Run("scripted answers consume budget and keep the rate headers", func(t *testing.T) {
		t.Parallel()
		f := setup(t, kustomertest.Config{Budget: 2})
		f.srv.Script(id(1), kustomertest.Status(503))
		a := f.put(id(1), `{}`)
		mustStatus(t, a, http.StatusServiceUnavailable)
		if rem := a.int(t, "X-Ratelimit-Remaining"); rem != 1 {
			t.Fatalf("remaining %d after a scripted 503; want 1", rem)
		}
		mustStatus(t, f.put(id(1), `{}`), http.StatusOK)
		mustStatus(t, f.put(id(1), `{}`), http.StatusTooManyRequests)
	})

	t.Run("requests refused by authentication do not use up a scripted answer", func(t *testing.T) {
		t.Parallel()
		f := setup(t, kustomertest.Config{})
		f.srv.Script(id(1), kustomertest.Status(500))
		mustStatus(t, f.send(http.MethodPut, "/v1/conversations/"+id(1), `{}`, "bad"), http.StatusUnauthorized)
		mustStatus(t, f.put(id(1), `{}`), http.StatusInternalServerError)
	})

	t.Run("a 502 has an HTML body like a load balancer's", func(t *testing.T) {
		t.Parallel()
		f := setup(t, kustomertest.Config{})
		f.srv.Script(id(1), kustomertest.Status(502))
		a := f.put(id(1), `{}`)
		mustStatus(t, a, http.StatusBadGateway)
		if !strings.HasPrefix(a.header.Get("Content-Type"), "text/html") || json.Valid(a.body) {
			t.Fatalf("502 %q %s; want an HTML body", a.header.Get("Content-Type"), a.body)
		}
	})

	t.Run("Body replaces the answer body", func(t *testing.T) {
		t.Parallel()
		f := setup(t, kustomertest.Config{})
		f.srv.Script(id(1), kustomertest.Answer{Status: 422, Body: `{"errors":[{"code":"custom","message":"m","meta":{}}]}`})
		a := f.put(id(1), `{}`)
		mustStatus(t, a, 422)
		if e := errorsOf(t, a)[0]; e.Code != "custom" {
			t.Fatalf("error %+v; want the scripted body", e)
		}
	})

	t.Run("a scripted 429 carries Retry-After", func(t *testing.T) {
		t.Parallel()
		f := setup(t, kustomertest.Config{RetryAfter: true})
		f.srv.Script(id(1), kustomertest.Status(429))
		a := f.put(id(1), `{}`)
		mustStatus(t, a, http.StatusTooManyRequests)
		if a.int(t, "Retry-After") != 1 {
			t.Fatalf("Retry-After %q; want 1", a.header.Get("Retry-After"))
		}
	})
}

func TestFaultRate(t *testing.T) {
	t.Parallel()
	run := func(t *testing.T) []int {
		f := setup(t, kustomertest.Config{Budget: -1, FaultRate: 0.2, RandSeed: 42})
		statuses := make([]int, 500)
		for i := range statuses {
			statuses[i] = f.put(id(1), `{}`).status
		}
		return statuses
	}
	first := run(t)
	faults := 0
	for _, st := range first {
		switch st {
		case 200:
		case 500, 502, 503:
			faults++
		default:
			t.Fatalf("status %d; want 200 or a default fault status", st)
		}
	}
	if faults < 60 || faults > 140 {
		t.Fatalf("%d faults in 500 requests; want about 100 for FaultRate 0.2", faults)
	}
	if second := run(t); !reflect.DeepEqual(first, second) {
		t.Fatal("the same RandSeed gave a different sequence of faults")
	}
}

func TestDrop(t *testing.T) {
	t.Parallel()
	t.Run("a scripted drop closes the connection without applying", func(t *testing.T) {
		t.Parallel()
		f := setup(t, kustomertest.Config{})
		f.srv.Script(id(1), kustomertest.Drop())
		if a := f.put(id(1), `{"name":"x"}`); a.err == nil {
			t.Fatalf("dropped request got HTTP %d; want a connection error", a.status)
		}
		if _, ok := f.srv.Conversation(id(1)); ok {
			t.Fatal("a dropped update was applied")
		}
		mustStatus(t, f.put(id(1), `{"name":"x"}`), http.StatusOK)

		reqs := f.srv.RequestsFor(id(1))
		if len(reqs) != 2 || reqs[0].Status != 0 || reqs[1].Status != 200 || string(reqs[0].Body) != `{"name":"x"}` {
			t.Fatalf("log %+v; want a dropped request (status 0) with its body, then a 200", reqs)
		}
		if st := f.srv.Stats(); st.Dropped != 1 || st.Requests != 2 || st.ByStatus[200] != 1 {
			t.Fatalf("stats %+v; want 1 dropped of 2", st)
		}
	})

	t.Run("DropRate 1 drops every request", func(t *testing.T) {
		t.Parallel()
		f := setup(t, kustomertest.Config{DropRate: 1})
		for range 3 {
			if a := f.put(id(1), `{}`); a.err == nil {
				t.Fatalf("HTTP %d; want a connection error", a.status)
			}
		}
		if st := f.srv.Stats(); st.Dropped != 3 {
			t.Fatalf("dropped %d; want 3", st.Dropped)
		}
	})
}

func TestSlow(t *testing.T) {
	t.Parallel()
	t.Run("a slow answer outlasts the client's timeout, but the update is applied", func(t *testing.T) {
		t.Parallel()
		f := setup(t, kustomertest.Config{})
		f.client.Timeout = 100 * time.Millisecond
		f.srv.Script(id(1), kustomertest.Slow(time.Minute))
		start := time.Now()
		if a := f.put(id(1), `{"name":"x"}`); a.err == nil {
			t.Fatalf("HTTP %d; want a client timeout", a.status)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("the client waited %v", d)
		}
		eventually(t, "the fake notices the client left", func() bool { return f.srv.Stats().Abandoned == 1 })
		reqs := f.srv.RequestsFor(id(1))
		if len(reqs) != 1 || !reqs[0].Abandoned || reqs[0].Status != 200 {
			t.Fatalf("log %+v; want one abandoned 200", reqs)
		}
		if c, _ := f.srv.Conversation(id(1)); c.Rev != 1 {
			t.Fatalf("rev %d; want 1: a slow answer applies the update", c.Rev)
		}
	})

	t.Run("SlowRate with the default 35 s delay does not hold up Close", func(t *testing.T) {
		t.Parallel()
		srv, err := kustomertest.Start("127.0.0.1:0", kustomertest.Config{SlowRate: 1})
		if err != nil {
			t.Fatal(err)
		}
		tr := &http.Transport{}
		defer tr.CloseIdleConnections()
		client := &http.Client{Transport: tr}
		done := make(chan error, 1)
		go func() {
			req, _ := http.NewRequest(http.MethodPut, srv.URL+"/v1/conversations/"+id(1), strings.NewReader(`{}`))
			req.Header.Set("Authorization", "Bearer test-key")
			req.Header.Set("Content-Type", "application/json")
			resp, err := client.Do(req)
			if err == nil {
				resp.Body.Close()
			}
			done <- err
		}()
		eventually(t, "the slow request is applied", func() bool { _, ok := srv.Conversation(id(1)); return ok })
		start := time.Now()
		srv.Close()
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("Close took %v", d)
		}
		if err := <-done; err == nil {
			t.Fatal("the held-back request got an answer after Close")
		}
	})
}

func TestLatency(t *testing.T) {
	t.Parallel()
	f := setup(t, kustomertest.Config{Latency: 50 * time.Millisecond, LatencyJitter: 10 * time.Millisecond})
	start := time.Now()
	mustStatus(t, f.put(id(1), `{}`), http.StatusOK)
	mustStatus(t, f.send(http.MethodPut, "/v1/conversations/"+id(1), `{}`, "bad"), http.StatusUnauthorized)
	if d := time.Since(start); d < 100*time.Millisecond {
		t.Fatalf("two answers took %v; want at least 2 x 50 ms", d)
	}
}

func TestRequireSeeded(t *testing.T) {
	t.Parallel()
	f := setup(t, kustomertest.Config{RequireSeeded: true})
	f.srv.Seed(id(1), nil)
	a := f.put(id(2), `{}`)
	mustStatus(t, a, http.StatusNotFound)
	if e := errorsOf(t, a)[0]; e.Status != "404" || e.Code != "not_found" {
		t.Fatalf("error %+v; want a JSON:API not_found", e)
	}
	mustStatus(t, f.put(id(1), `{}`), http.StatusOK)
	if _, ok := f.srv.Conversation(id(2)); ok || f.srv.Conversations() != 1 {
		t.Fatalf("the unseeded conversation was created")
	}
}

func TestUnmatchedRoutes(t *testing.T) {
	t.Parallel()
	f := setup(t, kustomertest.Config{Budget: 3})
	for _, r := range []struct{ method, path string }{
		{http.MethodDelete, "/v1/conversations/" + id(1)}, // GET is a read
		{http.MethodPost, "/v1/conversations/" + id(1)},
		{http.MethodPut, "/v1/conversations/"},
		{http.MethodPost, "/v1/conversations/bulk"}, // the bulk submit is a PUT
		{http.MethodPut, "/v1/customers/" + id(1)},
		{http.MethodGet, "/v1/bulk/" + id(1) + "/items"},
		{http.MethodPut, "/v1/bulk/" + id(1)},
		{http.MethodPut, "/v1/conversations/" + id(1) + "/notes"},
	} {
		a := f.send(r.method, r.path, `{}`, "test-key")
		mustStatus(t, a, http.StatusNotFound)
		if a.int(t, "X-Ratelimit-Remaining") != 3 {
			t.Fatalf("%s %s consumed budget", r.method, r.path)
		}
	}
	if st := f.srv.Stats(); st.Unmatched != 8 || st.Requests != 8 || st.ByStatus[404] != 8 || st.Units != 0 {
		t.Fatalf("stats %+v; want 8 unmatched, no units spent", st)
	}
}

func TestUnlimitedBudgetSendsNoRateHeaders(t *testing.T) {
	t.Parallel()
	f := setup(t, kustomertest.Config{Budget: -1})
	for range 3 {
		a := f.put(id(1), `{}`)
		mustStatus(t, a, http.StatusOK)
		for _, h := range []string{"X-Ratelimit-Limit", "X-Ratelimit-Remaining", "X-Ratelimit-Reset"} {
			if v := a.header.Get(h); v != "" {
				t.Fatalf("%s: %s sent with an unlimited budget", h, v)
			}
		}
	}
}

func TestLog(t *testing.T) {
	t.Parallel()
	t.Run("records requests in arrival order without credentials", func(t *testing.T) {
		t.Parallel()
		f := setup(t, kustomertest.Config{Budget: 1})
		f.put(id(1), `{"name":"a"}`)
		f.put(id(2), `{"name":"b"}`)
		f.send(http.MethodPut, "/v1/conversations/"+id(1), `{}`, "nope")
		reqs := f.srv.Requests()
		if len(reqs) != 3 {
			t.Fatalf("%d requests logged; want 3", len(reqs))
		}
		for i, want := range []struct {
			id     string
			status int
		}{{id(1), 200}, {id(2), 429}, {id(1), 401}} {
			r := reqs[i]
			if r.Seq != i+1 || r.ID != want.id || r.Status != want.status || r.Method != "PUT" || r.Time.IsZero() {
				t.Fatalf("request %d = %+v; want seq %d, id %s, status %d", i, r, i+1, want.id, want.status)
			}
		}
		raw, _ := json.Marshal(reqs)
		if strings.Contains(string(raw), "test-key") || strings.Contains(string(raw), "nope") {
			t.Fatal("the log holds an API key")
		}
		reqs[0].Body[0] = 'X'
		if f.srv.Requests()[0].Body[0] != '{' {
			t.Fatal("Requests returned the log's own memory")
		}
	})

	t.Run("DiscardBodies keeps everything but bodies", func(t *testing.T) {
		t.Parallel()
		f := setup(t, kustomertest.Config{DiscardBodies: true})
		f.put(id(1), `{"name":"a"}`)
		if reqs := f.srv.Requests(); len(reqs) != 1 || reqs[0].Body != nil || reqs[0].Status != 200 {
			t.Fatalf("log %+v; want one request without body", reqs)
		}
	})

	t.Run("DisableLog keeps only the counters", func(t *testing.T) {
		t.Parallel()
		f := setup(t, kustomertest.Config{DisableLog: true})
		f.put(id(1), `{"name":"a"}`)
		f.put(id(1), `{"name":"b"}`)
		if reqs := f.srv.Requests(); len(reqs) != 0 {
			t.Fatalf("log %+v; want none", reqs)
		}
		if st := f.srv.Stats(); st.Requests != 2 || st.Applied != 2 {
			t.Fatalf("stats %+v; want 2 requests", st)
		}
	})
}

func TestMockEndpoints(t *testing.T) {
	t.Parallel()
	f := setup(t, kustomertest.Config{})
	f.put(id(1), `{"name":"a"}`)
	f.put(id(2), `not json`)
	get := func(path string) answer {
		t.Helper()
		a := f.send(http.MethodGet, path, "", "")
		if a.err != nil {
			t.Fatal(a.err)
		}
		return a
	}

	var st kustomertest.Stats
	a := get("/_mock/stats")
	if err := json.Unmarshal(a.body, &st); err != nil || st.Requests != 2 || st.ByStatus[200] != 1 || st.ByStatus[400] != 1 {
		t.Fatalf("/_mock/stats = %s (%v); want 2 requests: one 200, one 400", a.body, err)
	}
	if !strings.Contains(string(a.body), `"byStatus":{"200":1,"400":1}`) {
		t.Fatalf("/_mock/stats = %s; want byStatus keyed by status strings", a.body)
	}

	var reqs []kustomertest.Request
	a = get("/_mock/requests")
	if err := json.Unmarshal(a.body, &reqs); err != nil || !reflect.DeepEqual(stripTime(t, reqs, f.srv.Requests()), stripTime(t, f.srv.Requests(), nil)) {
		t.Fatalf("/_mock/requests = %s (%v); want the log", a.body, err)
	}
	if !strings.Contains(string(a.body), `"body":{"name":"a"}`) || !strings.Contains(string(a.body), `"body":"not json"`) {
		t.Fatalf("/_mock/requests = %s; want JSON bodies embedded and others as strings", a.body)
	}
	a = get("/_mock/requests?id=" + id(2))
	if err := json.Unmarshal(a.body, &reqs); err != nil || len(reqs) != 1 || reqs[0].ID != id(2) || string(reqs[0].Body) != "not json" {
		t.Fatalf("/_mock/requests?id= = %s (%v); want the one request for %s", a.body, err, id(2))
	}

	var c kustomertest.Conversation
	a = get("/_mock/conversations/" + id(1))
	if err := json.Unmarshal(a.body, &c); err != nil || a.status != 200 || c.Rev != 1 || c.Attributes["name"] != "a" {
		t.Fatalf("/_mock/conversations = %d %s (%v); want rev 1, name a", a.status, a.body, err)
	}
	if a = get("/_mock/conversations/" + id(3)); a.status != http.StatusNotFound {
		t.Fatalf("unknown conversation: HTTP %d; want 404", a.status)
	}
	if after := f.srv.Stats(); after.Requests != 2 || after.Unmatched != 0 {
		t.Fatalf("stats %+v after /_mock requests; want them uncounted", after)
	}
}

// stripTime zeroes the times, which JSON carries without monotonic reading or location,
// after checking they are the same instants.
func stripTime(t *testing.T, reqs, want []kustomertest.Request) []kustomertest.Request {
	t.Helper()
	out := make([]kustomertest.Request, len(reqs))
	for i, r := range reqs {
		if i < len(want) && !r.Time.Equal(want[i].Time) {
			t.Fatalf("request %d: time %v; want %v", i, r.Time, want[i].Time)
		}
		r.Time = time.Time{}
		out[i] = r
	}
	return out
}

func TestConfig(t *testing.T) {
	t.Parallel()
	bad := []kustomertest.Config{
		{Window: -time.Second},
		{FaultRate: 1.5},
		{FaultRate: 0.6, DropRate: 0.6},
		{FaultStatuses: []int{200}},
		{ConversationLimit: -1},
	}
	for _, cfg := range bad {
		if _, err := kustomertest.Start("127.0.0.1:0", cfg); err == nil {
			t.Fatalf("Start accepted %+v", cfg)
		}
	}
	cfg := kustomertest.Config{APIKey: "secret-key"}
	var b strings.Builder
	b.WriteString(cfg.LogValue().String())
	if strings.Contains(b.String(), "secret-key") {
		t.Fatalf("LogValue shows the API key: %s", b.String())
	}
}

func TestStart(t *testing.T) {
	t.Parallel()
	srv, err := kustomertest.Start(":0", kustomertest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if !strings.HasPrefix(srv.URL, "http://127.0.0.1:") {
		t.Fatalf("URL %q; want a loopback URL", srv.URL)
	}
	f := &fixture{t: t, srv: srv, client: &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}}
	mustStatus(t, f.put(id(1), `{}`), http.StatusOK)
	srv.Close()
	srv.Close() // a second Close does nothing
}
