package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// A run is one backfill enqueued under a run id. Every message of a run carries the run id
// and its input line in two headers (HeaderRunID, HeaderRunLine), which a dead letter keeps
// with the rest of the original's headers. The runs stream holds, per run, its record (Run,
// written by enqueue) and one record per line applied (written by the worker after Kustomer
// accepted the update and before the message is acknowledged), under a subject of its own
// per line, keeping only the last message of a subject: a line applied twice (a
// redelivery) counts once. What a run's status says is derived from these and from the
// dead letters, so that it survives crashes of the worker and of the command that reads it.
const (
	HeaderRunID   = "Kustomer-Worker-Run"  // the run id a message was enqueued under
	HeaderRunLine = "Kustomer-Worker-Line" // its line in the run's input, from 1

	DefaultRunsStream  = "KUSTOMER_WORKER_RUNS"
	DefaultRunsSubject = "kustomer.worker.runs"
	DefaultRunsMaxAge  = 30 * 24 * time.Hour
)

// ErrNoRun is returned for a run id the runs stream holds no record of.
var ErrNoRun = errors.New("no such run")

// ErrNoRunsStream is returned by RecordApplied when no stream takes the runs subjects (the
// streams are managed elsewhere and the runs stream was not created): nothing can record the
// line, and waiting will not help.
var ErrNoRunsStream = errors.New("no runs stream")

var validRunID = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// CheckRunID returns an error unless id can name a run: 1 to 64 letters, digits, _ and -.
func CheckRunID(id string) error {
	if !validRunID.MatchString(id) {
		return fmt.Errorf("run id %q: use 1 to 64 letters, digits, _ and - (it is a subject token)", id)
	}
	return nil
}

func (t Topology) runsConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:              t.RunsStream,
		Description:       "kustomer-worker runs (backfills): each run's record and the lines applied, one subject each",
		Subjects:          []string{t.RunsSubject + ".>"},
		Retention:         jetstream.LimitsPolicy,
		Storage:           jetstream.FileStorage,
		MaxMsgsPerSubject: 1,
		MaxAge:            t.RunsMaxAge,
		Replicas:          t.StreamReplicas,
	}
}

// Run is a run's record, as enqueue writes it.
type Run struct {
	ID      string    `json:"id"`
	Started time.Time `json:"started"`         // when enqueue first began publishing it
	Lines   int64     `json:"lines"`           // messages the run holds: the valid lines
	Invalid int64     `json:"invalid"`         // lines refused before publishing (--skip-invalid)
	Lane    string    `json:"lane"`            // the lane it was published to
	Input   string    `json:"input,omitempty"` // the file's name, or stdin
	// Published is when JetStream confirmed every message of the run; zero while publishing.
	Published time.Time `json:"published,omitzero"`
}

// RunLog reads and writes the runs stream of a Topology.
type RunLog struct {
	JS       jetstream.JetStream
	Topology Topology
}

func (l *RunLog) subject(id string, rest ...string) string {
	s := l.Topology.RunsSubject + "." + id
	for _, r := range rest {
		s += "." + r
	}
	return s
}

// Ensure creates the runs stream when missing (a worker of an older version made the other
// streams); an existing one is left as it is, so that a producer allowed to publish but not
// to manage streams may call it.
func (l *RunLog) Ensure(ctx context.Context) error {
	_, err := l.JS.Stream(ctx, l.Topology.RunsStream)
	if err == nil {
		return nil
	}
	if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return streamError(l.Topology.RunsStream, err)
	}
	if _, err := l.JS.CreateOrUpdateStream(ctx, l.Topology.runsConfig()); err != nil {
		return fmt.Errorf("stream %s: %w", l.Topology.RunsStream, err)
	}
	return nil
}

// Put stores r as its run's record, replacing the last.
func (l *RunLog) Put(ctx context.Context, r Run) error {
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if _, err := l.JS.Publish(ctx, l.subject(r.ID, "run"), data); err != nil {
		return fmt.Errorf("run %s: record: %w", r.ID, err)
	}
	return nil
}

// Get returns run id's record, or an error matching ErrNoRun.
func (l *RunLog) Get(ctx context.Context, id string) (Run, error) {
	var r Run
	err := l.last(ctx, l.subject(id, "run"), &r)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return r, fmt.Errorf("run %s: %w", id, ErrNoRun)
	}
	return r, err
}

func (l *RunLog) last(ctx context.Context, subject string, v any) error {
	s, err := l.JS.Stream(ctx, l.Topology.RunsStream)
	if err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return jetstream.ErrMsgNotFound
		}
		return streamError(l.Topology.RunsStream, err)
	}
	m, err := s.GetLastMsgForSubject(ctx, subject)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(m.Data, v); err != nil {
		return fmt.Errorf("%s: %w", subject, err)
	}
	return nil
}

