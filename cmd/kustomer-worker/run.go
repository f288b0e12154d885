package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/worker"
	"github.com/kustomer-worker/kustomer-worker/worker/pacer"
)

// runCmd is the daemon.
type runCmd struct {
	natsFlags
	embeddedFlags
	topologyFlags
	bulkFlags     // bulk mode: bulk.go
	coalesceFlags // merging queued updates: coalesce.go

	KustomerURL     string        `name:"kustomer-url" env:"KUSTOMER_URL" default:"${default_kustomer_url}" help:"Kustomer API base URL; org hosts (https://ORG.api.kustomerapp.com) and the EU host (https://api.prod2.kustomerapp.com) work too."`
	AllowInsecure   bool          `name:"kustomer-allow-insecure" env:"KUSTOMER_ALLOW_INSECURE" help:"Allow an http:// kustomer-url to a host other than this machine's loopback, which sends the API key in clear: for a test server such as the mock in a container."`
	APIKeyFile      string        `name:"api-key-file" env:"KUSTOMER_API_KEY_FILE" type:"path" help:"File holding the Kustomer API key, re-read when it changes. Or set KUSTOMER_API_KEY. Never a plain flag: it would show in ps."`
	RatePerMinute   int           `name:"rate-per-minute" env:"KUSTOMER_RATE_PER_MINUTE" default:"${default_rate_per_minute}" help:"Requests a minute at most: your org's budget (Professional 300, Business 500, Enterprise 1000, Ultimate 2000) or your share of it; 0 leaves pacing to Kustomer's headers alone."`
	Concurrency     int           `name:"concurrency" env:"WORKER_CONCURRENCY" default:"${default_concurrency}" help:"Requests in flight at once."`
	MaxAttempts     int           `name:"max-attempts" env:"WORKER_MAX_ATTEMPTS" default:"${default_max_attempts}" help:"Attempts per message on retryable failures (5xx, timeouts, dropped connections) across redeliveries and restarts; then it is dead-lettered as exhausted. 429s spend none."`
	RequestTimeout  time.Duration `name:"request-timeout" env:"KUSTOMER_REQUEST_TIMEOUT" default:"${default_request_timeout}" help:"Timeout of one request to Kustomer."`
	ShutdownTimeout time.Duration `name:"shutdown-timeout" env:"WORKER_SHUTDOWN_TIMEOUT" default:"${default_shutdown_timeout}" help:"After SIGINT/SIGTERM, how long requests in flight may finish; the rest is handed back for redelivery; a second signal cuts it short."`
	HTTPAddr        string        `name:"http-addr" env:"WORKER_HTTP_ADDR" default:"127.0.0.1:9464" help:"Address serving /metrics, /healthz and /readyz; empty turns it off."`
	PProf           bool          `name:"pprof" env:"WORKER_PPROF" help:"Also serve Go's profiles on http-addr under /debug/pprof/ (CPU, heap, goroutines, and block and mutex profiles, which it turns on), to profile a live daemon; keep http-addr private then (default false)."`
	AckWait         time.Duration `name:"ack-wait" env:"WORKER_ACK_WAIT" default:"${default_ack_wait}" help:"Consumer AckWait: a crashed worker's messages are redelivered after this long."`
	MaxAckPending   int           `name:"max-ack-pending" env:"WORKER_MAX_ACK_PENDING" default:"0" help:"Messages held unacknowledged, across replicas; 0 means ${held_per_worker} × concurrency, at least ${min_max_ack_pending}, and with --bulk at least ${default_bulk_jobs_held} × bulk-size."`
	OutageThreshold int           `name:"outage-threshold" env:"WORKER_OUTAGE_THRESHOLD" default:"${default_outage_threshold}" help:"Requests failing transiently in a row (5xx, timeouts, refused connections) across conversations that pause every request as a Kustomer outage: no attempts are spent, one probe at a time until it answers; negative turns it off."`
	OutageSpread    int           `name:"outage-spread" env:"WORKER_OUTAGE_SPREAD" default:"${default_outage_spread}" help:"Once Kustomer answers the breaker's probe read, the most conversations whose updates may have failed, with none accepted, for the failures to be taken as theirs (they spend attempts and are dead-lettered after the last); more is taken as Kustomer refusing updates: every request stays paused, no attempts are spent."`
	StrandedEvery   time.Duration `name:"stranded-every" env:"WORKER_STRANDED_EVERY" default:"${default_stranded_every}" help:"How often the worker looks for stranded messages (delivered max-deliver times without an outcome, kept by the work stream, never to be delivered again) and dead-letters them as class stranded; it looks at start too."`
	MaxDeliver      int           `name:"max-deliver" env:"WORKER_MAX_DELIVER" default:"${default_max_deliver}" help:"Consumer MaxDeliver, a safety net above max-attempts."`
	DedupWindow     time.Duration `name:"dedup-window" env:"WORKER_DEDUP_WINDOW" default:"${default_dedup_window}" help:"Work stream's Nats-Msg-Id duplicate window."`
	DLQMaxAge       time.Duration `name:"dlq-max-age" env:"WORKER_DLQ_MAX_AGE" default:"0s" help:"How long dead letters are kept; 0 keeps them until purged."`
	StreamReplicas  int           `name:"stream-replicas" env:"WORKER_STREAM_REPLICAS" default:"${default_stream_replicas}" help:"Replicas of the streams and bucket in a NATS cluster."`
	PinnedTTL       time.Duration `name:"pinned-ttl" env:"WORKER_PINNED_TTL" default:"${default_pinned_ttl}" help:"Standby: how long the server keeps an active replica's pin without a pull from it, so the longest a standby waits to take over from a replica that died."`
	ManageStreams   bool          `name:"manage-streams" env:"WORKER_MANAGE_STREAMS" default:"true" negatable:"" help:"Create or update the streams, consumer and bucket at start; --no-manage-streams for operators who manage them elsewhere."`
}

