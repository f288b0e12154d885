package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kustomer-worker/kustomer-worker/queue"
)

// statusCmd shows the backlog and the dead letters.
type statusCmd struct {
	natsFlags
	observedFlags
	dialFlags
	streamWaitFlags

	Watch     bool          `name:"watch" short:"w" help:"Refresh until interrupted, with throughput and the time until the backlog is empty, per lane."`
	Interval  time.Duration `name:"interval" default:"2s" help:"With --watch: time between refreshes."`
	JSON      bool          `name:"json" help:"Print JSON: one object, or one a line per refresh with --watch."`
	RunID     string        `name:"run" help:"Show one run (a backfill enqueued under this run id) instead of the lanes: applied, dead-lettered by class, pending, units, rate and time left; with --watch, until it ends (exit status 0 all applied, 3 some dead-lettered)."`
	Progress  string        `name:"progress" enum:"auto,bar,plain" default:"auto" help:"With --run --watch: a bar (auto on a terminal) or a line every interval."`
	PerMinute int           `name:"rate-per-minute" env:"KUSTOMER_RATE_PER_MINUTE" default:"${default_rate_per_minute}" help:"With --run: the org budget the worker runs at, for the time left before the run has a rate of its own."`
}

func (c *statusCmd) Help() string {
	return `Backlog is every message in the work stream: waiting (not yet delivered to a worker) plus
in progress (delivered, not yet acknowledged). Redelivered counts messages in progress that were
delivered more than once. Each lane (live: updates as they happen, served first; backfill: bulk
loads, served with the budget live updates leave) shows its own backlog and the age of its
oldest message. Dead letters are counted by class: invalid (failed validation), rejected
(Kustomer answered a non-retryable 4xx), exhausted (retryable failures until the attempt limit),
stranded (delivered max-deliver times without an outcome, found in the stream by a worker).
A lane's "stranded" count is such messages still in the stream: a running worker dead-letters them.

With --watch: throughput in all, per lane, and when the backlog will be empty. The live lane's
throughput counts its consumer's acknowledgements (a redelivery counts once more); the
backfill's is the rest, which is what the budget leaves it, so its time left is the ETA of the
backfill while live traffic goes on as it does.

With --run ID: one run (a backfill enqueue published) instead of the lanes: applied,
dead-lettered by class, pending, in bulk jobs, units, rate and time left; with --watch until it
ends, exit status 0 when every line was applied, 3 when some were dead-lettered. See
docs/RUNS.md.

Examples:
  kustomer-worker status
  kustomer-worker status --watch
  kustomer-worker status --run night-1 --watch
  kustomer-worker status --run night-1 --json | jq .pending
  kustomer-worker status --json | jq .backlog
  kustomer-worker status --nats-url nats://nats.internal:4222 --watch --interval 10s`
}

func (c *statusCmd) Run(ctx context.Context, e *env, g *globals) error {
	top, err := c.settings()
	if err != nil {
		return err
	}
	if c.RunID != "" {
		if err := queue.CheckRunID(c.RunID); err != nil {
			return usagef("run: %v", err)
		}
	}
	s, err := dial(ctx, e, g, &c.natsFlags, c.dialFlags, "kustomer-worker status")
	if err != nil {
		return err
	}
	defer s.close()
	if err := c.waitStream(ctx, e.stderr, s.js, top.Stream); err != nil {
		return err
	}
	if c.RunID != "" {
		return c.showRun(ctx, e, s.js, top)
	}
	r := &statusReader{js: s.js, top: top}
	st, err := r.status(ctx)
	if err != nil {
		return err
	}
	bulk, err := r.bulk(ctx)
	if err != nil {
		return err
	}
	v := c.view(e)
	if !c.Watch {
		return v.show(top, st, nil, bulk)
	}
	return c.refresh(ctx, r, v, st, bulk)
}

