package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/worker"
	"github.com/kustomer-worker/kustomer-worker/worker/bulk"
	"github.com/kustomer-worker/kustomer-worker/worker/pacer"
)

// demoCmd runs the whole system in one process against a fake Kustomer.
type demoCmd struct {
	Updates       int           `name:"updates" default:"3000" help:"Updates in the generated backfill."`
	Invalid       float64       `name:"invalid" default:"0.02" help:"Share of updates that fail validation and are dead-lettered as invalid."`
	Rejected      float64       `name:"rejected" default:"0.005" help:"Share of updates for conversations the fake answers 404, dead-lettered as rejected."`
	FaultRate     float64       `name:"fault-rate" default:"0.05" help:"Share of requests the fake answers ${mock_fault_statuses}; the worker retries them."`
	Budget        int           `name:"budget" default:"1200" help:"The fake's org budget: requests per window."`
	Window        time.Duration `name:"window" default:"10s" help:"The fake's rate-limit window; the worker paces at budget per window."`
	Concurrency   int           `name:"concurrency" default:"16" help:"Requests in flight at once."`
	Latency       time.Duration `name:"latency" default:"20ms" help:"The fake's answer latency."`
	LatencyJitter time.Duration `name:"latency-jitter" default:"40ms" help:"Random extra latency up to this."`
	Seed          int64         `name:"seed" default:"1" help:"Seed of the generated backfill and of the fake's faults."`
	DataDir       string        `name:"data-dir" type:"path" help:"JetStream store of the demo's NATS server (default a temporary directory, removed afterwards)."`
	Timeout       time.Duration `name:"timeout" default:"5m" help:"Give up if the backfill is not done by then."`
	Progress      string        `name:"progress" enum:"auto,bar,plain,none" default:"auto" help:"Progress on stderr: auto, bar, plain or none."`
	Bulk          bool          `name:"bulk" help:"Bulk mode (see run --bulk): the backfill goes in bulk jobs, each taking bulk-duration at the fake; the summary shows the budget units spent (default false)."`
	BulkDuration  time.Duration `name:"bulk-duration" default:"2s" help:"With --bulk: how long the fake takes to run a bulk job."`
	LiveEvery     time.Duration `name:"live-every" default:"0s" help:"While the backfill runs, publish a live update this often (to the live lane, for conversations outside the backfill) and report how long each took from publish to the request at the fake; 0 publishes none."`
}

func (c *demoCmd) Help() string {
	return `Runs everything on this machine with nothing installed and no Kustomer account: an embedded
NATS server (on a free port, beside any running daemon), the fake Kustomer API with a small rate
budget, the worker pool, and a generated backfill with some invalid updates, some for deleted
conversations and random 5xx faults. It shows progress, then what happened, and removes
everything it created.

The backfill goes to the backfill lane. With --live-every, live updates arrive meanwhile on the
live lane, as from an event producer, and the summary shows their latency: a backfill in the
way costs them little, where one shared queue would make them wait for the whole backlog.

Examples:
  kustomer-worker demo
  kustomer-worker demo --updates 10000 --budget 3000 --window 10s
  kustomer-worker demo --fault-rate 0.2 --concurrency 4

  # Bulk mode: the same backfill in jobs of up to 100, a fraction of the budget:
  kustomer-worker demo --bulk --updates 5000 --budget 100 --window 6s

  # A backfill saturating a budget of 60 per 10s, one live update a second:
  kustomer-worker demo --updates 600 --budget 60 --window 10s --fault-rate 0 --live-every 1s`
}

// demoKey is the fake's API key: a test value, not a secret.
const demoKey = "demo-key"

// demoResult is what the summary reports.
type demoResult struct {
	updates, invalid, rejected int
	applied                    int
	byClass                    map[queue.DeadLetterClass]int
	deadLetters                uint64
	stats                      kustomertest.Stats
	elapsed                    time.Duration
	live                       []time.Duration // each live update's time from publish to its accepted request
}

// demoLive publishes live updates while the backfill runs and remembers when.
type demoLive struct {
	mu   sync.Mutex // guards sent
	sent []demoLiveSent
}

type demoLiveSent struct {
	id string
	at time.Time
}

// count is how many live updates were stored.
func (l *demoLive) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.sent)
}

