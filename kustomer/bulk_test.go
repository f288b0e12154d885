package kustomer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
)

// convID returns the n-th test conversation id.
func convID(n int) string { return fmt.Sprintf("%024x", n) }

// item is a bulk item for conversation n with ref "r<n>" and body.
func item(n int, body string) BulkItem {
	return BulkItem{Ref: fmt.Sprintf("r%d", n), Update: Update{ID: convID(n), Body: json.RawMessage(body)}}
}

const jobJSON = `{"data":{"type":"bulk","id":"65f0aa00bb11cc22dd33ee44","attributes":{"status":"queued","ids":["000000000000000000000001"],"completed":false,"batches":{"complete":0,"total":1}}}}`

func TestSubmitBulkSendsItemsFlatBesideTheID(t *testing.T) {
	rl := map[string]string{"X-RateLimit-Limit": "1000", "X-RateLimit-Remaining": "950"}
	f := setup(t, answer(http.StatusCreated, rl, jobJSON))
	items := []BulkItem{
		item(1, `{"priority": 3, "tags": ["vip"]}`),
		item(2, `{"customer":"`+convID(99)+`"}`),
		{Ref: `quote"and\slash`, Update: Update{ID: convID(3), Body: json.RawMessage(" \n{\"status\":\"done\"}\n")}},
	}
	job, err := f.client.SubmitBulk(t.Context(), items)
	if err != nil {
		t.Fatalf("SubmitBulk: %v", err)
	}
	if job.ID != "65f0aa00bb11cc22dd33ee44" || job.State != "queued" || job.Completed || job.Status != 201 ||
		job.BatchesTotal != 1 || job.BatchesComplete != 0 || !reflect.DeepEqual(job.ConversationIDs, []string{convID(1)}) {
		t.Errorf("job = %+v", job)
	}
	if job.RateLimit.Limit != 1000 || job.RateLimit.Remaining != 950 {
		t.Errorf("rate limit = %+v, want limit 1000 remaining 950", job.RateLimit)
	}
	got := f.requests()
	if len(got) != 1 {
		t.Fatalf("server got %d requests, want 1", len(got))
	}
	r := got[0]
	if r.Method != http.MethodPut || r.Path != "/v1/conversations/bulk" || r.RawQuery != "" {
		t.Errorf("request = %s %s?%s, want PUT /v1/conversations/bulk", r.Method, r.Path, r.RawQuery)
	}
	if r.Header.Get("Authorization") != "Bearer "+testKey || r.Header.Get("Content-Type") != "application/json" {
		t.Errorf("headers = %v, want the bearer key and JSON content", r.Header)
	}
	var sent []map[string]any
	if err := json.Unmarshal(r.Body, &sent); err != nil {
		t.Fatalf("body %s is not a JSON array: %v", r.Body, err)
	}
	want := []map[string]any{
		{"id": convID(1), "_clientRef": "r1", "priority": 3.0, "tags": []any{"vip"}},
		{"id": convID(2), "_clientRef": "r2", "customer": convID(99)},
		{"id": convID(3), "_clientRef": `quote"and\slash`, "status": "done"},
	}
	if !reflect.DeepEqual(sent, want) {
		t.Errorf("items sent = %v\nwant %v", sent, want)
	}

	t.Run("items without refs carry no _clientRef", func(t *testing.T) {
		f := setup(t, answer(http.StatusCreated, nil, jobJSON))
		if _, err := f.client.SubmitBulk(t.Context(), []BulkItem{{Update: Update{ID: convID(1), Body: []byte(`{"name":"a"}`)}}}); err != nil {
			t.Fatal(err)
		}
		if body := string(f.requests()[0].Body); body != `[{"id":"`+convID(1)+`","name":"a"}]` {
			t.Errorf("body = %s", body)
		}
	})
}