// showRun shows one run: one reading, or with --watch every --interval until it ends.
func (c *statusCmd) showRun(ctx context.Context, e *env, js jetstream.JetStream, top queue.Topology) error {
	v := &runView{w: e.stdout, mode: "text", perMinute: c.PerMinute, lineEvery: c.Interval}
	if c.JSON {
		v.mode = "json"
	}
	if !c.Watch {
		rctx, cancel := context.WithTimeout(ctx, statusReadTimeout)
		defer cancel()
		st, err := (&queue.RunReader{Log: &queue.RunLog{JS: js, Topology: top}, ID: c.RunID}).Read(rctx)
		if err != nil {
			return err
		}
		if err := v.show(st); err != nil {
			return err
		}
		if st.Finished() {
			return runResult(st)
		}
		return nil
	}
	v.mode = runMode(e.stdout, c.JSON, c.Progress)
	st, err := follow(ctx, js, top, c.RunID, v, c.Interval)
	if err != nil {
		if ctx.Err() != nil {
			return nil // interrupted: the run goes on
		}
		return err
	}
	return v.finish(st)
}

// settings checks the flags and gives the topology whose status is read.
func (c *statusCmd) settings() (queue.Topology, error) {
	if c.Interval < 100*time.Millisecond {
		return queue.Topology{}, usagef("interval: %s is under 100ms", c.Interval)
	}
	top := c.topology()
	if err := top.Validate(); err != nil {
		return queue.Topology{}, settingError(err)
	}
	return top, nil
}

// statusReader reads the status of a topology and its bulk jobs, each read within
// statusReadTimeout.
type statusReader struct {
	js      jetstream.JetStream
	top     queue.Topology
	counter queue.ClassCounter // a later read counts only the dead letters added since
	jobs    bulkJobs           // bulk mode: bulk.go
}

// statusReadTimeout bounds one read of the status, or of the bulk jobs.
const statusReadTimeout = 30 * time.Second

// status reads the streams, the consumers and the dead letters.
func (r *statusReader) status(ctx context.Context) (queue.Status, error) {
	rctx, cancel := context.WithTimeout(ctx, statusReadTimeout)
	defer cancel()
	return queue.ReadStatus(rctx, r.js, r.top, &r.counter)
}

// bulk reads the bulk jobs in flight.
func (r *statusReader) bulk(ctx context.Context) ([]queue.BulkRecord, error) {
	bctx, cancel := context.WithTimeout(ctx, statusReadTimeout)
	defer cancel()
	return r.jobs.read(bctx, r.js, r.top)
}

// view is how the flags ask status to write what it reads.
func (c *statusCmd) view(e *env) *statusView {
	return &statusView{w: e.stdout, json: c.JSON, oneLine: c.Watch && !c.JSON && !isTerminal(e.stdout)}
}

// statusView writes each reading of the status: as JSON; as one line, for --watch into a
// file or a pipe; or else as lines for reading, each refresh drawn over the last.
type statusView struct {
	w       io.Writer
	json    bool // --json: one JSON object a reading
	oneLine bool // one line a reading
	drawn   int  // lines drawn by the last reading, which the next draws over
}

// show writes one reading; tp is the throughput, nil without --watch.
func (v *statusView) show(top queue.Topology, st queue.Status, tp *throughput, bulk []queue.BulkRecord) error {
	switch {
	case v.json:
		doc := statusJSON(top, st, tp)
		doc.BulkJobs = bulkDocs(bulk)
		return writeJSON(v.w, doc)
	case v.oneLine:
		line := statusLine(st, tp)
		if len(bulk) > 0 {
			line += fmt.Sprintf(" bulk_jobs=%d", len(bulk))
		}
		_, err := fmt.Fprintln(v.w, line)
		return err
	}
	lines := append(statusLines(top, st, tp), bulkLines(bulk, st.Time)...)
	var b strings.Builder
	if v.drawn > 0 {
		fmt.Fprintf(&b, "\x1b[%dA\x1b[J", v.drawn) // back to the first line drawn, clear below
	}
	for _, l := range lines {
		b.WriteString(l + "\n")
	}
	v.drawn = len(lines)
	_, err := io.WriteString(v.w, b.String())
	return err
}