// run publishes one live update every interval until ctx ends, each for a conversation of
// its own: one that no backfill update touches, since the order of a conversation's updates
// across lanes is the pool's to keep (docs/LANES.md).
func (l *demoLive) run(ctx context.Context, s *session, top queue.Topology, every time.Duration, seed int64) {
	rng := rand.New(rand.NewPCG(uint64(seed), 0x6c697665))
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		id := fmt.Sprintf("%08x%08x%08x", rng.Uint32(), rng.Uint32(), rng.Uint32())
		at := time.Now()
		if _, err := s.js.Publish(ctx, top.ConversationSubject(queue.LaneLive, id), []byte(`{"id":"`+id+`","body":{"status":"open"}}`)); err != nil {
			continue // ctx ended, or NATS refused it: it counts in nothing
		}
		l.mu.Lock()
		l.sent = append(l.sent, demoLiveSent{id, at})
		l.mu.Unlock()
	}
}

// latencies are the times from each live update's publish to the request the fake accepted.
func (l *demoLive) latencies(fake *kustomertest.Server) []time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []time.Duration
	for _, s := range l.sent {
		for _, r := range fake.RequestsFor(s.id) {
			if r.Status >= 200 && r.Status < 300 {
				out = append(out, r.Time.Sub(s.at))
				break
			}
		}
	}
	slices.Sort(out)
	return out
}

func (c *demoCmd) Run(ctx context.Context, e *env, g *globals) error {
	if err := c.validate(); err != nil {
		return err
	}
	log := demoLogger(e, g)
	fake, err := c.startFake()
	if err != nil {
		return err
	}
	defer fake.Close()
	dir, removeDir, err := c.dataDir()
	if err != nil {
		return err
	}
	defer removeDir()
	emb, err := startDemoNATS(dir, log)
	if err != nil {
		return err
	}
	defer emb.Shutdown() // last, after the connection closed
	s, err := connectDemo(ctx, emb, log)
	if err != nil {
		return err
	}
	defer closeQuietly(s.nc)
	return c.runWorker(ctx, e, s, fake, log)
}

// validate rejects, as bad usage, settings the demo cannot run with.
func (c *demoCmd) validate() error {
	switch {
	case c.Updates < 1:
		return usagef("updates: %d is below 1", c.Updates)
	case c.Invalid < 0 || c.Rejected < 0 || c.Invalid+c.Rejected > 1:
		return usagef("invalid, rejected: shares from 0 to 1, together at most 1")
	case c.FaultRate < 0 || c.FaultRate >= 1:
		return usagef("fault-rate: %v is not from 0 to below 1", c.FaultRate)
	case c.Budget < 1:
		return usagef("budget: %d is below 1", c.Budget)
	case c.Window <= 0:
		return usagef("window: %s is not positive", c.Window)
	case c.Concurrency < 1:
		return usagef("concurrency: %d is below 1", c.Concurrency)
	case c.LiveEvery < 0:
		return usagef("live-every: %s is negative", c.LiveEvery)
	}
	return nil
}

// demoLogger is the demo's log: none, since the progress and the summary tell what happens,
// unless --log-level debug asks for everything.
func demoLogger(e *env, g *globals) *slog.Logger {
	if g.LogLevel == "debug" {
		return g.logger(e.stderr)
	}
	return slog.New(slog.DiscardHandler)
}

// startFake starts the fake Kustomer with the demo's budget, faults and latency.
func (c *demoCmd) startFake() (*kustomertest.Server, error) {
	return kustomertest.Start("127.0.0.1:0", kustomertest.Config{
		APIKey: demoKey, Budget: c.Budget, Window: c.Window, FaultRate: c.FaultRate,
		Latency: c.Latency, LatencyJitter: c.LatencyJitter, RandSeed: c.Seed,
		DisableLog: c.LiveEvery == 0, DiscardBodies: true, // the log times the live updates
		BulkDuration: c.BulkDuration,
	})
}

// dataDir is where the demo's NATS server stores its streams: --data-dir, or else a
// temporary directory, which the returned remove deletes.
func (c *demoCmd) dataDir() (dir string, remove func(), err error) {
	if c.DataDir != "" {
		return c.DataDir, func() {}, nil
	}
	if dir, err = os.MkdirTemp("", "kustomer-worker-demo-*"); err != nil {
		return "", nil, err
	}
	return dir, func() { os.RemoveAll(dir) }, nil
}

