package kustomertest_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
)

// submit sends a bulk update with the default key.
func (f *fixture) submit(body string) answer {
	f.t.Helper()
	return f.send(http.MethodPut, "/v1/conversations/bulk", body, kustomertest.DefaultAPIKey)
}

// read sends GET path with the default key.
func (f *fixture) read(path string) answer {
	f.t.Helper()
	return f.send(http.MethodGet, path, "", kustomertest.DefaultAPIKey)
}

// items renders bulk items for conversations ns with attrs, each with _clientRef "r<n>" when
// refs.
func items(refs bool, attrs string, ns ...int) string {
	parts := make([]string, len(ns))
	for i, n := range ns {
		ref := ""
		if refs {
			ref = fmt.Sprintf(`"_clientRef":"r%d",`, n)
		}
		parts[i] = fmt.Sprintf(`{"id":%q,%s%s}`, id(n), ref, attrs)
	}
	return "[" + strings.Join(parts, ",") + "]"
}

// jobDoc is a job answer in the JSON:API envelope.
type jobDoc struct {
	Data struct {
		Type       string `json:"type"`
		ID         string `json:"id"`
		Attributes struct {
			Status    string   `json:"status"`
			Completed bool     `json:"completed"`
			IDs       []string `json:"ids"`
			Batches   struct{ Complete, Total int }
		} `json:"attributes"`
	} `json:"data"`
}

func jobOf(t testing.TB, a answer) jobDoc {
	t.Helper()
	var d jobDoc
	if err := json.Unmarshal(a.body, &d); err != nil || d.Data.ID == "" {
		t.Fatalf("body %s is not a job (%v)", a.body, err)
	}
	return d
}

// batchDoc is one batch of a batches answer in the JSON:API envelope.
type batchDoc struct {
	Type       string `json:"type"`
	ID         string `json:"id"`
	Attributes struct {
		Status       string   `json:"status"`
		ObjectIDs    []string `json:"objectIds"`
		SuccessCount int      `json:"successCount"`
		FailureCount int      `json:"failureCount"`
		CompletedAt  string   `json:"completedAt"`
		Errors       []struct {
			ObjectID string `json:"objectId"`
			Message  string `json:"message"`
		} `json:"errors"`
		Results []struct {
			Ref      string `json:"_clientRef"`
			ObjectID string `json:"objectId"`
			Status   string `json:"status"`
			Error    string `json:"error"`
		} `json:"results"`
	} `json:"attributes"`
}

func batchesOf(t testing.TB, a answer) []batchDoc {
	t.Helper()
	var d struct{ Data []batchDoc }
	if err := json.Unmarshal(a.body, &d); err != nil || d.Data == nil {
		t.Fatalf("body %s is not a batch list (%v)", a.body, err)
	}
	return d.Data
}