func (c *runCmd) Help() string {
	return `Examples:
  # One machine, embedded NATS on ` + defaultNATSListen + `, data in ` + queue.DefaultDataDir + `:
  KUSTOMER_API_KEY=... kustomer-worker run

  # Against a NATS cluster, key from a file, a share of an Ultimate org's budget:
  kustomer-worker run --nats-url nats://n1:4222,nats://n2:4222 --api-key-file /run/secrets/kustomer_api_key --rate-per-minute 1500

  # Against the fake server of 'kustomer-worker mock':
  KUSTOMER_API_KEY=test-key kustomer-worker run --kustomer-url http://127.0.0.1:8080`
}

// settings turns the flags into validated configuration, naming the setting at fault.
func (c *runCmd) settings(e *env) (kustomer.KeySource, queue.Topology, worker.Config, error) {
	var key kustomer.KeySource
	switch envKey := e.getenv("KUSTOMER_API_KEY"); {
	case envKey != "" && c.APIKeyFile != "":
		return nil, queue.Topology{}, worker.Config{}, usagef("KUSTOMER_API_KEY and api-key-file: give one, not both")
	case envKey != "":
		key = kustomer.StaticKey(envKey)
	case c.APIKeyFile != "":
		kf := kustomer.NewKeyFile(c.APIKeyFile)
		if _, err := kf.Key(context.Background()); err != nil {
			hint := "make the file readable by this user and put the key in it, or set KUSTOMER_API_KEY"
			if errors.Is(err, fs.ErrNotExist) {
				hint = "check the path given to --api-key-file (a Kubernetes or Docker secret: that it is mounted there), or set KUSTOMER_API_KEY"
			}
			return nil, queue.Topology{}, worker.Config{}, &startupError{
				err:  fmt.Errorf("api-key-file %s: Kustomer API key unreadable: %w", c.APIKeyFile, err),
				hint: hint,
			}
		}
		key = kf
	default:
		return nil, queue.Topology{}, worker.Config{}, usagef("KUSTOMER_API_KEY or api-key-file: no Kustomer API key given")
	}
	switch {
	case c.RatePerMinute < 0:
		return nil, queue.Topology{}, worker.Config{}, usagef("rate-per-minute: %d is negative", c.RatePerMinute)
	case c.RequestTimeout <= 0:
		return nil, queue.Topology{}, worker.Config{}, usagef("request-timeout: %s is not positive", c.RequestTimeout)
	case c.MaxDeliver <= c.MaxAttempts && c.MaxDeliver > 0:
		return nil, queue.Topology{}, worker.Config{}, usagef("max-deliver: %d must be above max-attempts %d", c.MaxDeliver, c.MaxAttempts)
	}
	wc := worker.Config{MaxAckPending: c.MaxAckPending, Concurrency: c.Concurrency, Bulk: c.bulkConfig()}.WithDefaults()
	var err error
	if wc.Coalesce, err = c.coalesceLanes(); err != nil {
		return nil, queue.Topology{}, worker.Config{}, err
	}
	// The flags carry their defaults already: a 0 given for these is a mistake, not "default".
	wc.Concurrency, wc.MaxAttempts, wc.ShutdownTimeout = c.Concurrency, c.MaxAttempts, c.ShutdownTimeout
	wc.OutageThreshold, wc.OutageSpread, wc.StrandedEvery = c.OutageThreshold, c.OutageSpread, c.StrandedEvery
	if c.ShutdownTimeout == 0 {
		wc.ShutdownTimeout = time.Millisecond // 0 means: hand everything back at once
	}
	if err := wc.Validate(); err != nil {
		return nil, queue.Topology{}, worker.Config{}, settingError(err)
	}
	top := c.topology()
	top.AckWait, top.MaxAckPending, top.MaxDeliver = c.AckWait, wc.MaxAckPending, c.MaxDeliver
	top.DedupWindow, top.DLQMaxAge, top.StreamReplicas = c.DedupWindow, c.DLQMaxAge, c.StreamReplicas
	top.PinnedTTL = c.PinnedTTL // standby
	if err := top.Validate(); err != nil {
		return nil, queue.Topology{}, worker.Config{}, settingError(err)
	}
	return key, top, wc, nil
}