// startDemoNATS starts the demo's embedded NATS server on a free port of the loopback,
// beside any running daemon, storing in dir.
func startDemoNATS(dir string, log *slog.Logger) (*queue.Embedded, error) {
	emb, err := queue.StartEmbedded(queue.EmbeddedConfig{Host: "127.0.0.1", Port: -1, DataDir: dir}, log)
	if ce, ok := errors.AsType[*queue.ConfigError](err); ok && ce.Field == "DataDir" {
		return nil, settingError(err) // data-dir: the only setting of the server that demo takes
	}
	if err != nil {
		return nil, err
	}
	return emb, nil
}

// connectDemo connects to the demo's NATS server and waits until the connection is up.
func connectDemo(ctx context.Context, emb *queue.Embedded, log *slog.Logger) (*session, error) {
	nc, err := queue.Connect(queue.ConnConfig{URL: emb.ClientURL(), Name: "kustomer-worker demo"}, log)
	if err != nil {
		return nil, err
	}
	err = queue.WaitConnected(ctx, nc)
	var js jetstream.JetStream
	if err == nil {
		js, err = jetstream.New(nc)
	}
	if err != nil {
		closeQuietly(nc)
		return nil, err
	}
	return &session{nc: nc, js: js}, nil
}

// runWorker wires a worker pool to the demo's NATS server and to the fake, paced at the
// fake's budget, and puts the backfill through it.
func (c *demoCmd) runWorker(ctx context.Context, e *env, s *session, fake *kustomertest.Server, log *slog.Logger) error {
	ratePerMinute := int(math.Round(float64(c.Budget) * float64(time.Minute) / float64(c.Window)))
	wc := c.workerConfig()
	top := queue.Topology{MaxAckPending: wc.MaxAckPending}.WithDefaults()
	lanes, att, err := bindDemo(ctx, s, top)
	if err != nil {
		return err
	}
	client, err := kustomer.New(kustomer.Options{BaseURL: fake.URL, Key: kustomer.StaticKey(demoKey), Timeout: 10 * time.Second})
	if err != nil {
		return err
	}
	defer client.CloseIdleConnections()
	reg := prometheus.NewRegistry()
	pool := &worker.Pool{
		Consumer: lanes.Live, Backfill: lanes.Backfill, Client: client, Attempts: att,
		DeadLetters: &queue.DeadLetterPublisher{JS: s.js, Subject: top.DLQSubject},
		Pacer:       pacer.New(ratePerMinute),
		Metrics:     worker.NewMetrics(reg),
		Log:         log,
		Config:      wc,
	}
	if err := c.wireBulk(ctx, s, top, pool, client); err != nil {
		return err
	}
	return c.runBackfill(ctx, e, s, top, fake, pool, reg)
}

// workerConfig is the demo's pool: quick retries and a short shutdown, so that the demo's
// faults are retried and its end comes soon.
func (c *demoCmd) workerConfig() worker.Config {
	return worker.Config{
		Concurrency: c.Concurrency, MaxAttempts: 10, RetryInitial: 100 * time.Millisecond, RetryMax: 2 * time.Second,
		ShutdownTimeout: 5 * time.Second, FetchWait: time.Second, Bulk: bulk.Config{Enabled: c.Bulk},
	}.WithDefaults()
}

// bindDemo creates the demo's streams and consumers and binds the lanes.
func bindDemo(ctx context.Context, s *session, top queue.Topology) (queue.Consumers, *queue.Attempts, error) {
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := queue.Ensure(sctx, s.js, top); err != nil {
		return queue.Consumers{}, nil, err
	}
	return queue.BindLanes(sctx, s.js, top)
}

// wireBulk gives the pool what bulk mode needs, with --bulk (see bulkFlags.wireBulk).
func (c *demoCmd) wireBulk(ctx context.Context, s *session, top queue.Topology, pool *worker.Pool, client *kustomer.Client) error {
	if !c.Bulk {
		return nil
	}
	bctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return (&bulkFlags{Bulk: true}).wireBulk(bctx, s.js, top, true, pool, client)
}