// refresh shows st and bulk with the throughput, then reads and shows them again every
// --interval until ctx ends.
func (c *statusCmd) refresh(ctx context.Context, r *statusReader, v *statusView, st queue.Status, bulk []queue.BulkRecord) error {
	var pace paceMeter
	t := time.NewTicker(c.Interval)
	defer t.Stop()
	for {
		tp := pace.measure(st)
		if err := v.show(r.top, st, &tp, bulk); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		next, err := r.status(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		st = next
		if b, err := r.bulk(ctx); err == nil { // else the jobs as last read: they are a detail
			bulk = b
		}
	}
}

// paceMeter measures the throughput of --watch, in all and on the live lane.
type paceMeter struct{ all, live rateMeter }

// measure adds the reading st and gives the throughput over the last readings.
func (m *paceMeter) measure(st queue.Status) throughput {
	m.all.add(st.Time, st.Processed)
	m.live.add(st.Time, st.Live.Settled())
	tp := m.all.throughput(st.Backlog)
	tp.Live = m.live.throughput(st.Live.Backlog).lane()
	tp.Backfill = backfillThroughput(tp, st.Backfill.Backlog)
	return tp
}

// throughput is what --watch adds to a status.
type throughput struct {
	PerSecond float64       // messages leaving the work stream per second; 0 before two readings
	ETA       time.Duration // until the backlog is empty at that pace; 0 when unknown or empty
	Known     bool          // at least two readings

	Live, Backfill laneThroughput // per lane; their Live and Backfill are unset
}

// laneThroughput is a lane's part of the throughput.
type laneThroughput struct {
	PerSecond float64       // the lane's messages leaving the stream per second
	ETA       time.Duration // until the lane's backlog is empty at that pace; 0 when unknown or empty
	Known     bool          // at least two readings
}

// backfillThroughput is what the live lane leaves of the whole throughput: the backfill's
// pace, and its ETA at that pace.
func backfillThroughput(all throughput, backlog uint64) laneThroughput {
	if !all.Known || !all.Live.Known {
		return laneThroughput{}
	}
	b := laneThroughput{Known: true, PerSecond: max(all.PerSecond-all.Live.PerSecond, 0)}
	if b.PerSecond > 0 && backlog > 0 {
		b.ETA = time.Duration(float64(backlog) / b.PerSecond * float64(time.Second)).Round(time.Second)
	}
	return b
}

// rateMeter measures the pace at which messages leave the work stream over the last readings.
type rateMeter struct {
	samples []sample
}

type sample struct {
	at        time.Time
	processed uint64
}

// rateSamples is how many readings the pace is measured over.
const rateSamples = 6

func (r *rateMeter) add(at time.Time, processed uint64) {
	if n := len(r.samples); n > 0 && processed < r.samples[n-1].processed {
		r.samples = r.samples[:0] // the stream was recreated
	}
	r.samples = append(r.samples, sample{at, processed})
	if len(r.samples) > rateSamples {
		r.samples = r.samples[1:]
	}
}

func (r *rateMeter) throughput(backlog uint64) throughput {
	if len(r.samples) < 2 {
		return throughput{}
	}
	first, last := r.samples[0], r.samples[len(r.samples)-1]
	secs := last.at.Sub(first.at).Seconds()
	if secs <= 0 {
		return throughput{}
	}
	tp := throughput{Known: true, PerSecond: float64(last.processed-first.processed) / secs}
	if tp.PerSecond > 0 && backlog > 0 {
		tp.ETA = time.Duration(float64(backlog) / tp.PerSecond * float64(time.Second)).Round(time.Second)
	}
	return tp
}

// lane is the throughput as a lane's part.
func (tp throughput) lane() laneThroughput {
	return laneThroughput{PerSecond: tp.PerSecond, ETA: tp.ETA, Known: tp.Known}
}

// statusLines is the human form of a status.
func statusLines(top queue.Topology, st queue.Status, tp *throughput) []string {
	lines := []string{
		fmt.Sprintf("work stream %s", top.Stream),
		fmt.Sprintf("  backlog       %8d  (waiting %d, in progress %d, redelivered %d)", st.Backlog, st.Undelivered, st.AckPending, st.Redelivered),
		fmt.Sprintf("  processed     %8d  (applied or dead-lettered since the stream was created)", st.Processed),
	}
	for _, l := range queue.Lanes() {
		lines = append(lines, laneLine(l, st.Lane(l), st.Time))
	}
	lines = append(lines, replicaLines(st)...)
	lines = append(lines, bulkModeLines(top, st)...)
	lines = append(lines, strings.TrimRight(fmt.Sprintf("dead letters  %10d  %s", st.DeadLetters, classSummary(st.ByClass)), " "))
	if tp != nil {
		lines = append(lines, "throughput    "+throughputText(st, *tp))
		if tp.Known && tp.Live.Known {
			lines = append(lines,
				"  live        "+laneThroughputText(st.Live, tp.Live, ""),
				"  backfill    "+laneThroughputText(st.Backfill, tp.Backfill, " (the budget live updates leave)"))
		}
	}
	return lines
}

// replicaLines say which replica is active and which wait as standbys.
func replicaLines(st queue.Status) []string {
	if !st.ConsumerFound {
		return nil
	}
	var lines []string
	switch {
	case !st.Pinned:
		lines = append(lines, "replicas      shared consumer (no priority group): every replica takes messages")
	case st.PinID == "":
		lines = append(lines, "replicas      no replica is pinned (none running, or the next message pins one)")
	default:
		name := "unknown replica (pin " + st.PinID + ")"
		for _, r := range st.Replicas {
			if r.Holds(st.PinID) {
				name = r.Host + " pid " + strconv.Itoa(r.PID)
			}
		}
		lines = append(lines, fmt.Sprintf("replicas      active: %s since %s", name, st.PinnedAt.Local().Format(time.RFC3339)))
	}
	for _, r := range st.Replicas {
		role := r.Role
		if st.Pinned && r.Role == queue.RoleActive && !r.Holds(st.PinID) {
			role = "active?" // it believes so; the server pinned another (it hears at its next pull)
		}
		bulk := ""
		if r.BulkLane != "" {
			bulk = ", bulk on the " + r.BulkLane + " lane"
		}
		lines = append(lines, fmt.Sprintf("  %-8s %s pid %d, %s%s, since %s", role, r.Host, r.PID, r.Version, bulk, r.Since.Local().Format(time.RFC3339)))
	}
	if st.RolesRead != nil {
		lines = append(lines, "  replicas' roles not readable: "+st.RolesRead.Error())
	}
	return lines
}

// bulkModeLines say which lane the replicas send in bulk jobs, and warn when a backlog waits on
// the live lane while bulk mode takes the backfill lane only: those updates go as single PUTs.
func bulkModeLines(top queue.Topology, st queue.Status) []string {
	lanes := map[string]bool{}
	for _, r := range st.Replicas {
		if r.BulkLane != "" {
			lanes[r.BulkLane] = true
		}
	}
	if len(lanes) == 0 {
		return nil
	}
	var lines []string
	for _, l := range queue.Lanes() {
		if lanes[string(l)] {
			lines = append(lines, fmt.Sprintf("bulk mode     on the %s lane: its partial updates go in bulk jobs", l))
		}
	}
	if lanes[string(queue.LaneBackfill)] && !lanes[string(queue.LaneLive)] && st.Live.Backlog > liveBacklogBesideBulk {
		lines = append(lines, fmt.Sprintf("  note: %d updates wait on the live lane, which goes as single PUTs (a unit each); publish backfills on %s", st.Live.Backlog, top.BackfillSubject))
	}
	return lines
}

// laneLine is a lane's backlog and oldest message, or why they are unknown.
func laneLine(l queue.Lane, ls queue.LaneStatus, now time.Time) string {
	name := fmt.Sprintf("  %-13s", string(l)+" lane")
	if !ls.ConsumerFound {
		return fmt.Sprintf("%s consumer %s not found: no worker has run yet", name, ls.Consumer)
	}
	s := fmt.Sprintf("%s %8d  (waiting %d, in progress %d)", name, ls.Backlog, ls.Undelivered, ls.AckPending)
	if !ls.Oldest.IsZero() {
		s += fmt.Sprintf(", oldest %s old", age(now, ls.Oldest))
	}
	if ls.Stranded > 0 {
		s += fmt.Sprintf(", stranded %d (reached max-deliver unapplied; a running worker dead-letters them)", ls.Stranded)
	}
	return s
}

// age is how long before now t was, rounded for reading.
func age(now, t time.Time) time.Duration {
	d := max(now.Sub(t), 0)
	if d < time.Minute {
		return d.Round(100 * time.Millisecond)
	}
	return d.Round(time.Second)
}

func laneThroughputText(ls queue.LaneStatus, tp laneThroughput, note string) string {
	switch {
	case ls.Backlog == 0:
		return fmt.Sprintf("%.1f/s%s, lane empty", tp.PerSecond, note)
	case tp.PerSecond == 0:
		return fmt.Sprintf("0/s%s: nothing is leaving the lane", note)
	}
	return fmt.Sprintf("%.1f/s%s, lane empty in about %s", tp.PerSecond, note, tp.ETA)
}

// statusLine is a status on one line, for --watch into a file or a pipe.
func statusLine(st queue.Status, tp *throughput) string {
	s := fmt.Sprintf("%s backlog=%d waiting=%d in_progress=%d redelivered=%d processed=%d dead_letters=%d",
		st.Time.UTC().Format(time.RFC3339), st.Backlog, st.Undelivered, st.AckPending, st.Redelivered, st.Processed, st.DeadLetters)
	for _, c := range classes(st.ByClass) {
		s += fmt.Sprintf(" %s=%d", c, st.ByClass[c])
	}
	if tp != nil && tp.Known {
		s += fmt.Sprintf(" per_second=%.1f", tp.PerSecond)
		if tp.ETA > 0 {
			s += " eta=" + tp.ETA.String()
		}
	}
	for _, l := range queue.Lanes() {
		ls := st.Lane(l)
		s += fmt.Sprintf(" %s_backlog=%d", l, ls.Backlog)
		if !ls.Oldest.IsZero() {
			s += fmt.Sprintf(" %s_oldest=%s", l, age(st.Time, ls.Oldest))
		}
		if tp != nil {
			ltp := tp.Live
			if l == queue.LaneBackfill {
				ltp = tp.Backfill
			}
			if ltp.Known {
				s += fmt.Sprintf(" %s_per_second=%.1f", l, ltp.PerSecond)
				if ltp.ETA > 0 {
					s += fmt.Sprintf(" %s_eta=%s", l, ltp.ETA)
				}
			}
		}
	}
	return s
}

func throughputText(st queue.Status, tp throughput) string {
	switch {
	case !tp.Known:
		return "measuring…"
	case st.Backlog == 0:
		return fmt.Sprintf("%.1f/s, backlog empty", tp.PerSecond)
	case tp.PerSecond == 0:
		return "0/s: nothing is leaving the backlog (is a worker running?)"
	}
	return fmt.Sprintf("%.1f/s, backlog empty in about %s", tp.PerSecond, tp.ETA)
}

// classSummary reads "(invalid 2, rejected 9, exhausted 1)", the usual classes first.
func classSummary(by map[queue.DeadLetterClass]int) string {
	if len(by) == 0 {
		return ""
	}
	parts := make([]string, 0, len(by))
	for _, c := range classes(by) {
		name := string(c)
		if name == "" {
			name = "unclassified"
		}
		parts = append(parts, fmt.Sprintf("%s %d", name, by[c]))
	}
	return "(" + strings.Join(parts, ", ") + ")"
}

// classes orders the classes of by: invalid, rejected, exhausted, stranded, then any other by name.
func classes(by map[queue.DeadLetterClass]int) []queue.DeadLetterClass {
	rank := map[queue.DeadLetterClass]int{queue.ClassInvalid: 0, queue.ClassRejected: 1, queue.ClassExhausted: 2, queue.ClassStranded: 3}
	out := make([]queue.DeadLetterClass, 0, len(by))
	for c := range by {
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b queue.DeadLetterClass) int {
		ra, oka := rank[a]
		rb, okb := rank[b]
		if !oka {
			ra = 3
		}
		if !okb {
			rb = 3
		}
		return cmp.Or(cmp.Compare(ra, rb), cmp.Compare(a, b))
	})
	return out
}