// Applied is the record of a line applied: what it cost.
type Applied struct {
	Units int    `json:"u"`           // requests spent on it as a single PUT; 0 in a bulk job
	Job   string `json:"j,omitempty"` // the bulk job that applied it; "" for a single PUT
}

// RecordApplied stores that the message with headers h, of a run, was applied: once
// JetStream confirmed it, the message may be acknowledged. A message of no run records
// nothing and costs no round trip. A line recorded again replaces its record.
func (l *RunLog) RecordApplied(ctx context.Context, h nats.Header, a Applied) error {
	id, line := h.Get(HeaderRunID), h.Get(HeaderRunLine)
	if id == "" || line == "" || CheckRunID(id) != nil {
		return nil
	}
	if _, err := strconv.ParseUint(line, 10, 64); err != nil {
		return nil
	}
	data, _ := json.Marshal(a)
	if _, err := l.JS.Publish(ctx, l.subject(id, "a", line), data); err != nil {
		if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders) {
			return fmt.Errorf("run %s line %s: record applied: stream %s: %w", id, line, l.Topology.RunsStream, ErrNoRunsStream)
		}
		return fmt.Errorf("run %s line %s: record applied: %w", id, line, err)
	}
	return nil
}

// RunStatus is what is known of a run at Time.
type RunStatus struct {
	Run
	Time    time.Time `json:"time"`
	Applied int64     `json:"applied"` // lines Kustomer applied, each counted once
	// DeadLettered counts the run's dead letters still in the dead-letter stream, by class
	// (a dead letter replayed is pending again).
	DeadLettered map[DeadLetterClass]int64 `json:"deadLettered"`
	Dead         int64                     `json:"dead"`    // their total
	Pending      int64                     `json:"pending"` // Lines - Applied - Dead: waiting, in progress or in bulk jobs
	InBulk       int64                     `json:"inBulkJobs"`
	BulkApplied  int64                     `json:"bulkApplied"` // lines applied in bulk jobs
	BulkJobs     int64                     `json:"bulkJobs"`    // distinct bulk jobs that applied them
	// Units is the requests spent on the run so far as far as records say: single PUTs
	// (each applied line's and each dead letter's attempts) plus one submit per bulk job.
	// The bulk jobs' reads are not counted per run.
	Units      int64     `json:"units"`
	FirstApply time.Time `json:"firstApplied,omitzero"`
	LastApply  time.Time `json:"lastApplied,omitzero"`
	RecentRate float64   `json:"ratePerSecond"` // lines settled per second over the last minute
	State      string    `json:"state"`         // publishing, running, done or failed (done with dead letters)
	Duration   float64   `json:"durationSeconds,omitempty"`
	BulkShare  float64   `json:"bulkShare"` // BulkApplied / Applied
}

// Run states.
const (
	RunPublishing = "publishing" // enqueue has not finished publishing it
	RunRunning    = "running"    // some lines are pending
	RunDone       = "done"       // every line applied
	RunFailed     = "dead-lettered"
)

// Settled is how many lines are applied or dead-lettered.
func (s RunStatus) Settled() int64 { return s.Applied + s.Dead }

// Finished reports whether nothing of the run is pending.
func (s RunStatus) Finished() bool { return s.State == RunDone || s.State == RunFailed }

// RunReader reads a run's status; reading again reads only the records added since (and all
// the run's dead letters again when any was removed). It is for one goroutine at a time.
type RunReader struct {
	Log *RunLog
	ID  string

	lastSeq uint64 // last sequence of the runs stream read
	// What the applied records read so far add up to, each line counted once (its first
	// record): a bit a line, about 125 KB for 1,000,000 lines.
	seen                 []uint64
	applied, units, bulk int64
	jobs                 map[string]struct{}
	first, last          time.Time
	recent               []time.Time // when the records of the last minute were stored, oldest first
	dead                 deadCounter
	// summed, when not nil, stands for every applied record up to its Seq: read from the
	// run's summary instead of the records, on a first Read that found none added since.
	summed *appliedSum
}

// appliedSum is what a run's applied records add up to, up to the runs stream's sequence
// Seq: stored as the run's summary once the run ended, so that reading a finished run does
// not read its records again.
type appliedSum struct {
	Seq     uint64    `json:"seq"`
	Applied int64     `json:"applied"`
	Units   int64     `json:"units"`
	Bulk    int64     `json:"bulk"`
	Jobs    int64     `json:"jobs"`
	First   time.Time `json:"first,omitzero"`
	Last    time.Time `json:"last,omitzero"`
}

