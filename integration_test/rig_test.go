package integration_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
	"github.com/kustomer-worker/kustomer-worker/queue"
)

// The names the worker uses by default.
const (
	workSubject = "kustomer.conversations.update"
	workStream  = "KUSTOMER_UPDATES"
	dlqStream   = "KUSTOMER_UPDATES_DLQ"
	consumer    = "kustomer-worker"
	// The backfill lane's subject and consumer (docs/LANES.md).
	backfillSubject  = "kustomer.conversations.backfill"
	backfillConsumer = "kustomer-worker-backfill"
)

// rig is the test's side of a running setup: a NATS connection and an HTTP client for the
// fake's /_mock endpoints, both through ports published on 127.0.0.1.
type rig struct {
	mockURL string
	http    *http.Client
	nc      *nats.Conn
	js      jetstream.JetStream
}

func newRig(tb testing.TB, natsURL, mockURL string) *rig {
	tb.Helper()
	r := &rig{mockURL: mockURL, http: &http.Client{Timeout: 30 * time.Second}}
	r.connect(tb, natsURL)
	tb.Cleanup(func() {
		if r.nc != nil {
			r.nc.Close()
		}
		r.http.CloseIdleConnections()
	})
	return r
}

// connect (re)connects the test to NATS at url, closing the previous connection.
func (r *rig) connect(tb testing.TB, url string) {
	tb.Helper()
	if r.nc != nil {
		r.nc.Close()
	}
	nc, err := nats.Connect(url, nats.Name("integration-test"), nats.Timeout(10*time.Second))
	if err != nil {
		tb.Fatalf("connecting to NATS at %s: %v", url, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		tb.Fatal(err)
	}
	r.nc, r.js = nc, js
}

// update is one enqueued message and what must become of it.
type update struct {
	marker  string // body.name and Nats-Msg-Id: identifies the update at the fake and in the DLQ
	data    []byte
	invalid bool   // fails the worker's validation: must be dead-lettered, never sent
	conv    string // the conversation, for updates of makeRounds
}

// makeUpdates makes n updates of distinct conversations, of which the given number (spread
// evenly) are invalid, alternately for a malformed id and an out-of-range priority. Markers
// start with prefix.
func makeUpdates(prefix string, n, invalid int) []update {
	ups := make([]update, n)
	every := n + 1
	if invalid > 0 {
		every = n / invalid
	}
	bad := 0
	for i := range ups {
		u := update{marker: fmt.Sprintf("%s-%05d", prefix, i)}
		id := fmt.Sprintf("%024x", 0x5f00000000+i)
		body := map[string]any{"name": u.marker, "custom": map[string]any{"e2eSeq": i}}
		if bad < invalid && i%every == every-1 {
			u.invalid = true
			if bad%2 == 0 {
				id = "not-a-conversation-id"
			} else {
				body["priority"] = 9
			}
			bad++
		}
		u.data, _ = json.Marshal(map[string]any{"id": id, "body": body})
		ups[i] = u
	}
	return ups
}

// makeRounds makes rounds updates to each of convs conversations, round by round (so that a
// conversation's updates are spread over the stream), invalid of them invalid (never in the
// last round), markers as makeUpdates.
func makeRounds(prefix string, convs, rounds, invalid int) []update {
	ups := make([]update, 0, convs*rounds)
	for r := range rounds {
		for c := range convs {
			i := len(ups)
			u := update{marker: fmt.Sprintf("%s-%05d", prefix, i), conv: fmt.Sprintf("%024x", 0x5f00000000+c)}
			body := map[string]any{"name": u.marker}
			if r < rounds-1 && invalid > 0 && c%(convs/invalid) == 0 && r == 0 {
				u.invalid = true
				body["priority"] = 9
				invalid--
			}
			u.data, _ = json.Marshal(map[string]any{"id": u.conv, "body": body})
			ups = append(ups, u)
		}
	}
	return ups
}

// checkFinalState checks that every conversation ended at its last valid update: no older
// update was applied after a newer one of the same conversation.
func (r *rig) checkFinalState(tb testing.TB, ups []update) {
	tb.Helper()
	last := make(map[string]string)
	for _, u := range ups {
		if u.conv != "" && !u.invalid {
			last[u.conv] = u.marker
		}
	}
	var stale []string
	for _, conv := range slices.Sorted(maps.Keys(last)) {
		var c kustomertest.Conversation
		r.getJSON(tb, "/_mock/conversations/"+conv, &c)
		if got, _ := c.Attributes["name"].(string); got != last[conv] {
			stale = append(stale, fmt.Sprintf("%s at %s, want %s", conv, got, last[conv]))
		}
	}
	tb.Logf("%d conversations checked for their final state: %d stale", len(last), len(stale))
	if len(stale) > 0 {
		tb.Errorf("%d of %d conversations ended at an older update than their last; the first ones:\n%s",
			len(stale), len(last), strings.Join(stale[:min(len(stale), 25)], "\n"))
	}
}

// publish enqueues the updates on the work subject, each with its marker as Nats-Msg-Id, and
// fails the test unless JetStream stored every one as new.
func (r *rig) publish(tb testing.TB, ups []update) {
	tb.Helper()
	r.publishTo(tb, workSubject, ups)
}

// publishTo is publish on another subject, for example the backfill lane's.
func (r *rig) publishTo(tb testing.TB, subject string, ups []update) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, u := range ups {
		ack, err := r.js.Publish(ctx, subject, u.data, jetstream.WithMsgID(u.marker))
		if err != nil {
			tb.Fatalf("publishing %s: %v", u.marker, err)
		}
		if ack.Duplicate {
			tb.Fatalf("publishing %s: JetStream took it for a duplicate", u.marker)
		}
	}
}