func (c *runCmd) Run(ctx context.Context, e *env, g *globals) error {
	cfg, err := c.config(e)
	if err != nil {
		return err
	}
	rep, stopReporting := startReporting(ctx, e, g)
	defer stopReporting()
	// /healthz and /readyz answer from the first second, before NATS is there.
	stopHTTP, err := c.serveHTTP(rep.ready, rep.reg, rep.log)
	if err != nil {
		return err
	}
	defer stopHTTP()
	natsURL, stopNATS, err := c.startNATS(e, rep.log)
	if err != nil {
		return err
	}
	defer stopNATS() // last, after the connection drained
	if c.PProf {
		startProfiling()
	}
	nc, err := c.connect(ctx, e, natsURL, rep)
	if nc == nil {
		return err // nil when a signal came while waiting: a normal stop
	}
	defer drain(nc, e.hard(), rep.log)
	return c.work(ctx, e, nc, natsURL, cfg, rep)
}

// runConfig is the daemon's validated configuration, with the client that calls Kustomer.
type runConfig struct {
	top    queue.Topology
	wc     worker.Config
	client *kustomer.Client
}

// config turns the flags into the daemon's configuration; errors are bad usage or settings.
func (c *runCmd) config(e *env) (runConfig, error) {
	key, top, wc, err := c.settings(e)
	if err != nil {
		return runConfig{}, err
	}
	client, err := kustomer.New(kustomer.Options{BaseURL: c.KustomerURL, Key: key, Timeout: c.RequestTimeout, AllowInsecure: c.AllowInsecure})
	if err != nil {
		return runConfig{}, settingError(err)
	}
	return runConfig{top: top, wc: wc, client: client}, nil
}

// reporting is how the daemon tells what it does: its log, its metrics, and what /readyz
// answers.
type reporting struct {
	log     *slog.Logger // flood-safe: see logging.go
	reg     *prometheus.Registry
	metrics *worker.Metrics
	ready   *readiness
}