// statusDoc is the JSON form of a status.
type statusDoc struct {
	Time        time.Time           `json:"time"`
	Stream      string              `json:"stream"`
	Backlog     uint64              `json:"backlog"`
	Waiting     uint64              `json:"waiting"`
	InProgress  int                 `json:"in_progress"`
	Redelivered int                 `json:"redelivered"`
	Processed   uint64              `json:"processed"`
	Consumer    bool                `json:"consumer_found"`
	DeadLetters uint64              `json:"dead_letters"`
	ByClass     map[string]int      `json:"dead_letters_by_class"`
	Active      string              `json:"active,omitempty"` // the server's pin: "host pid N", or the pin id of an unlisted replica
	Shared      bool                `json:"shared"`           // the consumer has no priority group
	Replicas    []queue.ReplicaRole `json:"replicas"`
	PerSecond   *float64            `json:"per_second,omitempty"`
	ETASeconds  *float64            `json:"eta_seconds,omitempty"`
	Lanes       map[string]laneDoc  `json:"lanes"`
	BulkJobs    []bulkJobDoc        `json:"bulk_jobs,omitempty"` // bulk mode: the jobs in flight
}

// laneDoc is the JSON form of a lane's status.
type laneDoc struct {
	Subject          string   `json:"subject"`
	Consumer         string   `json:"consumer"`
	ConsumerFound    bool     `json:"consumer_found"`
	Backlog          uint64   `json:"backlog"`
	Waiting          uint64   `json:"waiting"`
	InProgress       int      `json:"in_progress"`
	Redelivered      int      `json:"redelivered"`
	OldestAgeSeconds *float64 `json:"oldest_age_seconds,omitempty"` // absent when the lane is empty
	Stranded         int      `json:"stranded"`                     // kept by the stream, never to be delivered again: a running worker dead-letters them
	PerSecond        *float64 `json:"per_second,omitempty"`
	ETASeconds       *float64 `json:"eta_seconds,omitempty"`
}