func TestBulkJobsApplyItemsLikeSinglePUTs(t *testing.T) {
	t.Parallel()
	f := setup(t, kustomertest.Config{Budget: 10})
	f.srv.Seed(id(1), map[string]any{"name": "old", "tags": []string{"a"}, "rev": 4})
	a := f.submit(`[
		{"id":"` + id(1) + `","_clientRef":"r1","tags":["vip"],"priority":2,"rev":99},
		{"id":"` + id(2) + `","_clientRef":"r2","customer":"` + id(50) + `"},
		{"id":"` + id(3) + `","_clientRef":"r3"}]`)
	mustStatus(t, a, http.StatusCreated)
	job := jobOf(t, a)
	if job.Data.Type != "bulk" || !slices.Equal(job.Data.Attributes.IDs, []string{id(1), id(2), id(3)}) || job.Data.Attributes.Batches.Total != 1 {
		t.Fatalf("job %+v; want type bulk, the three ids, one batch", job)
	}
	if !job.Data.Attributes.Completed || job.Data.Attributes.Status != kustomertest.JobComplete {
		t.Fatalf("job %+v; want complete at once with BulkDuration 0", job)
	}
	if rem := a.int(t, "X-Ratelimit-Remaining"); rem != 9 {
		t.Fatalf("remaining %d after a submit of 3 items; want 9: one unit per request", rem)
	}

	c1, _ := f.srv.Conversation(id(1))
	if c1.Rev != 5 || c1.Attributes["name"] != "old" || !reflect.DeepEqual(c1.Attributes["tags"], []any{"vip"}) || c1.Attributes["priority"] != 2.0 {
		t.Fatalf("conversation 1 = %+v; want rev 5, name kept, tags replaced, priority 2", c1)
	}
	if c2, _ := f.srv.Conversation(id(2)); c2.Rev != 1 || c2.Attributes["customer"] != id(50) {
		t.Fatalf("conversation 2 = %+v; want moved to customer %s", c2, id(50))
	}
	if c3, ok := f.srv.Conversation(id(3)); !ok || c3.Rev != 1 {
		t.Fatalf("conversation 3 = %+v; want rev 1 after an empty update, as a single PUT of {}", c3)
	}

	st := f.srv.Stats()
	if st.BulkSubmits != 1 || st.BulkJobs != 1 || st.BulkItems != 3 || st.BulkItemsDone != 3 || st.Applied != 3 || st.Units != 1 || st.Requests != 1 {
		t.Fatalf("stats %+v; want one submit, one job of 3 items applied, one unit", st)
	}
	reqs := f.srv.RequestsFor(id(2))
	if len(reqs) != 1 || reqs[0].Kind != kustomertest.KindBulkSubmit || reqs[0].Job != job.Data.ID || !slices.Equal(reqs[0].IDs, []string{id(1), id(2), id(3)}) {
		t.Fatalf("requests for %s = %+v; want the submit, naming its job and items", id(2), reqs)
	}

	b := f.read("/v1/bulk/" + job.Data.ID + "/batches")
	mustStatus(t, b, http.StatusOK)
	batches := batchesOf(t, b)
	if len(batches) != 1 || batches[0].Attributes.Status != "complete" || batches[0].Attributes.SuccessCount != 3 || len(batches[0].Attributes.Results) != 3 {
		t.Fatalf("batches %+v; want one complete batch with 3 results", batches)
	}
	for i, r := range batches[0].Attributes.Results {
		if r.Ref != fmt.Sprintf("r%d", i+1) || r.ObjectID != id(i+1) || r.Status != "updated" {
			t.Fatalf("result %d = %+v; want r%d updated", i, r, i+1)
		}
	}
	if reqs := f.srv.Requests(); reqs[1].Kind != kustomertest.KindBulkBatches || reqs[1].Job != job.Data.ID {
		t.Fatalf("request log %+v; want the batches read logged with its job", reqs[1])
	}
}

func TestBulkJobsProgressOnTheClock(t *testing.T) {
	t.Parallel()
	const d = time.Second
	f := setup(t, kustomertest.Config{Budget: -1, BulkDuration: d, BulkBatchSize: 2})
	start := time.Now()
	a := f.submit(items(true, `"name":"x"`, 1, 2, 3, 4, 5))
	mustStatus(t, a, http.StatusCreated)
	job := jobOf(t, a)
	if job.Data.Attributes.Status != kustomertest.JobQueued || job.Data.Attributes.Completed || job.Data.Attributes.Batches.Total != 3 {
		t.Fatalf("job at submit %+v; want queued, 3 batches of at most 2", job)
	}
	if b := batchesOf(t, f.read("/v1/bulk/"+job.Data.ID+"/batches")); len(b) != 3 || b[0].Attributes.Status != "queued" || len(b[0].Attributes.Results) != 0 {
		t.Fatalf("batches of a queued job %+v; want 3 queued without results", b)
	}
	if c, _ := f.srv.Conversation(id(1)); c.Rev != 0 {
		t.Fatalf("conversation %+v updated while its job is queued", c)
	}

	seen := []string{kustomertest.JobQueued}
	revs := func() []int64 {
		out := make([]int64, 5)
		for n := range out {
			c, _ := f.srv.Conversation(id(n + 1))
			out[n] = c.Rev
		}
		return out
	}
	eventually(t, "the job completes", func() bool {
		before := revs()
		j, ok := f.srv.BulkJob(job.Data.ID)
		if !ok {
			t.Fatalf("job %s unknown", job.Data.ID)
		}
		after := revs()
		if j.State != seen[len(seen)-1] {
			seen = append(seen, j.State)
		}
		for n, it := range j.Items {
			updated := it.State == kustomertest.ItemUpdated
			if before[n] == 1 && !updated || updated && after[n] != 1 {
				t.Fatalf("item %+v, conversation rev %d then %d: an item is applied exactly when its batch completes", it, before[n], after[n])
			}
		}
		return j.State == kustomertest.JobComplete
	})
	if elapsed := time.Since(start); elapsed < d {
		t.Fatalf("job complete after %v; want at least BulkDuration %v", elapsed, d)
	}
	if seen[len(seen)-1] != kustomertest.JobComplete || !slices.IsSorted(stateOrder(seen)) {
		t.Fatalf("states seen %v; want queued, running, complete in order", seen)
	}
	done := jobOf(t, f.read("/v1/bulk/"+job.Data.ID))
	if !done.Data.Attributes.Completed || done.Data.Attributes.Batches.Complete != 3 {
		t.Fatalf("job read %+v; want completed with 3 batches complete", done)
	}
	if st := f.srv.Stats(); st.Applied != 5 || st.BulkReads != 2 || st.Units != 3 {
		t.Fatalf("stats %+v; want 5 applied, 2 reads, 3 units", st)
	}
}