func TestSubmitBulkRefusesBadItemsWithoutARequest(t *testing.T) {
	many := make([]BulkItem, MaxBulkItems+1)
	for i := range many {
		many[i] = item(i+1, `{"priority":1}`)
	}
	tests := []struct {
		name  string
		items []BulkItem
		field string
		want  string
	}{
		{"no items", nil, "items", "0 items"},
		{"more than 100 items", many, "items", "101 items"},
		{"a replace", []BulkItem{{Ref: "a", Update: Update{ID: convID(1), Replace: true, Body: []byte(`{"name":"x"}`)}}}, "items[0].replace", "single PUT"},
		{"mixed refs", []BulkItem{item(1, `{"name":"x"}`), {Update: Update{ID: convID(2), Body: []byte(`{"name":"x"}`)}}}, "items[1]._clientRef", "every item"},
		{"duplicate refs", []BulkItem{item(1, `{"name":"x"}`), {Ref: "r1", Update: Update{ID: convID(2), Body: []byte(`{"name":"x"}`)}}}, "items[1]._clientRef", "unique"},
		{"a ref over 255 bytes", []BulkItem{{Ref: strings.Repeat("x", 256), Update: Update{ID: convID(1), Body: []byte(`{"name":"x"}`)}}}, "items[0]._clientRef", "256 bytes"},
		{"one conversation twice", []BulkItem{item(1, `{"name":"x"}`), {Ref: "b", Update: Update{ID: strings.ToUpper(convID(1)), Body: []byte(`{"name":"y"}`)}}}, "items[1].id", "also updated by items[0]"},
		{"an invalid id", []BulkItem{{Ref: "a", Update: Update{ID: "../x", Body: []byte(`{"name":"x"}`)}}}, "items[0].id", "not a 24-character hex id"},
		{"an invalid attribute", []BulkItem{item(1, `{"name":"x"}`), item(2, `{"priority":7}`)}, "items[1].body.priority", "1 to 5"},
		{"an empty body", []BulkItem{item(1, `{}`)}, "items[0].body", "nothing to update"},
		{"a body that is not an object", []BulkItem{item(1, `[1]`)}, "items[0].body", "not"},
		{"an id inside the body", []BulkItem{item(1, `{"id":"x","name":"y"}`)}, "items[0].body.id", "unknown field"},
	}
	f := setup(t, answer(http.StatusCreated, nil, jobJSON))
	for _, tt := range tests {
		t.Run(tt.name+" is refused", func(t *testing.T) {
			job, err := f.client.SubmitBulk(t.Context(), tt.items)
			verr, ok := errors.AsType[*ValidationError](err)
			if !ok || job != nil || !errors.Is(err, ErrInvalid) {
				t.Fatalf("SubmitBulk = %v, %v; want a *ValidationError", job, err)
			}
			found := false
			for _, p := range verr.Problems {
				found = found || p.Field == tt.field && strings.Contains(p.Problem, tt.want)
			}
			if !found {
				t.Errorf("problems = %v, want %s: ...%s...", verr.Problems, tt.field, tt.want)
			}
		})
	}
	if n := len(f.requests()); n != 0 {
		t.Errorf("server got %d requests for refused submits, want 0", n)
	}
}

func TestBulkAnswersAreReadInBothShapes(t *testing.T) {
	tests := []struct {
		name string
		body string
		want BulkJob
	}{
		{
			name: "JSON:API envelope",
			body: `{"data":{"type":"bulk","id":"job-1","attributes":{"status":"Running","completed":false,"batches":{"complete":1,"total":4},"ids":["a","b"]}}}`,
			want: BulkJob{ID: "job-1", State: "running", BatchesComplete: 1, BatchesTotal: 4, ConversationIDs: []string{"a", "b"}},
		},
		{
			name: "fields on the object",
			body: `{"data":{"type":"bulk","id":"job-1","status":"complete","completed":true,"batches":{"complete":"2","total":2}}}`,
			want: BulkJob{ID: "job-1", State: "complete", Completed: true, BatchesComplete: 2, BatchesTotal: 2},
		},
		{
			name: "no envelope at all",
			body: `{"id":"job-1","status":"complete"}`,
			want: BulkJob{ID: "job-1", State: "complete", Completed: true, BatchesComplete: -1, BatchesTotal: -1},
		},
		{
			name: "completed as a string and unknown fields",
			body: `{"data":{"id":"job-1","attributes":{"completed":"true","status":"weird","extra":{"x":1}}}}`,
			want: BulkJob{ID: "job-1", State: "weird", Completed: true, BatchesComplete: -1, BatchesTotal: -1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := setup(t, answer(http.StatusOK, map[string]string{"X-RateLimit-Remaining": "7"}, tt.body))
			job, err := f.client.ReadBulkJob(t.Context(), "job-1")
			if err != nil {
				t.Fatalf("ReadBulkJob: %v", err)
			}
			if job.RateLimit.Remaining != 7 || job.Status != 200 {
				t.Errorf("answer status %d rate limit %+v, want 200 and remaining 7", job.Status, job.RateLimit)
			}
			job.RateLimit, job.Status = RateLimit{}, 0
			if !reflect.DeepEqual(*job, tt.want) {
				t.Errorf("job = %+v\nwant  %+v", *job, tt.want)
			}
			if r := f.requests()[0]; r.Method != http.MethodGet || r.Path != "/v1/bulk/job-1" || len(r.Body) != 0 || r.Header.Get("Content-Type") != "" {
				t.Errorf("request = %s %s with body %q and Content-Type %q, want a bare GET /v1/bulk/job-1", r.Method, r.Path, r.Body, r.Header.Get("Content-Type"))
			}
		})
	}
}