func laneJSON(top queue.Topology, l queue.Lane, ls queue.LaneStatus, now time.Time, tp *laneThroughput) laneDoc {
	d := laneDoc{
		Subject: top.LaneSubject(l), Consumer: ls.Consumer, ConsumerFound: ls.ConsumerFound, Backlog: ls.Backlog,
		Waiting: ls.Undelivered, InProgress: ls.AckPending, Redelivered: ls.Redelivered, Stranded: ls.Stranded,
	}
	if !ls.Oldest.IsZero() {
		a := max(now.Sub(ls.Oldest), 0).Seconds()
		d.OldestAgeSeconds = &a
	}
	if tp != nil && tp.Known {
		ps := tp.PerSecond
		d.PerSecond = &ps
		if tp.ETA > 0 || ls.Backlog == 0 {
			eta := tp.ETA.Seconds()
			d.ETASeconds = &eta
		}
	}
	return d
}

// activeName names the replica the server pinned: host and pid as it published them, else
// the pin id; "" when none is pinned.
func activeName(st queue.Status) string {
	if st.PinID == "" {
		return ""
	}
	for _, r := range st.Replicas {
		if r.Holds(st.PinID) {
			return r.Host + " pid " + strconv.Itoa(r.PID)
		}
	}
	return "pin " + st.PinID
}