func stateOrder(states []string) []int {
	order := map[string]int{kustomertest.JobQueued: 0, kustomertest.JobRunning: 1, kustomertest.JobComplete: 2}
	out := make([]int, len(states))
	for i, s := range states {
		out[i] = order[s]
	}
	return out
}

func TestBulkItemFailures(t *testing.T) {
	t.Parallel()
	t.Run("a bad attribute, FailBulk and Reject fail their items only", func(t *testing.T) {
		t.Parallel()
		f := setup(t, kustomertest.Config{})
		f.srv.FailBulk(id(2), "locked by a test")
		f.srv.Reject(id(3), http.StatusNotFound)
		a := f.submit(`[{"id":"` + id(1) + `","_clientRef":"a","priority":7},` + strings.TrimPrefix(items(true, `"name":"x"`, 2, 3, 4), "["))
		mustStatus(t, a, http.StatusCreated)
		b := batchesOf(t, f.read("/v1/bulk/"+jobOf(t, a).Data.ID+"/batches"))[0]
		want := []struct{ status, err string }{
			{"error", "priority: 7 is not an integer from 1 to 5"},
			{"error", "locked by a test"},
			{"error", "404 Not Found"},
			{"updated", ""},
		}
		for i, w := range want {
			if r := b.Attributes.Results[i]; r.Status != w.status || r.Error != w.err {
				t.Fatalf("result %d = %+v; want %s %q", i, r, w.status, w.err)
			}
		}
		if b.Attributes.SuccessCount != 1 || b.Attributes.FailureCount != 3 || !slices.Equal(b.Attributes.ObjectIDs, []string{id(4)}) || len(b.Attributes.Errors) != 3 {
			t.Fatalf("batch %+v; want 1 success listed in objectIds, 3 failures in errors", b)
		}
		for n := 1; n <= 3; n++ {
			if c, ok := f.srv.Conversation(id(n)); ok && c.Rev != 0 {
				t.Fatalf("failed item applied: %+v", c)
			}
		}
		if st := f.srv.Stats(); st.BulkItemsFailed != 3 || st.BulkItemsDone != 1 || st.Applied != 1 {
			t.Fatalf("stats %+v; want 3 failed, 1 applied", st)
		}
		f.srv.FailBulk(id(2), "")
		a = f.submit(items(true, `"name":"y"`, 2))
		mustStatus(t, a, http.StatusCreated)
		if c, _ := f.srv.Conversation(id(2)); c.Rev != 1 {
			t.Fatalf("conversation %+v; want applied once FailBulk is lifted", c)
		}
	})

	t.Run("without _clientRef there are no results, objectIds list the successes", func(t *testing.T) {
		t.Parallel()
		f := setup(t, kustomertest.Config{RequireSeeded: true})
		f.srv.Seed(id(1), nil)
		a := f.submit(items(false, `"status":"done"`, 1, 2))
		mustStatus(t, a, http.StatusCreated)
		raw := f.read("/v1/bulk/" + jobOf(t, a).Data.ID + "/batches")
		if strings.Contains(string(raw.body), "results") {
			t.Fatalf("batches %s; want no results without _clientRef", raw.body)
		}
		b := batchesOf(t, raw)[0]
		if !slices.Equal(b.Attributes.ObjectIDs, []string{id(1)}) || b.Attributes.FailureCount != 1 || b.Attributes.Errors[0].ObjectID != id(2) ||
			!strings.Contains(b.Attributes.Errors[0].Message, "not found") {
			t.Fatalf("batch %+v; want %s updated and the unseeded %s failed as not found", b, id(1), id(2))
		}
	})

	t.Run("BulkFailRate 1 fails every item", func(t *testing.T) {
		t.Parallel()
		f := setup(t, kustomertest.Config{BulkFailRate: 1, RandSeed: 7})
		a := f.submit(items(true, `"name":"x"`, 1, 2, 3))
		mustStatus(t, a, http.StatusCreated)
		j, _ := f.srv.BulkJob(jobOf(t, a).Data.ID)
		for _, it := range j.Items {
			if it.State != kustomertest.ItemError || it.Error != "injected failure" {
				t.Fatalf("item %+v; want an injected failure", it)
			}
		}
	})

	t.Run("BulkFailRate fails a reproducible share", func(t *testing.T) {
		t.Parallel()
		failedOf := func() []string {
			f := setup(t, kustomertest.Config{BulkFailRate: 0.3, RandSeed: 42})
			ns := make([]int, 100)
			for i := range ns {
				ns[i] = i + 1
			}
			a := f.submit(items(true, `"name":"x"`, ns...))
			mustStatus(t, a, http.StatusCreated)
			j, _ := f.srv.BulkJob(jobOf(t, a).Data.ID)
			var failed []string
			for _, it := range j.Items {
				if it.State == kustomertest.ItemError {
					failed = append(failed, it.ID)
				}
			}
			return failed
		}
		first := failedOf()
		if len(first) < 15 || len(first) > 45 {
			t.Fatalf("%d of 100 items failed; want about 30", len(first))
		}
		if second := failedOf(); !slices.Equal(first, second) {
			t.Fatalf("the same seed failed %v, then %v", first, second)
		}
	})
}