// runBackfill runs the pool while it publishes the generated backfill (and, with
// --live-every, live updates), shows progress until every update was applied or
// dead-lettered, stops the pool and prints the summary.
func (c *demoCmd) runBackfill(ctx context.Context, e *env, s *session, top queue.Topology, fake *kustomertest.Server, pool *worker.Pool, reg *prometheus.Registry) error {
	fmt.Fprintf(e.stdout, "demo: %d updates through an embedded NATS server, the worker (%d at once) and a fake Kustomer allowing %d requests per %s\n",
		c.Updates, c.Concurrency, c.Budget, c.Window)
	poolCtx, stopPool := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	var poolErr error
	wg.Go(func() { poolErr = pool.Run(poolCtx) })
	defer func() { stopPool(); wg.Wait() }()

	start := time.Now()
	backfill := c.generate(fake)
	if err := c.publish(ctx, s, top, backfill); err != nil {
		return err
	}
	live := &demoLive{}
	liveCtx, stopLive := context.WithCancel(ctx)
	if c.LiveEvery > 0 {
		wg.Go(func() { live.run(liveCtx, s, top, c.LiveEvery, c.Seed) })
	}
	res, err := c.wait(ctx, e, s, top, fake, backfill, live, stopLive)
	stopLive()
	res.elapsed = time.Since(start)
	stopPool()
	wg.Wait()
	if err != nil {
		return err
	}
	if poolErr != nil {
		return poolErr
	}
	res.applied = counterValue(reg, "kustomer_worker_updates_total", "outcome", "applied")
	res.stats = fake.Stats()
	res.live = live.latencies(fake)
	c.summary(e, res)
	return nil
}

// demoUpdate is one generated message.
type demoUpdate struct {
	subject string
	data    []byte
}

// demoBackfill is the generated backfill and what it should lead to.
type demoBackfill struct {
	updates           []demoUpdate
	invalid, rejected int
}

// generate makes the backfill: updates spread over conversations (several per conversation,
// so order matters), the invalid share broken in various ways, and the rejected share aimed at
// conversations the fake answers 404.
func (c *demoCmd) generate(fake *kustomertest.Server) demoBackfill {
	rng := rand.New(rand.NewPCG(uint64(c.Seed), 0x6b7573746f6d6572))
	newID := func() string { return fmt.Sprintf("%08x%08x%08x", rng.Uint32(), rng.Uint32(), rng.Uint32()) }
	b := demoBackfill{
		invalid:  int(math.Round(float64(c.Updates) * c.Invalid)),
		rejected: int(math.Round(float64(c.Updates) * c.Rejected)),
	}
	convs := make([]string, max(1, c.Updates*2/3))
	for i := range convs {
		convs[i] = newID()
	}
	team := newID()
	valid := []string{
		`{"status":"done"}`,
		`{"priority":%d}`,
		`{"tags":["backfill","vip"]}`,
		`{"status":"open","priority":2}`,
		`{"assignedTeams":["` + team + `"]}`,
		`{"custom":{"backfillBatchStr":"demo"}}`,
	}
	broken := []string{
		`{"id":"%s","body":{"priority":9}}`,
		`{"id":"%s","body":{"status":"closed"}}`,
		`{"id":"%.12s","body":{"status":"done"}}`,
		`{"id":"%s","body":{"assignedUsers":"nobody"}}`,
		`{"id":"%s","body":{}}`,
	}
	kind := make([]byte, c.Updates) // 'i' invalid, 'r' rejected, 0 valid
	perm := rng.Perm(c.Updates)
	for _, i := range perm[:b.invalid] {
		kind[i] = 'i'
	}
	for _, i := range perm[b.invalid : b.invalid+b.rejected] {
		kind[i] = 'r'
	}
	top := queue.Topology{}.WithDefaults()
	b.updates = make([]demoUpdate, c.Updates)
	for i := range b.updates {
		id := convs[i%len(convs)]
		var data string
		switch kind[i] {
		case 'i':
			data = fmt.Sprintf(broken[i%len(broken)], id)
		case 'r':
			id = newID()
			fake.Reject(id, 404)
			data = `{"id":"` + id + `","body":{"status":"done"}}`
		default:
			body := valid[i%len(valid)]
			if strings.Contains(body, "%d") {
				body = fmt.Sprintf(body, 1+i%5)
			}
			data = `{"id":"` + id + `","body":` + body + `}`
		}
		b.updates[i] = demoUpdate{subject: top.ConversationSubject(queue.LaneBackfill, id), data: []byte(data)}
	}
	return b
}

func (c *demoCmd) publish(ctx context.Context, s *session, top queue.Topology, b demoBackfill) error {
	pub, err := queue.NewPublisher(s.nc, queue.PublisherConfig{Stream: top.Stream})
	if err != nil {
		return err
	}
	defer pub.Close()
	for i, u := range b.updates {
		if err := pub.Publish(ctx, u.subject, u.data, queue.MsgID("demo", int64(i), u.data)); err != nil {
			return err
		}
	}
	return pub.Wait(ctx)
}