func statusJSON(top queue.Topology, st queue.Status, tp *throughput) statusDoc {
	d := statusDoc{
		Time: st.Time.UTC(), Stream: top.Stream, Backlog: st.Backlog, Waiting: st.Undelivered,
		InProgress: st.AckPending, Redelivered: st.Redelivered, Processed: st.Processed,
		Consumer: st.ConsumerFound, DeadLetters: st.DeadLetters, ByClass: map[string]int{},
		Shared: st.ConsumerFound && !st.Pinned, Replicas: st.Replicas, Active: activeName(st), Lanes: map[string]laneDoc{},
	}
	if d.Replicas == nil {
		d.Replicas = []queue.ReplicaRole{}
	}
	for _, l := range queue.Lanes() {
		var ltp *laneThroughput
		if tp != nil {
			ltp = &tp.Live
			if l == queue.LaneBackfill {
				ltp = &tp.Backfill
			}
		}
		d.Lanes[string(l)] = laneJSON(top, l, st.Lane(l), st.Time, ltp)
	}
	for c, n := range st.ByClass {
		d.ByClass[string(c)] = n
	}
	if tp != nil && tp.Known {
		ps := tp.PerSecond
		d.PerSecond = &ps
		if tp.ETA > 0 || st.Backlog == 0 {
			eta := tp.ETA.Seconds()
			d.ETASeconds = &eta
		}
	}
	return d
}