// startReporting sets up the daemon's metrics, its log and its readiness, not ready yet
// ("starting"). The returned stop writes the log's last summary of lines held back.
func startReporting(ctx context.Context, e *env, g *globals) (*reporting, func()) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := worker.NewMetrics(reg)
	registerBuildInfo(reg)
	log, flood := g.floodSafeLogger(e.stderr, reg)
	var flushWG sync.WaitGroup
	flushCtx, stopFlush := context.WithCancel(context.WithoutCancel(ctx))
	flushWG.Go(func() { flushEvery(flushCtx, flood) })
	ready := &readiness{}
	ready.set("starting")
	return &reporting{log: log, reg: reg, metrics: metrics, ready: ready}, func() { stopFlush(); flushWG.Wait() }
}

// startNATS starts the embedded NATS server when no --nats-url names one, and gives the URL
// to connect to. The returned stop shuts the embedded server down.
// It requires the credentials of the NATS flags of every client, if any are given, and
// refuses to listen beyond loopback without them.
func (c *runCmd) startNATS(e *env, log *slog.Logger) (natsURL string, stop func(), err error) {
	if c.NATSURL != "" {
		return c.NATSURL, func() {}, nil
	}
	ec, err := c.embedded()
	if err != nil {
		return "", nil, err
	}
	if err := c.embeddedAuth(e, &ec); err != nil {
		return "", nil, err
	}
	emb, err := queue.StartEmbedded(ec, log)
	if err != nil {
		return "", nil, settingError(err)
	}
	natsURL = emb.ClientURL()
	log.Info("embedded NATS server started", "url", natsURL, "data_dir", ec.DataDir, "authentication", emb.Authenticated())
	return natsURL, func() {
		emb.Shutdown()
		log.Info("embedded NATS server stopped")
	}, nil
}

// connect waits for NATS at natsURL, telling the log and /readyz while it cannot be reached.
// A signal during the wait is a normal stop: then connect logs it and returns neither a
// connection nor an error.
func (c *runCmd) connect(ctx context.Context, e *env, natsURL string, rep *reporting) (*nats.Conn, error) {
	cc, err := c.conn(e, "kustomer-worker", natsURL)
	if err != nil {
		return nil, err
	}
	if err := cc.Validate(); err != nil {
		return nil, settingError(err)
	}
	wait := newOutageLog(rep.log, "NATS", queue.RedactURLs(natsURL), rep.ready)
	wait.quietEnd = true // ConnectWait's "connected to NATS" says how long it waited
	nc, err := queue.ConnectWait(ctx, cc, rep.log, func(_ int, err *queue.ConnectError) { wait.failing(causeOf(err)) })
	if err != nil {
		if ctx.Err() != nil { // a signal while waiting: a normal stop
			rep.log.Info("stopped before NATS could be reached", "url", queue.RedactURLs(natsURL))
			return nil, nil
		}
		return nil, startError(err)
	}
	wait.ended()
	return nc, nil
}

// work sets the pool up on the connection and runs it until ctx ends and the pool has
// drained, with the watchers of the lanes and of the connection, and the standby's pins,
// around it.
func (c *runCmd) work(ctx context.Context, e *env, nc *nats.Conn, natsURL string, cfg runConfig, rep *reporting) error {
	js, err := openJetStream(ctx, nc, natsURL, rep.log)
	if err != nil {
		return err
	}
	pool, lanes, err := c.pool(ctx, e, js, cfg, rep)
	if pool == nil {
		return err // nil when a signal came while binding: a normal stop
	}
	rep.ready.running(nc, pool)
	defer startWatchers(ctx, js, nc, natsURL, cfg.top, pool.BulkLane(), rep, func() bool { return active(lanes.Live, lanes.Backfill) })()
	// Standby: see standby.go. Deferred here, so that the pin is kept through the
	// pool's drain and released after it, before the NATS connection drains.
	defer startStandby(js, cfg.top, lanes, c.ManageStreams, pool.BulkLane(), rep.reg, rep.log, e.hard())()
	return c.serve(ctx, pool, cfg, rep.log)
}