// stats is the fake's GET /_mock/stats.
func (r *rig) stats(tb testing.TB) kustomertest.Stats {
	tb.Helper()
	var st kustomertest.Stats
	r.getJSON(tb, "/_mock/stats", &st)
	return st
}

func (r *rig) getJSON(tb testing.TB, path string, v any) {
	tb.Helper()
	resp, err := r.http.Get(r.mockURL + path)
	if err != nil {
		tb.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		tb.Fatalf("GET %s: %s", path, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		tb.Fatalf("GET %s: %v", path, err)
	}
}

// waitApplied waits until the fake has applied at least n updates.
func (r *rig) waitApplied(tb testing.TB, n int, timeout time.Duration) {
	tb.Helper()
	waitFor(tb, timeout, fmt.Sprintf("%d updates applied at the fake", n), func() (bool, string) {
		st := r.stats(tb)
		return st.Applied >= n, fmt.Sprintf("%d applied", st.Applied)
	})
}

// waitSettled waits until the work stream is empty, which under its work-queue retention means
// every message was acknowledged: applied, or dead-lettered.
func (r *rig) waitSettled(tb testing.TB, timeout time.Duration) {
	tb.Helper()
	waitFor(tb, timeout, "the work stream to empty", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s, err := r.js.Stream(ctx, workStream)
		if err != nil {
			return false, err.Error()
		}
		info, err := s.Info(ctx)
		if err != nil {
			return false, err.Error()
		}
		return info.State.Msgs == 0, fmt.Sprintf("%d messages left in %s; fake: %+v", info.State.Msgs, workStream, r.stats(tb))
	})
}

// deadLetter is one message of the dead-letter stream.
type deadLetter struct {
	class, reason string
}

// outcome is what became of the updates of one marker.
type outcome struct {
	applied int          // requests answered 200 by the fake (abandoned ones included)
	dead    []deadLetter // its messages in the dead-letter stream
}

// account collects, by marker, the requests the fake answered 200 and the dead letters.
func (r *rig) account(tb testing.TB) map[string]*outcome {
	tb.Helper()
	got := make(map[string]*outcome)
	at := func(marker string) *outcome {
		o := got[marker]
		if o == nil {
			o = &outcome{}
			got[marker] = o
		}
		return o
	}
	var reqs []kustomertest.Request
	r.getJSON(tb, "/_mock/requests", &reqs)
	for _, req := range reqs {
		if req.Method != http.MethodPut || req.Status != http.StatusOK {
			continue
		}
		at(markerOf(tb, req.Body, "body.name of a request at the fake")).applied++
	}
	for _, m := range r.deadLetters(tb) {
		o := at(markerOf(tb, m.Data(), "a dead letter"))
		o.dead = append(o.dead, deadLetter{class: m.Headers().Get(queue.HeaderClass), reason: m.Headers().Get(queue.HeaderReason)})
	}
	return got
}