func TestBulkMalformedAnswersAreTransientAndSaySo(t *testing.T) {
	type op func(*Client) error
	submit := func(c *Client) error {
		_, err := c.SubmitBulk(t.Context(), []BulkItem{item(1, `{"name":"a"}`)})
		return err
	}
	readJob := func(c *Client) error { _, err := c.ReadBulkJob(t.Context(), "job-1"); return err }
	readBatches := func(c *Client) error { _, err := c.ReadBulkBatches(t.Context(), "job-1"); return err }
	tests := []struct {
		name   string
		call   op
		wantOp Op
		status int
		body   string
	}{
		{"submit answered with HTML", submit, OpSubmitBulk, 201, `<html>created</html>`},
		{"submit answered without a job id", submit, OpSubmitBulk, 201, `{"data":{"type":"bulk","attributes":{"status":"queued"}}}`},
		{"submit answered with an empty body", submit, OpSubmitBulk, 201, ``},
		{"submit answered with a job id that is a path", submit, OpSubmitBulk, 201, `{"data":{"id":"../../v1/users"}}`},
		{"submit answered with a job id that is an object", submit, OpSubmitBulk, 200, `{"data":{"id":{"$oid":"x"}}}`},
		{"job read answered about another job", readJob, OpReadBulkJob, 200, `{"data":{"id":"job-2","attributes":{"status":"complete"}}}`},
		{"job read answered with an array", readJob, OpReadBulkJob, 200, `[]`},
		{"batches answered with an object without a list", readBatches, OpReadBulkBatches, 200, `{"data":{"id":"job-1"}}`},
		{"batches answered with a list of numbers", readBatches, OpReadBulkBatches, 200, `{"data":[1,2]}`},
		{"batches answered with broken JSON", readBatches, OpReadBulkBatches, 200, `{"data":[{"id":"b1",`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := setup(t, answer(tt.status, map[string]string{"X-RateLimit-Remaining": "3", "Retry-After": "2"}, tt.body))
			err := tt.call(f.client)
			apiErr := asAPIError(t, err)
			if !errors.Is(err, ErrMalformedAnswer) || !errors.Is(err, ErrTransient) || errors.Is(err, ErrPermanent) {
				t.Errorf("error %v matches the wrong sentinels; want ErrMalformedAnswer and ErrTransient", err)
			}
			if apiErr.Op != tt.wantOp || apiErr.Status != tt.status || apiErr.RateLimit.Remaining != 3 || apiErr.Wait != 2*time.Second {
				t.Errorf("error = %#v, want op %q status %d with the rate limit and Retry-After", apiErr, tt.wantOp, tt.status)
			}
			if !strings.HasPrefix(err.Error(), "kustomer: "+string(tt.wantOp)+": HTTP ") {
				t.Errorf("Error() = %q, want it to name the call", err)
			}
		})
	}

	t.Run("an answer longer than the limit", func(t *testing.T) {
		big := `{"data":{"id":"job-1","attributes":{"pad":"` + strings.Repeat("x", maxBulkAnswer) + `"}}}`
		f := setup(t, answer(200, nil, big))
		_, err := f.client.ReadBulkJob(t.Context(), "job-1")
		if !errors.Is(err, ErrMalformedAnswer) || !strings.Contains(err.Error(), "longer than") {
			t.Errorf("error = %v, want a malformed answer that is too long", err)
		}
	})
	t.Run("the key echoed in a malformed answer is scrubbed", func(t *testing.T) {
		f := setup(t, func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(201)
			_, _ = fmt.Fprintf(w, `{"echo":%q}`, r.Header.Get("Authorization"))
		})
		err := submit(f.client)
		apiErr := asAPIError(t, err)
		for _, s := range []string{err.Error(), apiErr.Body, apiErr.Reason, fmt.Sprintf("%#v", apiErr)} {
			if strings.Contains(s, testKey) {
				t.Errorf("the API key leaked into %q", s)
			}
		}
	})
}