// wait shows progress until every update was applied or dead-lettered.
func (c *demoCmd) wait(ctx context.Context, e *env, s *session, top queue.Topology, fake *kustomertest.Server, b demoBackfill, live *demoLive, stopLive func()) (demoResult, error) {
	res := demoResult{updates: c.Updates, invalid: b.invalid, rejected: b.rejected}
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	var counter queue.ClassCounter
	prog := newProgress(e.stderr, c.Progress, "applying", int64(c.Updates))
	var last queue.Status
	var mu sync.Mutex
	stop := showProgress(prog, func() (int64, string) {
		mu.Lock()
		defer mu.Unlock()
		return int64(last.Processed), fmt.Sprintf("(%d dead-lettered, %d × 429)", last.DeadLetters, fake.Stats().ByStatus[429])
	})
	defer stop()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		st, err := queue.ReadStatus(ctx, s.js, top, &counter)
		if err == nil {
			mu.Lock()
			last = st
			mu.Unlock()
			if st.Processed >= uint64(c.Updates) && st.Backfill.Backlog == 0 {
				stopLive() // the backfill is done: no more live updates to measure
			}
			if st.Processed >= uint64(c.Updates+live.count()) && st.Backlog == 0 {
				stop()
				prog.finish(int64(st.Processed))
				res.byClass, res.deadLetters = st.ByClass, st.DeadLetters
				return res, nil
			}
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return res, fmt.Errorf("demo: not done after %s (%d of %d updates finished)", c.Timeout, last.Processed, c.Updates)
			}
			return res, context.Cause(ctx)
		case <-t.C:
		}
	}
}

func (c *demoCmd) summary(e *env, r demoResult) {
	w := e.stdout
	five := 0
	for st, n := range r.stats.ByStatus {
		if st >= 500 {
			five += n
		}
	}
	if r.byClass == nil {
		r.byClass = map[queue.DeadLetterClass]int{}
	}
	for _, cl := range []queue.DeadLetterClass{queue.ClassInvalid, queue.ClassRejected, queue.ClassExhausted} {
		if _, ok := r.byClass[cl]; !ok {
			r.byClass[cl] = 0
		}
	}
	secs := r.elapsed.Seconds()
	needed := r.updates - r.invalid // invalid updates cost no request
	bound := time.Duration(float64(needed) * float64(c.Window) / float64(c.Budget))
	fmt.Fprintf(w, "applied        %8d\n", r.applied)
	fmt.Fprintf(w, "dead-lettered  %8d  %s\n", r.deadLetters, classSummary(r.byClass))
	fmt.Fprintf(w, "requests       %8d  (%d answered 429 and waited out, %d answered 5xx and retried)\n", r.stats.Requests, r.stats.ByStatus[429], five)
	fmt.Fprintf(w, "throughput     %8.1f  updates/s\n", float64(r.applied)/max(secs, 1e-3))
	fmt.Fprintf(w, "elapsed        %8s  (the budget allows %s at best for %d requests: %.0f%% of the fastest pace)\n",
		r.elapsed.Round(100*time.Millisecond), bound.Round(100*time.Millisecond), needed, 100*bound.Seconds()/max(secs, 1e-3))
	if c.Bulk {
		demoBulkSummary(w, r.stats, r.applied)
	}
	if len(r.live) > 0 {
		q := func(p float64) time.Duration {
			return r.live[min(len(r.live)-1, int(p*float64(len(r.live))))].Round(time.Millisecond)
		}
		fmt.Fprintf(w, "live updates   %8d  applied during the backfill: publish to request p50 %s, p99 %s, max %s\n",
			len(r.live), q(0.5), q(0.99), r.live[len(r.live)-1].Round(time.Millisecond))
		fmt.Fprintf(w, "               %8s  (in one queue shared with the backfill, one published at the start would have waited about %s)\n",
			"", bound.Round(time.Second))
	}
	fmt.Fprintln(w, "\nNext: a real backfill with `kustomer-worker run` and `kustomer-worker enqueue` (see docs/OPERATIONS.md).")
}

// counterValue reads one labelled counter from reg; 0 if absent.
func counterValue(reg *prometheus.Registry, name, label, value string) int {
	mfs, err := reg.Gather()
	if err != nil {
		return 0
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					return int(m.GetCounter().GetValue())
				}
			}
		}
	}
	return 0
}