// openJetStream is the connection's JetStream, checked at once so that a server without
// JetStream fails the start clearly; a server that cannot tell yet is only warned about.
func openJetStream(ctx context.Context, nc *nats.Conn, natsURL string, log *slog.Logger) (jetstream.JetStream, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	jctx, cancel := context.WithTimeout(ctx, bindCallTimeout)
	err = queue.CheckJetStream(jctx, js, natsURL)
	cancel()
	if err != nil && ctx.Err() == nil {
		var ce *queue.ConnectError
		if errors.As(err, &ce) {
			return nil, startError(err)
		}
		log.Warn("cannot ask NATS about JetStream yet; going on", "error", err)
	}
	return js, nil
}

// pool binds the lanes (bindWithRetry) and makes the worker pool that takes from them. A
// signal while binding is a normal stop: then pool logs it and returns neither a pool nor an
// error.
func (c *runCmd) pool(ctx context.Context, e *env, js jetstream.JetStream, cfg runConfig, rep *reporting) (*worker.Pool, queue.Consumers, error) {
	rep.ready.set("setting up streams and consumer")
	lanes, attempts, err := bindWithRetry(ctx, js, cfg.top, c.ManageStreams, rep.log)
	if err != nil {
		if ctx.Err() != nil { // a signal while waiting: a normal stop
			rep.log.Info("stopped before the streams and consumer could be set up")
			return nil, queue.Consumers{}, nil
		}
		return nil, queue.Consumers{}, err
	}
	budget := pacer.New(c.RatePerMinute)
	pacer.RegisterMetrics(rep.reg, "kustomer_worker", budget)
	octx, cancel := context.WithTimeout(ctx, bindCallTimeout)
	pool, err := worker.NewPool(octx, js, cfg.top, lanes, attempts, worker.Wiring{
		Client:   newWatchedClient(cfg.client, c.KustomerURL, rep.log),
		Pacer:    budget,
		Metrics:  rep.metrics,
		Log:      rep.log,
		Config:   cfg.wc,
		HardStop: e.hard(),
		Heal:     heal(js, cfg.top, c.ManageStreams),
	})
	cancel()
	if err != nil {
		return nil, queue.Consumers{}, err
	}
	if err := c.wireBulk(ctx, js, cfg.top, c.ManageStreams, pool, cfg.client); err != nil {
		return nil, queue.Consumers{}, err
	}
	return pool, lanes, nil
}

// startWatchers runs, in the background, the gauges of the lanes' backlogs (exported by the
// active replica, as active says, see exports; with the warning of a backlog on a lane that
// bulk mode does not take, bulkLane being the one it does) and the log of the NATS
// connection's outages; the returned stop ends them.
func startWatchers(ctx context.Context, js jetstream.JetStream, nc *nats.Conn, natsURL string, top queue.Topology, bulkLane string, rep *reporting, active func() bool) (stop func()) {
	bg, stopBG := context.WithCancel(context.WithoutCancel(ctx))
	var bgWG sync.WaitGroup
	laneGauges := newLaneMetrics(rep.reg, active)
	warn := &backlogBesideBulk{bulkLane: bulkLane, subject: top.BackfillSubject, log: rep.log}
	bgWG.Go(func() { watchLanes(bg, js, top, rep.metrics, laneGauges, warn) })
	bgWG.Go(func() { watchNATS(bg, nc, newOutageLog(rep.log, "NATS", queue.RedactURLs(natsURL), nil)) })
	return func() { stopBG(); bgWG.Wait() }
}

// serve runs the pool until ctx ends and the pool has drained, saying so in the log.
func (c *runCmd) serve(ctx context.Context, pool *worker.Pool, cfg runConfig, log *slog.Logger) error {
	log.Info("kustomer-worker running", "version", buildVersion(), "kustomer_url", c.KustomerURL,
		"rate_per_minute", c.RatePerMinute, "concurrency", cfg.wc.Concurrency, "bulk", cfg.wc.Bulk.Enabled, "max_ack_pending", cfg.wc.MaxAckPending, "stream", cfg.top.Stream, "consumer", cfg.top.Consumer, "backfill_consumer", cfg.top.BackfillConsumer)
	if err := pool.Run(ctx); err != nil {
		return err
	}
	log.Info("stopped cleanly")
	return nil
}