func TestBulkRefusals(t *testing.T) {
	t.Parallel()
	tooMany := make([]int, 101)
	for i := range tooMany {
		tooMany[i] = i + 1
	}
	tests := []struct {
		name string
		cfg  kustomertest.Config
		body string
		want string
	}{
		{"not JSON", kustomertest.Config{}, `[{`, "JSON array"},
		{"an object instead of an array", kustomertest.Config{}, `{"id":"` + id(1) + `"}`, "JSON array"},
		{"no items", kustomertest.Config{}, `[]`, "0 items"},
		{"more than 100 items", kustomertest.Config{}, items(true, `"name":"x"`, tooMany...), "101 items"},
		{"an item that is not an object", kustomertest.Config{}, `["` + id(1) + `"]`, "item 0: not a JSON object"},
		{"an item without a valid id", kustomertest.Config{}, `[{"id":"5F","name":"x"}]`, "item 0: id"},
		{"mixed _clientRef", kustomertest.Config{}, `[{"id":"` + id(1) + `","_clientRef":"a"},{"id":"` + id(2) + `"}]`, "all or none"},
		{"duplicate _clientRef", kustomertest.Config{}, `[{"id":"` + id(1) + `","_clientRef":"a"},{"id":"` + id(2) + `","_clientRef":"a"}]`, "repeats item 0"},
		{"an empty _clientRef", kustomertest.Config{}, `[{"id":"` + id(1) + `","_clientRef":""}]`, "_clientRef"},
		{"a _clientRef over 255 characters", kustomertest.Config{}, `[{"id":"` + id(1) + `","_clientRef":"` + strings.Repeat("x", 256) + `"}]`, "_clientRef"},
		{"a bad attribute in strict mode", kustomertest.Config{BulkStrict: true}, `[{"id":"` + id(1) + `","name":"ok"},{"id":"` + id(2) + `","status":"gone"}]`, "item 1: status"},
	}
	for _, tt := range tests {
		t.Run(tt.name+" is answered 400 for the whole request", func(t *testing.T) {
			t.Parallel()
			tt.cfg.Budget = 5
			f := setup(t, tt.cfg)
			a := f.submit(tt.body)
			mustStatus(t, a, http.StatusBadRequest)
			if e := errorsOf(t, a); e[0].Code != "bad_request" || !strings.Contains(a.String(), tt.want) {
				t.Fatalf("errors %s; want bad_request mentioning %q", a.body, tt.want)
			}
			if rem := a.int(t, "X-Ratelimit-Remaining"); rem != 4 {
				t.Fatalf("remaining %d; a refused submit still costs its unit", rem)
			}
			if st := f.srv.Stats(); st.BulkJobs != 0 || st.Applied != 0 || f.srv.Conversations() != 0 || len(f.srv.BulkJobs()) != 0 {
				t.Fatalf("stats %+v; want no job and nothing applied", st)
			}
		})
	}
	t.Run("a submit without Content-Type application/json is refused", func(t *testing.T) {
		t.Parallel()
		f := setup(t, kustomertest.Config{})
		req, _ := http.NewRequest(http.MethodPut, f.srv.URL+"/v1/conversations/bulk", strings.NewReader(items(true, `"name":"x"`, 1)))
		req.Header.Set("Authorization", "Bearer "+kustomertest.DefaultAPIKey)
		mustStatus(t, f.do(req), http.StatusBadRequest)
	})
	t.Run("an unknown job is answered 404", func(t *testing.T) {
		t.Parallel()
		f := setup(t, kustomertest.Config{})
		mustStatus(t, f.read("/v1/bulk/"+id(9)), http.StatusNotFound)
		mustStatus(t, f.read("/v1/bulk/"+id(9)+"/batches"), http.StatusNotFound)
	})
}