// see counts the applied record of line, stored at t, unless its line was counted already.
func (r *RunReader) see(line uint64, a Applied, t time.Time) {
	w, bit := line/64, uint64(1)<<(line%64)
	if w >= uint64(len(r.seen)) {
		r.seen = append(r.seen, make([]uint64, int(w)+1-len(r.seen))...)
	}
	if r.seen[w]&bit != 0 {
		return
	}
	r.seen[w] |= bit
	r.applied++
	r.units += int64(a.Units)
	if a.Job != "" {
		r.bulk++
		r.jobs[a.Job] = struct{}{}
	}
	if r.first.IsZero() || t.Before(r.first) {
		r.first = t
	}
	if t.After(r.last) {
		r.last = t
	}
	r.recent = append(r.recent, t)
}

// Read returns the run's status now.
func (r *RunReader) Read(ctx context.Context) (RunStatus, error) {
	run, err := r.Log.Get(ctx, r.ID)
	if err != nil {
		return RunStatus{}, err
	}
	st := RunStatus{Run: run, Time: time.Now()}
	if err := r.useSummary(ctx); err != nil {
		return st, err
	}
	if r.summed == nil {
		if err := r.readApplied(ctx); err != nil {
			return st, err
		}
	}
	dead, units, err := r.dead.count(ctx, r.Log.JS, r.Log.Topology, r.ID)
	if err != nil {
		return st, err
	}
	st.DeadLettered = dead
	for _, n := range dead {
		st.Dead += n
	}
	st.Units = units
	cutoff := st.Time.Add(-time.Minute)
	r.recent = slices.DeleteFunc(r.recent, func(t time.Time) bool { return !t.After(cutoff) })
	recent := int64(len(r.recent))
	st.Applied, st.BulkApplied, st.FirstApply, st.LastApply = r.applied, r.bulk, r.first, r.last
	st.Units += r.units
	st.BulkJobs = int64(len(r.jobs))
	if sum := r.summed; sum != nil {
		st.Applied, st.BulkApplied, st.FirstApply, st.LastApply, st.BulkJobs = sum.Applied, sum.Bulk, sum.First, sum.Last, sum.Jobs
		st.Units += sum.Units
		recent = 0
	}
	st.Units += st.BulkJobs
	if st.Applied > 0 {
		st.BulkShare = float64(st.BulkApplied) / float64(st.Applied)
	}
	st.RecentRate = float64(recent) / time.Minute.Seconds()
	st.Pending = max(st.Lines-st.Applied-st.Dead, 0)
	if st.Pending > 0 {
		if st.InBulk, err = r.inBulk(ctx); err != nil {
			return st, err
		}
		st.InBulk = min(st.InBulk, st.Pending)
	}
	switch {
	case run.Published.IsZero():
		st.State = RunPublishing
	case st.Pending > 0:
		st.State = RunRunning
	case st.Dead > 0:
		st.State = RunFailed
	default:
		st.State = RunDone
	}
	if st.Finished() {
		end := latest(st.LastApply, r.dead.last, run.Published)
		st.Duration = end.Sub(run.Started).Seconds()
		if r.summed == nil && r.lastSeq > 0 {
			// Best effort: a reader that may not write reads the records next time.
			sum := appliedSum{Seq: r.lastSeq, Applied: r.applied, Units: r.units, Bulk: r.bulk, Jobs: int64(len(r.jobs)), First: r.first, Last: r.last}
			if data, err := json.Marshal(sum); err == nil {
				_, _ = r.Log.JS.Publish(ctx, r.Log.subject(r.ID, "summary"), data)
			}
		}
	}
	return st, nil
}

// useSummary decides whether the run's applied records are read or stand summed: a first
// Read takes the run's summary when no applied record was stored after it; any Read drops
// the summary (and reads every record) once one was.
func (r *RunReader) useSummary(ctx context.Context) error {
	if r.summed == nil && r.lastSeq == 0 && r.jobs == nil {
		var sum appliedSum
		err := r.Log.last(ctx, r.Log.subject(r.ID, "summary"), &sum)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		r.summed = &sum
	}
	if r.summed == nil {
		return nil
	}
	n, err := r.appliedSince(ctx, r.summed.Seq+1)
	if err != nil {
		return err
	}
	if n > 0 {
		r.summed = nil
	}
	return nil
}

// appliedSince counts the run's applied records stored at or after sequence seq, without
// reading them.
func (r *RunReader) appliedSince(ctx context.Context, seq uint64) (uint64, error) {
	stream := r.Log.Topology.RunsStream
	cons, err := r.Log.JS.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{
		FilterSubjects:    []string{r.Log.subject(r.ID, "a", "*")},
		DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:       seq,
		InactiveThreshold: 30 * time.Second,
	})
	if err != nil {
		return 0, fmt.Errorf("stream %s: reading: %w", stream, err)
	}
	n := cons.CachedInfo().NumPending
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	_ = r.Log.JS.DeleteConsumer(dctx, stream, cons.CachedInfo().Name)
	cancel()
	return n, nil
}