// heal re-creates the streams, consumer and bucket when the pool finds them deleted, if the
// worker manages them; nil otherwise.
func heal(js jetstream.JetStream, top queue.Topology, manage bool) func(context.Context) error {
	if !manage {
		return nil
	}
	return func(ctx context.Context) error { return queue.Ensure(ctx, js, top) }
}

// Tuned waits of binding the topology at start.
const (
	bindRetryInitial = 250 * time.Millisecond // first wait after a failed bind
	bindRetryMax     = 10 * time.Second       // the longest wait between binds
	bindCallTimeout  = 10 * time.Second       // one Ensure or Bind
)

// bindWithRetry declares (or only looks up) the topology, retrying while NATS or JetStream is
// still starting, as in docker compose.
func bindWithRetry(ctx context.Context, js jetstream.JetStream, top queue.Topology, manage bool, log *slog.Logger) (queue.Consumers, *queue.Attempts, error) {
	type bound struct {
		cons     queue.Consumers
		attempts *queue.Attempts
	}
	bind := func() (bound, error) {
		if manage {
			cctx, cancel := context.WithTimeout(ctx, bindCallTimeout)
			err := queue.Ensure(cctx, js, top)
			cancel()
			if err != nil {
				return bound{}, err
			}
		}
		cctx, cancel := context.WithTimeout(ctx, bindCallTimeout)
		defer cancel()
		cons, attempts, err := queue.BindLanes(cctx, js, top)
		return bound{cons, attempts}, err
	}
	schedule := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(bindRetryInitial),
		backoff.WithMaxInterval(bindRetryMax),
		backoff.WithMaxElapsedTime(0), // until ctx ends
	)
	b, err := backoff.RetryNotifyWithData(bind, backoff.WithContext(schedule, ctx), func(err error, next time.Duration) {
		log.Warn("cannot set up streams and consumer yet; retrying", "error", err, "retry_in", next.Round(time.Millisecond))
	})
	if ctx.Err() != nil {
		return queue.Consumers{}, nil, fmt.Errorf("binding the consumers: %w", context.Cause(ctx))
	}
	if err != nil {
		return queue.Consumers{}, nil, fmt.Errorf("binding the consumers: %w", err)
	}
	return b.cons, b.attempts, nil
}

// serveHTTP serves /metrics, /healthz and /readyz until the returned stop is called.
// /healthz answers 200 while the process runs; /readyz answers 503 with the reason until the
// daemon is connected and its pool takes messages.
func (c *runCmd) serveHTTP(ready *readiness, reg *prometheus.Registry, log *slog.Logger) (func(), error) {
	if c.HTTPAddr == "" {
		return func() {}, nil
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if reason := ready.notReady(); reason != "" {
			http.Error(w, reason, http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready ("+ready.role()+")") // standby: a standby is ready to take over
	})
	if c.PProf {
		servePProf(mux)
	}
	ln, err := net.Listen("tcp", c.HTTPAddr)
	if err != nil {
		return nil, usagef("http-addr: %v", err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server", "error", err)
		}
	}()
	log.Info("serving /metrics, /healthz and /readyz", "addr", ln.Addr().String(), "pprof", c.PProf)
	return func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		<-done
	}, nil
}

// Tuned waits of draining the NATS connection at exit.
const (
	drainTimeout     = 10 * time.Second // the longest a drain may take
	drainAfterSignal = 2 * time.Second  // once a second signal came: flush what can be, then close
)

// drain flushes acks and closes the connection, waiting at most drainTimeout, or
// drainAfterSignal once hardStop ended.
func drain(nc *nats.Conn, hardStop context.Context, log *slog.Logger) {
	closed := make(chan struct{})
	nc.SetClosedHandler(func(*nats.Conn) { close(closed) })
	if err := nc.Drain(); err != nil {
		nc.Close()
		return
	}
	timeout := time.NewTimer(drainTimeout)
	defer timeout.Stop()
	hard := hardStop.Done()
	for {
		select {
		case <-closed:
			return
		case <-hard:
			hard = nil
			timeout.Reset(drainAfterSignal)
			continue
		case <-timeout.C:
		}
		log.Warn("NATS drain timed out; closing")
		nc.Close()
		return
	}
}