// String is the answer's body, for messages.
func (a answer) String() string { return string(a.body) }

func TestBulkReadsDenied(t *testing.T) {
	t.Parallel()
	f := setup(t, kustomertest.Config{Budget: 10, BulkReadDenied: true})
	a := f.submit(items(true, `"name":"x"`, 1))
	mustStatus(t, a, http.StatusCreated)
	job := jobOf(t, a).Data.ID
	for _, path := range []string{"/v1/bulk/" + job, "/v1/bulk/" + job + "/batches"} {
		r := f.read(path)
		mustStatus(t, r, http.StatusForbidden)
		if !strings.Contains(r.String(), "org.permission.bulk.read") {
			t.Fatalf("403 body %s; want it to name the missing role", r.body)
		}
		if rem := r.int(t, "X-Ratelimit-Remaining"); rem != 9 {
			t.Fatalf("remaining %d after a denied read; want 9: a 403 costs nothing", rem)
		}
	}
	f.srv.SetBulkReadDenied(false)
	mustStatus(t, f.read("/v1/bulk/"+job), http.StatusOK)

	t.Run("SetForbidden refuses submits, not reads", func(t *testing.T) {
		f.srv.SetForbidden(true)
		defer f.srv.SetForbidden(false)
		mustStatus(t, f.submit(items(true, `"name":"x"`, 2)), http.StatusForbidden)
		mustStatus(t, f.read("/v1/bulk/"+job+"/batches"), http.StatusOK)
	})
	t.Run("a wrong key is answered 401 on every bulk endpoint", func(t *testing.T) {
		mustStatus(t, f.send(http.MethodPut, "/v1/conversations/bulk", items(true, `"name":"x"`, 2), "nope"), http.StatusUnauthorized)
		mustStatus(t, f.send(http.MethodGet, "/v1/bulk/"+job, "", "nope"), http.StatusUnauthorized)
	})
}