// markerOf reads the marker of a request body ({"name": ...}) or of a message
// ({"body": {"name": ...}}).
func markerOf(tb testing.TB, data []byte, what string) string {
	tb.Helper()
	var v struct {
		Name string `json:"name"`
		Body struct {
			Name string `json:"name"`
		} `json:"body"`
	}
	if err := json.Unmarshal(data, &v); err != nil {
		tb.Fatalf("%s is not JSON: %v: %q", what, err, data)
	}
	if v.Name != "" {
		return v.Name
	}
	return v.Body.Name
}

// deadLetters reads the whole dead-letter stream.
func (r *rig) deadLetters(tb testing.TB) []jetstream.Msg {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := r.js.Stream(ctx, dlqStream)
	if err != nil {
		tb.Fatalf("stream %s: %v", dlqStream, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	want := int(info.State.Msgs)
	if want == 0 {
		return nil
	}
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		tb.Fatal(err)
	}
	var msgs []jetstream.Msg
	for len(msgs) < want {
		batch, err := cons.Fetch(want-len(msgs), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			tb.Fatalf("reading %s: %v", dlqStream, err)
		}
		n := len(msgs)
		for m := range batch.Messages() {
			msgs = append(msgs, m)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			tb.Fatalf("reading %s: %v", dlqStream, err)
		}
		if len(msgs) == n {
			tb.Fatalf("reading %s: got %d of %d messages", dlqStream, n, want)
		}
	}
	return msgs
}

// duplicates says whether an update may be applied more than once: only when a worker was
// killed or lost its acknowledgements, since at-least-once delivery then repeats the request.
type duplicates bool

const (
	exactlyOnce       duplicates = false
	duplicatesAllowed duplicates = true
)

// checkNothingLost checks, update by update, that every valid update was applied at the fake
// and never dead-lettered, that every invalid one sits in the dead-letter stream with class
// invalid and a reason and never reached the fake, that nothing else arrived anywhere, and,
// unless dup allows it, that no update was applied twice.
func checkNothingLost(tb testing.TB, ups []update, got map[string]*outcome, dup duplicates) {
	tb.Helper()
	var problems []string
	twice := 0
	for _, u := range ups {
		o := got[u.marker]
		delete(got, u.marker)
		if o == nil {
			o = &outcome{}
		}
		switch {
		case u.invalid && o.applied > 0:
			problems = append(problems, fmt.Sprintf("%s: invalid, yet applied %d times", u.marker, o.applied))
		case u.invalid && len(o.dead) != 1:
			problems = append(problems, fmt.Sprintf("%s: invalid, dead-lettered %d times", u.marker, len(o.dead)))
		case u.invalid && (o.dead[0].class != string(queue.ClassInvalid) || o.dead[0].reason == ""):
			problems = append(problems, fmt.Sprintf("%s: dead letter with class %q, reason %q; want class invalid and a reason", u.marker, o.dead[0].class, o.dead[0].reason))
		case !u.invalid && len(o.dead) > 0:
			problems = append(problems, fmt.Sprintf("%s: dead-lettered (%s: %s)", u.marker, o.dead[0].class, o.dead[0].reason))
		case !u.invalid && o.applied == 0:
			problems = append(problems, fmt.Sprintf("%s: lost: never applied and not dead-lettered", u.marker))
		case !u.invalid && o.applied > 1:
			twice++
			if dup == exactlyOnce {
				problems = append(problems, fmt.Sprintf("%s: applied %d times though no worker was killed", u.marker, o.applied))
			}
		}
	}
	for _, m := range slices.Sorted(maps.Keys(got)) {
		problems = append(problems, fmt.Sprintf("%s: arrived (%d applied, %d dead letters) but was never enqueued", m, got[m].applied, len(got[m].dead)))
	}
	tb.Logf("%d updates checked one by one: %d applied more than once", len(ups), twice)
	if len(problems) > 0 {
		shown := problems[:min(len(problems), 25)]
		tb.Errorf("%d of %d updates went wrong; the first ones:\n%s", len(problems), len(ups), strings.Join(shown, "\n"))
	}
}