func TestBulkErrorsAreClassifiedLikeUpdates(t *testing.T) {
	calls := []struct {
		op   Op
		call func(*Client) error
	}{
		{OpSubmitBulk, func(c *Client) error {
			_, err := c.SubmitBulk(t.Context(), []BulkItem{item(1, `{"name":"a"}`)})
			return err
		}},
		{OpReadBulkJob, func(c *Client) error { _, err := c.ReadBulkJob(t.Context(), "job-1"); return err }},
		{OpReadBulkBatches, func(c *Client) error { _, err := c.ReadBulkBatches(t.Context(), "job-1"); return err }},
	}
	statuses := []struct {
		status    int
		headers   map[string]string
		wantClass Class
		wantScope Scope
		sentinel  error
	}{
		{400, nil, ClassPermanent, ScopeNone, ErrPermanent},
		{404, nil, ClassPermanent, ScopeNone, ErrPermanent},
		{413, nil, ClassPermanent, ScopeNone, ErrPermanent},
		{302, map[string]string{"Location": "/elsewhere"}, ClassPermanent, ScopeNone, ErrPermanent},
		{401, nil, ClassAuth, ScopeNone, ErrAuth},
		{403, nil, ClassAuth, ScopeNone, ErrAuth},
		{429, map[string]string{"X-RateLimit-Remaining": "0", "Retry-After": "4"}, ClassThrottled, ScopeOrg, ErrThrottled},
		{429, map[string]string{"X-RateLimit-Remaining": "12"}, ClassThrottled, ScopeConversation, ErrThrottled},
		{500, nil, ClassTransient, ScopeNone, ErrTransient},
		{503, map[string]string{"Retry-After": "9"}, ClassTransient, ScopeNone, ErrTransient},
	}
	for _, c := range calls {
		for _, st := range statuses {
			t.Run(fmt.Sprintf("%s answered %d %v is %s", c.op, st.status, st.headers, st.wantClass), func(t *testing.T) {
				headers := map[string]string{"X-RateLimit-Limit": "1000"}
				for k, v := range st.headers {
					headers[k] = v
				}
				f := setup(t, answer(st.status, headers, `{"errors":[{"code":"nope","message":"refused"}]}`))
				err := c.call(f.client)
				apiErr := asAPIError(t, err)
				if apiErr.Op != c.op || apiErr.Status != st.status || apiErr.Class != st.wantClass || apiErr.Scope != st.wantScope {
					t.Errorf("got op %q status %d class %s scope %s", apiErr.Op, apiErr.Status, apiErr.Class, apiErr.Scope)
				}
				if apiErr.RateLimit.Limit != 1000 {
					t.Errorf("rate limit = %+v, want it read from the error answer", apiErr.RateLimit)
				}
				for _, s := range []error{ErrPermanent, ErrAuth, ErrThrottled, ErrTransient} {
					if errors.Is(err, s) != (s == st.sentinel) {
						t.Errorf("errors.Is(err, %v) = %t", s, s != st.sentinel)
					}
				}
				denied := st.status == 403 && c.op != OpSubmitBulk
				if errors.Is(err, ErrBulkReadDenied) != denied || apiErr.BulkReadDenied() != denied {
					t.Errorf("ErrBulkReadDenied matches: %t, want %t", errors.Is(err, ErrBulkReadDenied), denied)
				}
				if errors.Is(err, ErrMalformedAnswer) {
					t.Error("an error status matches ErrMalformedAnswer")
				}
				if st.status != 302 && !strings.Contains(err.Error(), "nope: refused") {
					t.Errorf("Error() = %q, want Kustomer's reason", err)
				}
				if n := len(f.requests()); n != 1 {
					t.Errorf("server got %d requests, want 1", n)
				}
			})
		}
	}

	t.Run("a timeout is transient and names the call", func(t *testing.T) {
		f := setup(t, stall(t, nil), func(o *Options) { o.Timeout = 30 * time.Millisecond })
		_, err := f.client.ReadBulkBatches(t.Context(), "job-1")
		apiErr := asAPIError(t, err)
		if apiErr.Class != ClassTransient || apiErr.Status != 0 || apiErr.Op != OpReadBulkBatches || !strings.Contains(err.Error(), "timed out") {
			t.Errorf("got %#v, want a transient timeout of %s", apiErr, OpReadBulkBatches)
		}
	})
	t.Run("the caller's cancellation is not an APIError", func(t *testing.T) {
		f := setup(t, answer(201, nil, jobJSON))
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		_, err := f.client.SubmitBulk(ctx, []BulkItem{item(1, `{"name":"a"}`)})
		if _, ok := errors.AsType[*APIError](err); ok || !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "submit bulk update of 1 items") {
			t.Errorf("error = %v, want the context's error naming the call", err)
		}
	})
	t.Run("unusable job ids are refused without a request", func(t *testing.T) {
		f := setup(t, answer(200, nil, `{}`))
		for _, id := range []string{"", "..", "a/b", "a b", "a?b", strings.Repeat("a", 129)} {
			if _, err := f.client.ReadBulkJob(t.Context(), id); !errors.Is(err, ErrInvalid) {
				t.Errorf("ReadBulkJob(%q) = %v, want ErrInvalid", id, err)
			}
			if _, err := f.client.ReadBulkBatches(t.Context(), id); !errors.Is(err, ErrInvalid) {
				t.Errorf("ReadBulkBatches(%q) = %v, want ErrInvalid", id, err)
			}
		}
		if n := len(f.requests()); n != 0 {
			t.Errorf("server got %d requests, want 0", n)
		}
	})
}