func TestBulkRequestsSpendTheOrgBudget(t *testing.T) {
	t.Parallel()
	f := setup(t, kustomertest.Config{Budget: 3, RetryAfter: true})
	a := f.submit(items(true, `"name":"x"`, 1, 2))
	mustStatus(t, a, http.StatusCreated)
	job := jobOf(t, a).Data.ID
	mustStatus(t, f.read("/v1/bulk/"+job), http.StatusOK)
	last := f.read("/v1/bulk/" + job + "/batches")
	mustStatus(t, last, http.StatusOK)
	if last.int(t, "X-Ratelimit-Remaining") != 0 || last.int(t, "X-Ratelimit-Limit") != 3 || last.header.Get("X-Ratelimit-Reset") == "" {
		t.Fatalf("headers %v; want limit 3, remaining 0 and a reset", last.header)
	}
	limited := f.submit(items(true, `"name":"y"`, 3))
	mustStatus(t, limited, http.StatusTooManyRequests)
	if limited.header.Get("Retry-After") == "" {
		t.Fatal("a bulk 429 has no Retry-After although Config.RetryAfter is on")
	}
	mustStatus(t, f.read("/v1/bulk/"+job), http.StatusTooManyRequests)
	if st := f.srv.Stats(); st.Units != 3 || st.BulkJobs != 1 || st.BulkSubmits != 2 || st.BulkReads != 3 {
		t.Fatalf("stats %+v; want 3 units, 1 job, 2 submits, 3 reads", st)
	}
}

func TestBulkScriptsAndShapes(t *testing.T) {
	t.Parallel()
	t.Run("a scripted submit status creates no job", func(t *testing.T) {
		t.Parallel()
		f := setup(t, kustomertest.Config{})
		f.srv.ScriptBulkSubmit(kustomertest.Status(http.StatusServiceUnavailable))
		mustStatus(t, f.submit(items(true, `"name":"x"`, 1)), http.StatusServiceUnavailable)
		if len(f.srv.BulkJobs()) != 0 {
			t.Fatal("a 503 submit created a job")
		}
		mustStatus(t, f.submit(items(true, `"name":"x"`, 1)), http.StatusCreated)
	})
	t.Run("a submit status after the work creates the job all the same", func(t *testing.T) {
		t.Parallel()
		f := setup(t, kustomertest.Config{})
		f.srv.ScriptBulkSubmit(kustomertest.StatusAfterWork(http.StatusBadGateway))
		mustStatus(t, f.submit(items(true, `"name":"x"`, 1)), http.StatusBadGateway)
		if jobs := f.srv.BulkJobs(); len(jobs) != 1 || jobs[0].Items[0].State != kustomertest.ItemUpdated {
			t.Fatalf("jobs %+v; want the job the 502 hid, applied", jobs)
		}
	})
	t.Run("a slow submit creates the job although the client gave up", func(t *testing.T) {
		t.Parallel()
		f := setup(t, kustomertest.Config{})
		f.srv.ScriptBulkSubmit(kustomertest.Slow(time.Minute))
		f.client.Timeout = 50 * time.Millisecond
		if a := f.submit(items(true, `"name":"x"`, 1)); a.err == nil {
			t.Fatalf("HTTP %d; want the client to time out", a.status)
		}
		eventually(t, "the abandoned submit is logged", func() bool { return len(f.srv.Requests()) == 1 })
		if jobs := f.srv.BulkJobs(); len(jobs) != 1 || jobs[0].Items[0].State != kustomertest.ItemUpdated || !f.srv.Requests()[0].Abandoned {
			t.Fatalf("jobs %+v; want one job applied although its answer was abandoned", jobs)
		}
	})
	t.Run("a scripted read status is answered once", func(t *testing.T) {
		t.Parallel()
		f := setup(t, kustomertest.Config{})
		a := f.submit(items(true, `"name":"x"`, 1))
		f.srv.ScriptBulkRead(kustomertest.Status(http.StatusBadGateway))
		job := jobOf(t, a).Data.ID
		mustStatus(t, f.read("/v1/bulk/"+job+"/batches"), http.StatusBadGateway)
		mustStatus(t, f.read("/v1/bulk/"+job+"/batches"), http.StatusOK)
	})
	t.Run("BulkUncounted lists only the batches done, without counts", func(t *testing.T) {
		t.Parallel()
		running := setup(t, kustomertest.Config{BulkUncounted: true, BulkDuration: time.Hour})
		a := running.submit(items(true, `"name":"x"`, 1))
		b := running.read("/v1/bulk/" + jobOf(t, a).Data.ID + "/batches")
		if string(b.body) != `{"data":[]}` {
			t.Fatalf("batches of a running job %s; want none listed", b.body)
		}
		done := setup(t, kustomertest.Config{BulkUncounted: true})
		a = done.submit(items(true, `"name":"x"`, 1))
		b = done.read("/v1/bulk/" + jobOf(t, a).Data.ID + "/batches")
		if !strings.Contains(string(b.body), `"status":"complete"`) || strings.Contains(string(b.body), "Count") {
			t.Fatalf("batches of a complete job %s; want it listed complete, without counts", b.body)
		}
	})
	t.Run("BulkFlat puts the fields on the objects", func(t *testing.T) {
		t.Parallel()
		f := setup(t, kustomertest.Config{BulkFlat: true})
		a := f.submit(items(true, `"name":"x"`, 1))
		mustStatus(t, a, http.StatusCreated)
		var job struct{ Data map[string]any }
		if err := json.Unmarshal(a.body, &job); err != nil || job.Data["status"] != "complete" || job.Data["attributes"] != nil {
			t.Fatalf("job %s; want the status on the object, no attributes", a.body)
		}
		var batches struct{ Data []map[string]any }
		b := f.read("/v1/bulk/" + job.Data["id"].(string) + "/batches")
		if err := json.Unmarshal(b.body, &batches); err != nil || batches.Data[0]["results"] == nil || batches.Data[0]["attributes"] != nil {
			t.Fatalf("batches %s; want results on the batch object", b.body)
		}
	})
}