func latest(a time.Time, bs ...time.Time) time.Time {
	for _, b := range bs {
		if b.After(a) {
			a = b
		}
	}
	return a
}

// inBulk counts the run's lines in bulk jobs not settled yet, from the bulk bucket's records.
func (r *RunReader) inBulk(ctx context.Context) (int64, error) {
	jobs, err := BindBulk(ctx, r.Log.JS, r.Log.Topology, false)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	recs, err := jobs.List(ctx)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, rec := range recs {
		if !rec.Settled.IsZero() {
			continue
		}
		for _, it := range rec.Items {
			if it.Outcome != "" {
				continue
			}
			if it.Run == r.ID {
				n++
			}
			for _, m := range it.Members {
				if m.Run == r.ID {
					n++
				}
			}
		}
	}
	return n, nil
}

// readApplied reads the run's applied records stored since the last read.
func (r *RunReader) readApplied(ctx context.Context) error {
	if r.jobs == nil {
		r.jobs = make(map[string]struct{})
	}
	s, err := r.Log.JS.Stream(ctx, r.Log.Topology.RunsStream)
	if err != nil {
		return streamError(r.Log.Topology.RunsStream, err)
	}
	last := s.CachedInfo().State.LastSeq
	if last <= r.lastSeq {
		return nil
	}
	prefix := r.Log.subject(r.ID, "a") + "."
	err = scan(ctx, r.Log.JS, r.Log.Topology.RunsStream, scanFrom{seq: r.lastSeq + 1, until: last, filter: prefix + "*"},
		func(m jetstream.Msg, seq uint64, stored time.Time) error {
			line, err := strconv.ParseUint(m.Subject()[len(prefix):], 10, 64)
			if err != nil {
				return nil
			}
			var a Applied
			_ = json.Unmarshal(m.Data(), &a)
			r.see(line, a, stored)
			return nil
		})
	if err != nil {
		return err
	}
	r.lastSeq = last
	return nil
}

// deadCounter counts one run's dead letters by class, reading only those added since the
// last count unless any was removed (replayed, purged).
type deadCounter struct {
	counts  map[DeadLetterClass]int64
	units   int64
	last    time.Time
	lastSeq uint64
	removed uint64
}

func (c *deadCounter) count(ctx context.Context, js jetstream.JetStream, t Topology, id string) (map[DeadLetterClass]int64, int64, error) {
	s, err := js.Stream(ctx, t.DLQStream)
	if err != nil {
		return nil, 0, streamError(t.DLQStream, err)
	}
	state := s.CachedInfo().State
	removed := state.LastSeq - min(state.Msgs, state.LastSeq)
	if c.counts == nil || removed != c.removed || state.LastSeq < c.lastSeq {
		c.counts, c.lastSeq, c.units, c.last = make(map[DeadLetterClass]int64), 0, 0, time.Time{}
	}
	c.removed = removed
	if state.LastSeq > c.lastSeq && state.Msgs > 0 {
		err := scan(ctx, js, t.DLQStream, scanFrom{seq: c.lastSeq + 1, until: state.LastSeq, headersOnly: true},
			func(m jetstream.Msg, seq uint64, stored time.Time) error {
				h := m.Headers()
				if h.Get(HeaderRunID) != id {
					return nil
				}
				c.counts[DeadLetterClass(h.Get(HeaderClass))]++
				n, _ := strconv.Atoi(h.Get(HeaderAttempts))
				c.units += int64(n)
				if stored.After(c.last) {
					c.last = stored
				}
				return nil
			})
		if err != nil {
			return nil, 0, err
		}
		c.lastSeq = state.LastSeq
	}
	return maps.Clone(c.counts), c.units, nil
}

// Runs returns the records of the runs the stream holds, newest first.
func (l *RunLog) Runs(ctx context.Context) ([]Run, error) {
	s, err := l.JS.Stream(ctx, l.Topology.RunsStream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, streamError(l.Topology.RunsStream, err)
	}
	state := s.CachedInfo().State
	var runs []Run
	if state.Msgs == 0 {
		return nil, nil
	}
	err = scan(ctx, l.JS, l.Topology.RunsStream, scanFrom{seq: state.FirstSeq, until: state.LastSeq, filter: l.Topology.RunsSubject + ".*.run"},
		func(m jetstream.Msg, _ uint64, _ time.Time) error {
			var r Run
			if json.Unmarshal(m.Data(), &r) == nil {
				runs = append(runs, r)
			}
			return nil
		})
	slices.SortFunc(runs, func(a, b Run) int { return b.Started.Compare(a.Started) })
	return runs, err
}