func TestBulkBatchesSettleEveryItem(t *testing.T) {
	items := []BulkItem{item(1, `{"name":"a"}`), item(2, `{"name":"b"}`), item(3, `{"name":"c"}`)}
	noRefs := make([]BulkItem, len(items))
	for i, it := range items {
		noRefs[i] = BulkItem{Update: it.Update}
	}
	ok := ItemOutcome{State: ItemSucceeded}
	pending := ItemOutcome{State: ItemPending}
	failed := func(reason string) ItemOutcome { return ItemOutcome{State: ItemFailed, Reason: reason} }
	tests := []struct {
		name     string
		body     string
		items    []BulkItem
		complete bool
		want     []ItemOutcome
	}{
		{
			name:  "no batches yet: everything pending",
			body:  `{"data":[]}`,
			items: items,
			want:  []ItemOutcome{pending, pending, pending},
		},
		{
			name: "results by _clientRef in the JSON:API envelope, one batch still running",
			body: `{"data":[
				{"type":"batch","id":"b1","attributes":{"status":"complete","successCount":1,"failureCount":1,"results":[
					{"_clientRef":"r1","objectId":"` + convID(1) + `","status":"updated"},
					{"_clientRef":"r2","objectId":"` + convID(2) + `","status":"error","error":"priority: 7 is not valid"}]}},
				{"type":"batch","id":"b2","attributes":{"status":"scheduled","objectIds":[]}}]}`,
			items: items,
			want:  []ItemOutcome{ok, failed("priority: 7 is not valid"), pending},
		},
		{
			name: "results with fields on the batch objects, every batch complete",
			body: `{"data":[
				{"id":"b1","status":"complete","successCount":2,"failureCount":1,"results":[
					{"_clientRef":"r3","status":"updated"},
					{"_clientRef":"r1","status":"updated"},
					{"_clientRef":"r2","status":"error","error":{"code":"not_found","message":"conversation not found"}}]}]}`,
			items:    items,
			complete: true,
			want:     []ItemOutcome{ok, failed("not_found: conversation not found"), ok},
		},
		{
			name:     "a bare array, results matched by objectId when the ref is missing",
			body:     `[{"id":"b1","status":"complete","results":[{"objectId":"` + strings.ToUpper(convID(1)) + `","status":"updated"},{"objectId":"` + convID(2) + `","status":"failed"}]}]`,
			items:    items,
			complete: true,
			want:     []ItemOutcome{ok, failed("Kustomer reported the item as failed"), failed("the completed job did not report the item as updated")},
		},
		{
			name:  "a result of unknown status waits",
			body:  `{"data":[{"id":"b1","attributes":{"status":"scheduled","results":[{"_clientRef":"r1","status":"pending"}]}}]}`,
			items: items[:1],
			want:  []ItemOutcome{pending},
		},
		{
			name: "without results, objectIds of a done batch are the successes",
			body: `{"data":[{"id":"b1","attributes":{"status":"complete","objectIds":["` + convID(1) + `","` + convID(3) + `"],
				"successCount":2,"failureCount":1,"errors":["one item failed"]}}]}`,
			items:    noRefs,
			complete: true,
			want:     []ItemOutcome{ok, failed("the completed job did not report the item as updated: one item failed"), ok},
		},
		{
			name: "without results, an error naming the conversation fails it",
			body: `{"data":[{"id":"b1","attributes":{"completedAt":"2026-01-02T03:04:05Z","objectIds":["` + convID(1) + `"],
				"errors":[{"objectId":"` + convID(2) + `","message":"locked"}]}}]}`,
			items:    noRefs[:2],
			complete: true,
			want:     []ItemOutcome{ok, failed("locked")},
		},
		{
			name: "objectIds listing every item while failures go unnamed: all counted as failed",
			body: `{"data":[{"id":"b1","attributes":{"status":"complete","objectIds":["` + convID(1) + `","` + convID(2) + `","` + convID(3) + `"],
				"successCount":2,"failureCount":1}}]}`,
			items:    noRefs,
			complete: true,
			want: []ItemOutcome{
				failed("batch b1 reported 1 failures without naming them"),
				failed("batch b1 reported 1 failures without naming them"),
				failed("batch b1 reported 1 failures without naming them"),
			},
		},
		{
			name: "counts short of the items sent: more batches may come",
			body: `{"data":[{"id":"b1","attributes":{"status":"complete","successCount":1,"failureCount":0,
				"results":[{"_clientRef":"r1","status":"updated"}]}}]}`,
			items:    items,
			complete: true,
			want:     []ItemOutcome{ok, pending, pending},
		},
		{
			name:  "a batch list under a batches key",
			body:  `{"batches":[{"id":"b1","status":"queued"}]}`,
			items: items[:1],
			want:  []ItemOutcome{pending},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := setup(t, answer(http.StatusOK, map[string]string{"X-RateLimit-Remaining": "5"}, tt.body))
			b, err := f.client.ReadBulkBatches(t.Context(), "job-1")
			if err != nil {
				t.Fatalf("ReadBulkBatches: %v", err)
			}
			if b.JobID != "job-1" || b.Status != 200 || b.RateLimit.Remaining != 5 {
				t.Errorf("answer = %+v, want job-1, status 200, remaining 5", b)
			}
			if r := f.requests()[0]; r.Method != http.MethodGet || r.Path != "/v1/bulk/job-1/batches" {
				t.Errorf("request = %s %s, want GET /v1/bulk/job-1/batches", r.Method, r.Path)
			}
			if b.Complete() != tt.complete {
				t.Errorf("Complete() = %t, want %t", b.Complete(), tt.complete)
			}
			if got := b.Outcomes(tt.items); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Outcomes =\n%v\nwant\n%v", got, tt.want)
			}
		})
	}
}