func TestBulkMockEndpoints(t *testing.T) {
	t.Parallel()
	f := setup(t, kustomertest.Config{BulkDuration: time.Hour})
	a := f.submit(items(true, `"name":"x"`, 1, 2))
	mustStatus(t, a, http.StatusCreated)
	job := jobOf(t, a).Data.ID

	var jobs []kustomertest.BulkJob
	r := f.send(http.MethodGet, "/_mock/bulk", "", "")
	if err := json.Unmarshal(r.body, &jobs); err != nil || len(jobs) != 1 || jobs[0].ID != job || jobs[0].State != kustomertest.JobQueued || len(jobs[0].Items) != 2 {
		t.Fatalf("/_mock/bulk = %s (%v); want the queued job", r.body, err)
	}
	var one kustomertest.BulkJob
	r = f.send(http.MethodGet, "/_mock/bulk/"+job, "", "")
	if err := json.Unmarshal(r.body, &one); err != nil || one.Items[1].Ref != "r2" || one.Items[1].State != kustomertest.ItemPending {
		t.Fatalf("/_mock/bulk/{id} = %s (%v); want the job's items", r.body, err)
	}
	mustStatus(t, f.send(http.MethodGet, "/_mock/bulk/"+id(7), "", ""), http.StatusNotFound)
	var st kustomertest.Stats
	r = f.send(http.MethodGet, "/_mock/stats", "", "")
	if err := json.Unmarshal(r.body, &st); err != nil || st.Units != 1 || st.BulkJobs != 1 || st.BulkItems != 2 {
		t.Fatalf("/_mock/stats = %s (%v); want one unit, one job of 2 items", r.body, err)
	}
	var reqs []kustomertest.Request
	r = f.send(http.MethodGet, "/_mock/requests?id="+id(2), "", "")
	if err := json.Unmarshal(r.body, &reqs); err != nil || len(reqs) != 1 || reqs[0].Kind != kustomertest.KindBulkSubmit {
		t.Fatalf("/_mock/requests?id= = %s (%v); want the bulk submit", r.body, err)
	}
	// The hour-long job's timer is stopped by Close; goleak in TestMain checks nothing is left.
}

func TestBulkConfigIsChecked(t *testing.T) {
	t.Parallel()
	for _, cfg := range []kustomertest.Config{{BulkDuration: -time.Second}, {BulkBatchSize: -1}, {BulkFailRate: 2}} {
		if _, err := kustomertest.Start("127.0.0.1:0", cfg); err == nil {
			t.Fatalf("Start accepted %+v", cfg)
		}
	}
}