// Results are read strictly: an error means not applied whatever the status says, and
// batches without counts prove a job complete only with the job's own totals.
func TestBulkBatchesReadStrictly(t *testing.T) {
	items := []BulkItem{item(1, `{"name":"a"}`), item(2, `{"name":"b"}`)}
	t.Run("a result with an error is a failure whatever its status", func(t *testing.T) {
		for _, status := range []string{"complete", "done", "ok", "modified", "updated"} {
			b := &BulkBatches{Batches: []BulkBatch{{State: "complete", SuccessCount: -1, FailureCount: -1,
				Results: []BulkResult{{Ref: "r1", Status: status, Error: "locked"}, {Ref: "r2", Status: status}}}}}
			got := b.Outcomes(items)
			if got[0] != (ItemOutcome{State: ItemFailed, Reason: "locked"}) || got[1].State != ItemSucceeded {
				t.Errorf("status %q: Outcomes = %v; want the item with an error failed, the other applied", status, got)
			}
		}
	})
	t.Run("a result a batch error names is a failure", func(t *testing.T) {
		b := &BulkBatches{Batches: []BulkBatch{{State: "complete", SuccessCount: -1, FailureCount: -1,
			Results: []BulkResult{{Ref: "r1", Status: "updated"}, {Ref: "r2", Status: "updated"}},
			Errors:  []BulkError{{ObjectID: convID(2), Reason: "locked"}}}}}
		if got := b.Outcomes(items); got[0].State != ItemSucceeded || got[1] != (ItemOutcome{State: ItemFailed, Reason: "locked"}) {
			t.Errorf("Outcomes = %v; want the named item failed", got)
		}
	})
	// One batch listed and done, without counts, reporting the first item only.
	partial := func(job *BulkJob) *BulkBatches {
		return &BulkBatches{Job: job, Batches: []BulkBatch{{State: "complete", SuccessCount: -1, FailureCount: -1,
			Results: []BulkResult{{Ref: "r1", Status: "updated"}}}}}
	}
	if !partial(nil).NeedsJob(items) {
		t.Error("NeedsJob = false for done batches without counts missing an item; want true")
	}
	counted := &BulkBatches{Batches: []BulkBatch{{State: "complete", SuccessCount: 1, FailureCount: 0,
		Results: []BulkResult{{Ref: "r1", Status: "updated"}}}}}
	if counted.NeedsJob(items) || partial(nil).NeedsJob(items[:1]) {
		t.Error("NeedsJob = true with counts, or with every item reported; want false")
	}
	for _, tt := range []struct {
		name string
		job  *BulkJob
		want ItemState
	}{
		{"the job still running", &BulkJob{Completed: false, BatchesTotal: -1}, ItemPending},
		{"the job complete with a batch not listed yet", &BulkJob{Completed: true, BatchesTotal: 2}, ItemPending},
		{"the job complete with every batch listed", &BulkJob{Completed: true, BatchesTotal: 1}, ItemFailed},
	} {
		t.Run("without counts, an unreported item with "+tt.name, func(t *testing.T) {
			if got := partial(tt.job).Outcomes(items); got[0].State != ItemSucceeded || got[1].State != tt.want {
				t.Errorf("Outcomes = %v; want the unreported item %v", got, tt.want)
			}
		})
	}
}

// fakeClient starts the fake with cfg and returns it with a Client for it.
func fakeClient(tb testing.TB, cfg kustomertest.Config) (*kustomertest.Server, *Client) {
	tb.Helper()
	srv := kustomertest.NewServer(tb, cfg)
	c := newClient(tb, srv.URL, func(o *Options) { o.Key = StaticKey(kustomertest.DefaultAPIKey) })
	return srv, c
}

// settle reads the job's batches until it is complete, failing the test after 5 s.
func settle(tb testing.TB, c *Client, jobID string) *BulkBatches {
	tb.Helper()
	var b *BulkBatches
	complete := testwait.Within(5*time.Second, func() bool {
		var err error
		if b, err = c.ReadBulkBatches(tb.Context(), jobID); err != nil {
			tb.Fatalf("ReadBulkBatches: %v", err)
		}
		return b.Complete()
	})
	if !complete {
		tb.Fatalf("job %s not complete after 5 s: %+v", jobID, b)
	}
	return b
}

func TestBulkAgainstTheFake(t *testing.T) {
	ok := ItemOutcome{State: ItemSucceeded}
	mixed := func(refs bool) []BulkItem {
		its := []BulkItem{
			item(1, `{"priority":2}`),
			item(2, `{"customer":"`+convID(50)+`"}`),
			item(3, `{"name":"locked one"}`),
			item(4, `{"status":"done"}`),
		}
		if !refs {
			for i := range its {
				its[i].Ref = ""
			}
		}
		return its
	}
	for _, tc := range []struct {
		name string
		cfg  kustomertest.Config
		refs bool
	}{
		{"results by _clientRef in the JSON:API envelope", kustomertest.Config{BulkBatchSize: 2}, true},
		{"results by _clientRef with fields on the objects", kustomertest.Config{BulkBatchSize: 3, BulkFlat: true}, true},
		{"objectIds and errors without _clientRef", kustomertest.Config{BulkBatchSize: 2}, false},
		{"a job that takes its time", kustomertest.Config{BulkBatchSize: 1, BulkDuration: 300 * time.Millisecond}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, c := fakeClient(t, tc.cfg)
			srv.FailBulk(convID(3), "conversation is locked")
			srv.Reject(convID(4), http.StatusNotFound)
			its := mixed(tc.refs)
			job, err := c.SubmitBulk(t.Context(), its)
			if err != nil {
				t.Fatalf("SubmitBulk: %v", err)
			}
			if job.Status != 201 || job.RateLimit.Remaining != kustomertest.DefaultBudget-1 || len(job.ConversationIDs) != 4 {
				t.Errorf("job = %+v, want 201 with the rate limit and 4 ids", job)
			}
			if tc.cfg.BulkDuration > 0 {
				b, err := c.ReadBulkBatches(t.Context(), job.ID)
				if err != nil {
					t.Fatal(err)
				}
				if b.Complete() || b.Outcomes(its)[0].State != ItemPending {
					t.Fatalf("a job just submitted for %v is complete: %+v", tc.cfg.BulkDuration, b)
				}
			}
			b := settle(t, c, job.ID)
			got := b.Outcomes(its)
			want := []ItemOutcome{ok, ok, {ItemFailed, "conversation is locked"}, {ItemFailed, "404 Not Found"}}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("Outcomes = %v\nwant %v", got, want)
			}
			j, err := c.ReadBulkJob(t.Context(), job.ID)
			if err != nil || !j.Completed || j.State != "complete" || j.BatchesComplete != j.BatchesTotal {
				t.Errorf("ReadBulkJob = %+v, %v; want complete", j, err)
			}
			if conv, _ := srv.Conversation(convID(1)); conv.Rev != 1 || conv.Attributes["priority"] != 2.0 {
				t.Errorf("conversation 1 = %+v, want the update applied", conv)
			}
		})
	}

	t.Run("errors of the fake are classified", func(t *testing.T) {
		srv, c := fakeClient(t, kustomertest.Config{Budget: 2, BulkReadDenied: true, RetryAfter: true})
		job, err := c.SubmitBulk(t.Context(), []BulkItem{item(1, `{"name":"a"}`)})
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.ReadBulkBatches(t.Context(), job.ID)
		if !errors.Is(err, ErrBulkReadDenied) || !errors.Is(err, ErrAuth) || !strings.Contains(err.Error(), "org.permission.bulk.read") {
			t.Errorf("denied read: %v, want ErrBulkReadDenied naming the role", err)
		}
		srv.SetBulkReadDenied(false)
		if _, err := c.ReadBulkJob(t.Context(), job.ID); err != nil {
			t.Fatal(err)
		}
		_, err = c.SubmitBulk(t.Context(), []BulkItem{item(2, `{"name":"b"}`)})
		apiErr := asAPIError(t, err)
		if apiErr.Class != ClassThrottled || apiErr.Scope != ScopeOrg || apiErr.Wait <= 0 || apiErr.RateLimit.Remaining != 0 {
			t.Errorf("submit over budget: %#v, want an org-wide 429 with a wait", apiErr)
		}
		_, err = c.ReadBulkJob(t.Context(), convID(77))
		if !errors.Is(err, ErrThrottled) {
			t.Errorf("read over budget: %v, want ErrThrottled", err)
		}
	})

	t.Run("a 400 for the whole submit is permanent", func(t *testing.T) {
		// The client refuses bad attributes itself, so the fake's strict 400 is scripted here;
		// kustomertest's own tests cover BulkStrict.
		srv, c := fakeClient(t, kustomertest.Config{})
		srv.ScriptBulkSubmit(kustomertest.Status(http.StatusBadRequest))
		_, err := c.SubmitBulk(t.Context(), []BulkItem{item(1, `{"name":"a"}`), item(2, `{"status":"open"}`)})
		apiErr := asAPIError(t, err)
		if apiErr.Class != ClassPermanent || apiErr.Op != OpSubmitBulk || apiErr.Reason == "" {
			t.Errorf("400: %#v, want a permanent error with Kustomer's reason", apiErr)
		}
		if len(srv.BulkJobs()) != 0 {
			t.Error("a refused submit created a job")
		}
	})

	t.Run("an unknown job is permanent", func(t *testing.T) {
		_, c := fakeClient(t, kustomertest.Config{})
		_, err := c.ReadBulkJob(t.Context(), convID(9))
		if apiErr := asAPIError(t, err); apiErr.Status != 404 || apiErr.Class != ClassPermanent {
			t.Errorf("unknown job: %#v, want a permanent 404", apiErr)
		}
	})
}

// BenchmarkSubmitBulk measures a full submit of 100 items (validation, encoding, the request,
// reading the job) against the fake over loopback:
// go test -bench SubmitBulk -run '^$' ./kustomer/
func BenchmarkSubmitBulk(b *testing.B) {
	_, c := fakeClient(b, kustomertest.Config{Budget: -1, DisableLog: true, BulkDuration: time.Hour})
	its := make([]BulkItem, MaxBulkItems)
	for i := range its {
		its[i] = item(i+1, `{"priority":3,"tags":["vip","renewal"],"status":"open"}`)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.SubmitBulk(b.Context(), its); err != nil {
			b.Fatal(err)
		}
	}
}
