package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kustomer-worker/kustomer-worker/internal/logtext"
	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/producer"
	"github.com/kustomer-worker/kustomer-worker/queue"
)

// enqueueCmd publishes update messages to the work stream: a backfill.
type enqueueCmd struct {
	natsFlags
	streamFlags
	dialFlags
	streamWaitFlags

	File        string        `arg:"" optional:"" name:"file" help:"JSON Lines file of update messages, one a line; - reads stdin."`
	IDsFile     string        `name:"ids-file" help:"File of conversation ids, one a line (- reads stdin), each given the same --body or --body-file."`
	Body        string        `name:"body" help:"With --ids-file: the update body, a JSON object such as '{\"status\":\"done\"}'."`
	BodyFile    string        `name:"body-file" type:"path" help:"With --ids-file: a file holding the update body."`
	Replace     bool          `name:"replace" help:"With --ids-file: replace each conversation (?replace=true) instead of changing only the fields given."`
	SkipInvalid bool          `name:"skip-invalid" help:"Publish the valid lines and write the invalid ones, with their reasons, to --rejects."`
	Rejects     string        `name:"rejects" type:"path" help:"With --skip-invalid: where invalid lines go, as JSON Lines (default INPUT.rejects.jsonl, or rejects.jsonl for stdin)."`
	RunID       string        `name:"run-id" env:"WORKER_RUN_ID" help:"The run's id (1 to 64 letters, digits, _ and -): every message carries it, and status --run, dlq list --run and dlq export --run follow it. Default: the date and a hash of the input, so the same command run again the same day resumes the same run and publishes nothing twice within the dedup window."`
	Wait        bool          `name:"wait" help:"After publishing, follow the run until every line is applied or dead-lettered, as status --run --watch does: exit status 0 all applied, 3 some dead-lettered."`
	Interval    time.Duration `name:"interval" default:"2s" help:"With --wait: time between readings of the run."`
	JSON        bool          `name:"json" help:"Print the run's summary as one JSON object (with --wait, one a line per reading) instead of text."`
	PerMinute   int           `name:"rate-per-minute" env:"KUSTOMER_RATE_PER_MINUTE" default:"${default_rate_per_minute}" help:"With --wait: the org budget the worker runs at, for the time left before the run has a rate of its own."`
	DryRun      bool          `name:"dry-run" help:"Validate only; publish nothing and need no NATS."`
	Lane        string        `name:"lane" enum:"backfill,live" default:"backfill" help:"Lane to publish to: backfill (BACKFILL-SUBJECT.<id>, served with the budget live updates leave) or live (SUBJECT.<id>, served first: for a handful of urgent updates)."`
	MaxPending  int           `name:"max-pending" env:"WORKER_MAX_PENDING" default:"4096" help:"Publishes waiting for their acknowledgement at most."`
	WindowOld   int           `name:"window" hidden:"" deprecated:"max-pending" help:"Deprecated name of max-pending."`
	Progress    string        `name:"progress" enum:"auto,bar,plain,none" default:"auto" help:"Progress on stderr: auto (a bar on a terminal, a line every few seconds otherwise), bar, plain or none."`
}

func (c *enqueueCmd) Help() string {
	return `Every line is validated before anything is published: bad lines are reported with their line
number and reason, and nothing is published unless --skip-invalid. The lines published are a run:
its id is printed first (--run-id, or by default the date and a hash of the valid lines) and
every message carries it and its line number (headers Kustomer-Worker-Run and
Kustomer-Worker-Line), which status --run, dlq list --run, dlq export --run and runs read. Each
message gets a Nats-Msg-Id made of the run id, its line number and its bytes, so enqueueing the
same input again within the work stream's dedup window (--dedup-window of run, default ` + queue.DefaultDedupWindow.String() + `)
publishes nothing twice. The command reports success only once JetStream confirmed every
publish; with --wait it then follows the run until every line is applied (exit status 0) or
some are dead-lettered (exit status 3). See docs/RUNS.md.

Messages go to the backfill lane, BACKFILL-SUBJECT.<id> (` + queue.DefaultBackfillSubject + `.<id> by
default): the worker applies them with the budget live updates leave, so a backfill never delays
them. --lane live publishes to SUBJECT.<id> instead, for a few urgent updates that must not
wait behind a backfill. Updates of one conversation are applied in the
order they were published, whatever their lanes.

A line is {"id": "<24-hex conversation id>", "replace": false, "body": {...}}; blank lines are
skipped. Input of any size streams: valid lines are spooled to a temporary file ($TMPDIR)
between validating and publishing, so memory stays flat.

Examples:
  # A backfill file:
  kustomer-worker enqueue backfill.jsonl

  # The same, followed to its end; then what failed, to fix and enqueue again:
  kustomer-worker enqueue backfill.jsonl --run-id night-1 --wait
  kustomer-worker dlq export --run night-1 > failed.jsonl

  # Close a list of conversations:
  kustomer-worker enqueue --ids-file ids.txt --body '{"status":"done"}'

  # Tag them, body from a file, ids from a pipeline:
  cut -f1 export.tsv | kustomer-worker enqueue --ids-file - --body-file tags.json

  # From another program, keeping the bad lines aside:
  ./make-updates | kustomer-worker enqueue - --skip-invalid --rejects bad.jsonl

  # A few urgent fixes, ahead of any backfill:
  kustomer-worker enqueue --lane live fixes.jsonl

  # Check a file without publishing:
  kustomer-worker enqueue backfill.jsonl --dry-run`
}

// maxLine is the longest line read: the largest body plus room for the id and the framing.
const maxLine = kustomer.MaxBodyBytes + 64<<10

// maxReported is how many invalid lines --skip-invalid prints; the rejects file has them all.
const maxReported = 10

// enqueueInput is what the command reads.
type enqueueInput struct {
	name    string // the path, or "stdin"
	r       io.Reader
	close   func()
	ids     bool   // lines are ids, each given body
	body    []byte // compact JSON, with ids
	replace bool
}

func (c *enqueueCmd) Run(ctx context.Context, e *env, g *globals) error {
	in, err := c.input(e)
	if err != nil {
		return err
	}
	defer in.close()
	top := c.topology()
	if err := top.Validate(); err != nil {
		return settingError(err)
	}

	// Connect first, so a missing NATS shows before a long validation.
	var s *session
	if !c.DryRun {
		if s, err = dial(ctx, e, g, &c.natsFlags, c.dialFlags, "kustomer-worker enqueue"); err != nil {
			return err
		}
		defer s.close()
		if err := c.waitStream(ctx, e.stderr, s.js, top.Stream); err != nil {
			return err
		}
	}

	spool, err := os.CreateTemp("", "kustomer-worker-enqueue-*.spool")
	if err != nil {
		return fmt.Errorf("spool file: %w", err)
	}
	defer func() {
		spool.Close()
		os.Remove(spool.Name())
	}()

	start := time.Now()
	rej := &rejectsFile{path: c.rejectsPath(in)}
	defer rej.close()
	v, err := c.validate(ctx, e, in, spool, rej)
	if err != nil {
		return err
	}
	if err := rej.close(); err != nil {
		return err
	}
	if c.Progress != "none" {
		fmt.Fprintf(e.stderr, "validated %s (%d invalid) in %s\n", plural(v.lines, "line"), v.invalid, time.Since(start).Round(time.Millisecond))
	}
	if v.invalid > 0 && !c.SkipInvalid {
		return fmt.Errorf("%d of %d lines invalid: nothing published (fix them, or publish the rest with --skip-invalid)", v.invalid, v.lines)
	}
	run := c.RunID
	if run == "" {
		run = defaultRunID(time.Now(), v.hash)
	}
	if c.DryRun {
		if c.JSON {
			return writeJSON(e.stdout, enqueueJSON{Run: run, Lane: c.Lane, Lines: v.lines, Valid: v.valid, Rejected: v.invalid, DryRun: true})
		}
		fmt.Fprintf(e.stdout, "run         %10s\n", run)
		fmt.Fprintf(e.stdout, "valid       %10d\n", v.valid)
		c.printRejected(e, v, rej)
		fmt.Fprintln(e.stdout, "dry run: nothing published")
		return nil
	}

	runs := &queue.RunLog{JS: s.js, Topology: top}
	if err := c.startRun(ctx, e, runs, top, in, run, v, start); err != nil {
		return err
	}
	if _, err := spool.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("spool file: %w", err)
	}
	pstart := time.Now()
	st, err := c.publish(ctx, e, s, top, spool, v.valid, run)
	elapsed := time.Since(pstart)
	if err == nil {
		err = c.published(ctx, runs, run)
	}
	doc := enqueueJSON{Run: run, Lane: c.Lane, Subject: top.LaneSubject(queue.Lane(c.Lane)) + ".<id>", Lines: v.lines, Valid: v.valid,
		Published: st.Published, Duplicates: st.Duplicates, Rejected: v.invalid, Rejects: rej.path, Retried: st.Retried,
		ElapsedSeconds: elapsed.Seconds()}
	if err != nil {
		doc.Error = err.Error()
	}
	if c.JSON && !c.Wait {
		if werr := writeJSON(e.stdout, doc); werr != nil && err == nil {
			err = werr
		}
	} else if !c.JSON {
		c.printPublished(e, v, rej, run, top, st, elapsed)
	}
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("interrupted after %d of %d messages: run the same command again with --run-id %s to publish the rest (within the dedup window nothing is published twice): %w",
				st.Confirmed(), v.valid, run, err)
		}
		return err
	}
	if !c.Wait {
		if !c.JSON {
			fmt.Fprintf(e.stdout, "follow it with: kustomer-worker status --run %s --watch\n", run)
		}
		return nil
	}
	w := e.stdout
	if !c.JSON {
		w = e.stderr // the bar or lines; the summary goes to stdout below
	}
	mode := runMode(w, c.JSON, c.Progress)
	view := &runView{w: w, mode: mode, perMinute: c.PerMinute, lineEvery: max(c.Interval, 5*time.Second)}
	if c.Progress == "none" && !c.JSON {
		view.w = io.Discard
	}
	final, err := follow(ctx, s.js, top, run, view, c.Interval)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("stopped waiting; the run goes on: follow it with `kustomer-worker status --run %s --watch`: %w", run, err)
		}
		return err
	}
	if view.bar != nil {
		_ = view.bar.Finish()
		fmt.Fprintln(w)
	}
	if !c.JSON {
		fmt.Fprintln(e.stdout, strings.Join(view.text(final), "\n"))
	}
	return runResult(final)
}

// enqueueJSON is enqueue's summary as --json writes it.
type enqueueJSON struct {
	Run            string  `json:"run"`
	Lane           string  `json:"lane"`
	Subject        string  `json:"subject,omitempty"`
	Lines          int64   `json:"lines"`
	Valid          int64   `json:"valid"`
	Published      int64   `json:"published"`
	Duplicates     int64   `json:"duplicates"`
	Rejected       int64   `json:"rejected"`
	Rejects        string  `json:"rejectsFile,omitempty"`
	Retried        int64   `json:"retried"`
	ElapsedSeconds float64 `json:"elapsedSeconds"`
	DryRun         bool    `json:"dryRun,omitempty"`
	Error          string  `json:"error,omitempty"`
}

// defaultRunID is the run id of an input without --run-id: the day and a hash of its valid
// lines, so that the same command run again the same day resumes the same run.
func defaultRunID(now time.Time, h hash.Hash) string {
	return now.UTC().Format("20060102") + "-" + hex.EncodeToString(h.Sum(nil))[:10]
}

// startRun writes the run's record before anything is published, keeping the start of a run
// resumed. A run that finished publishing more than the dedup window ago is published again
// in full: said on stderr.
func (c *enqueueCmd) startRun(ctx context.Context, e *env, runs *queue.RunLog, top queue.Topology, in *enqueueInput, run string, v validation, start time.Time) error {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := runs.Ensure(rctx); err != nil {
		return err
	}
	rec := queue.Run{ID: run, Started: start.UTC(), Lines: v.valid, Invalid: v.invalid, Lane: c.Lane, Input: in.name}
	old, err := runs.Get(rctx, run)
	switch {
	case err == nil:
		rec.Started = old.Started
		if !old.Published.IsZero() && time.Since(old.Published) > top.DedupWindow {
			fmt.Fprintf(e.stderr, "run %s was published at %s, longer ago than the dedup window (%s): its lines are published again and counted in the same run; give another --run-id for a new run\n",
				run, old.Published.Format(time.RFC3339), top.DedupWindow)
		}
	case !errors.Is(err, queue.ErrNoRun):
		return err
	}
	return runs.Put(rctx, rec)
}

// published marks the run as published in full.
func (c *enqueueCmd) published(ctx context.Context, runs *queue.RunLog, run string) error {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	rec, err := runs.Get(rctx, run)
	if err != nil {
		return err
	}
	rec.Published = time.Now().UTC()
	return runs.Put(rctx, rec)
}

func (c *enqueueCmd) printPublished(e *env, v validation, rej *rejectsFile, run string, top queue.Topology, st queue.PublishStats, elapsed time.Duration) {
	fmt.Fprintf(e.stdout, "run         %10s\n", run)
	fmt.Fprintf(e.stdout, "published   %10d  (%s lane, %s.<id>)\n", st.Published, c.Lane, top.LaneSubject(queue.Lane(c.Lane)))
	fmt.Fprintf(e.stdout, "duplicates  %10d", st.Duplicates)
	if st.Duplicates > 0 {
		fmt.Fprint(e.stdout, "  (already in the stream within its dedup window: not published again)")
	}
	fmt.Fprintln(e.stdout)
	c.printRejected(e, v, rej)
	if st.Retried > 0 {
		fmt.Fprintf(e.stdout, "retried     %10d  (publishes sent again after a failure; around them, updates may be stored out of order)\n", st.Retried)
	}
	fmt.Fprintf(e.stdout, "elapsed     %10s  (%.0f messages/s)\n", elapsed.Round(time.Millisecond), float64(st.Confirmed())/max(elapsed.Seconds(), 1e-3))
}

func (c *enqueueCmd) printRejected(e *env, v validation, rej *rejectsFile) {
	fmt.Fprintf(e.stdout, "rejected    %10d", v.invalid)
	if v.invalid > 0 && rej.path != "" {
		fmt.Fprintf(e.stdout, "  (with reasons in %s)", rej.path)
	}
	fmt.Fprintln(e.stdout)
}

// input checks the flags and opens what they name.
func (c *enqueueCmd) input(e *env) (*enqueueInput, error) {
	switch {
	case c.File == "" && c.IDsFile == "":
		return nil, usagef("give a JSON Lines FILE (- for stdin), or --ids-file with --body or --body-file")
	case c.File != "" && c.IDsFile != "":
		return nil, usagef("give a FILE or --ids-file, not both")
	case c.IDsFile == "" && (c.Body != "" || c.BodyFile != "" || c.Replace):
		return nil, usagef("body, body-file and replace go with --ids-file; in a JSON Lines FILE each line carries its own")
	case c.IDsFile != "" && (c.Body == "") == (c.BodyFile == ""):
		return nil, usagef("ids-file: give the body with --body or --body-file (one of them)")
	case c.Rejects != "" && !c.SkipInvalid:
		return nil, usagef("rejects: goes with --skip-invalid")
	case c.MaxPending < 1:
		return nil, usagef("max-pending: %d is below 1", c.MaxPending)
	case c.Interval < 100*time.Millisecond:
		return nil, usagef("interval: %s is under 100ms", c.Interval)
	case c.Wait && c.DryRun:
		return nil, usagef("wait: a dry run publishes nothing to wait for")
	}
	if c.RunID != "" {
		if err := queue.CheckRunID(c.RunID); err != nil {
			return nil, usagef("run-id: %v", err)
		}
	}
	in := &enqueueInput{close: func() {}}
	path := c.File
	if c.IDsFile != "" {
		path = c.IDsFile
		in.ids, in.replace = true, c.Replace
		body := []byte(c.Body)
		if c.BodyFile != "" {
			b, err := os.ReadFile(c.BodyFile)
			if err != nil {
				return nil, usagef("body-file: %v", err)
			}
			body = b
		}
		if err := kustomer.ValidateBody(body); err != nil {
			return nil, usagef("body: %v", err)
		}
		var buf bytes.Buffer
		if err := json.Compact(&buf, body); err != nil {
			return nil, usagef("body: %v", err)
		}
		in.body = buf.Bytes()
	}
	if path == "-" {
		in.name, in.r = "stdin", e.stdin
		if in.r == nil {
			in.r = bytes.NewReader(nil)
		}
		return in, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, usagef("%v", err)
	}
	in.name, in.r, in.close = path, f, func() { f.Close() }
	return in, nil
}

func (c *enqueueCmd) rejectsPath(in *enqueueInput) string {
	switch {
	case !c.SkipInvalid:
		return ""
	case c.Rejects != "":
		return c.Rejects
	case in.name == "stdin":
		return "rejects.jsonl"
	}
	return in.name + ".rejects.jsonl"
}

// validation counts what the validation pass found.
type validation struct {
	lines, valid, invalid int64
	hash                  hash.Hash // of the valid lines as spooled, with their numbers
}

// chunk is a run of lines validated together and handed on in input order.
type chunk struct {
	buf    []byte
	ends   []int    // end of each line in buf; a line starts where the previous one ended
	nums   []int64  // line numbers
	events []string // event ids (Nats-Msg-Id) of the valid lines
	ids    []string // conversation ids of the valid lines
	errs   []error
	done   chan struct{} // closed once validated
}

func (ch *chunk) line(i int) []byte {
	start := 0
	if i > 0 {
		start = ch.ends[i-1]
	}
	return ch.buf[start:ch.ends[i]]
}

const (
	chunkLines = 512
	chunkBytes = 1 << 20
)

var errTooLong = fmt.Errorf("line is longer than %d bytes", maxLine)

// validate reads every line of in, validating lines on every core, and writes the valid ones
// to spool as "CONVERSATION-ID LINE MESSAGE\n" in input order, hashing them (the default run
// id); the invalid ones are
// reported on stderr and, with --skip-invalid, written to rej. Memory stays bounded whatever
// the input's size.
func (c *enqueueCmd) validate(outer context.Context, e *env, in *enqueueInput, spool io.Writer, rej *rejectsFile) (validation, error) {
	ctx, cancel := context.WithCancel(outer)
	defer cancel()
	workers := max(runtime.GOMAXPROCS(0), 1)
	ordered := make(chan *chunk, 2*workers)
	work := make(chan *chunk, 2*workers)
	var readErr error
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(work)
		defer close(ordered)
		readErr = readChunks(ctx, in.r, ordered, work)
	})
	for range workers {
		wg.Go(func() {
			for ch := range work {
				var msg []byte
				for i := range ch.ends {
					if ch.errs[i] == nil {
						ch.events[i], ch.ids[i], ch.errs[i] = c.checkLine(in, ch.nums[i], ch.line(i), &msg)
					}
				}
				close(ch.done)
			}
		})
	}

	v := validation{hash: sha256.New()}
	w := bufio.NewWriterSize(spool, 256<<10)
	var rec []byte
	var werr error
	for ch := range ordered {
		<-ch.done
		if werr != nil {
			continue // drain so the reader and the workers finish
		}
		for i, err := range ch.errs {
			v.lines++
			n := ch.nums[i]
			if err != nil {
				v.invalid++
				if !c.SkipInvalid || v.invalid <= maxReported {
					fmt.Fprintf(e.stderr, "line %d: %v\n", n, err)
				}
				if c.SkipInvalid {
					if werr = rej.write(n, err, ch.line(i)); werr != nil {
						cancel()
						break
					}
				}
				continue
			}
			v.valid++
			rec = append(rec[:0], ch.ids[i]...)
			rec = append(rec, ' ')
			rec = strconv.AppendInt(rec, n, 10)
			rec = append(rec, ' ')
			rec = appendMessage(rec, in, ch.ids[i], ch.line(i))
			rec = append(rec, '\n')
			v.hash.Write(rec)
			if _, werr = w.Write(rec); werr != nil {
				werr = fmt.Errorf("spool file: %w", werr)
				cancel()
				break
			}
		}
	}
	wg.Wait()
	if werr == nil {
		if err := w.Flush(); err != nil {
			werr = fmt.Errorf("spool file: %w", err)
		}
	}
	switch {
	case werr != nil:
		return v, werr
	case outer.Err() != nil:
		return v, context.Cause(outer)
	case readErr != nil:
		return v, fmt.Errorf("reading %s: %w", in.name, readErr)
	}
	if c.SkipInvalid && v.invalid > maxReported {
		fmt.Fprintf(e.stderr, "… and %d more invalid lines, all in %s\n", v.invalid-maxReported, rej.path)
	}
	return v, nil
}

// readChunks splits r into chunks of non-blank lines and hands each to both channels.
func readChunks(ctx context.Context, r io.Reader, ordered, work chan<- *chunk) error {
	lr := newLineReader(r, maxLine)
	var ch *chunk
	send := func() error {
		if ch == nil {
			return nil
		}
		select {
		case ordered <- ch:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
		work <- ch // as roomy as ordered, and drained by the workers
		ch = nil
		return nil
	}
	for {
		line, long, err := lr.next()
		if err == io.EOF {
			return send()
		}
		if err != nil {
			if serr := send(); serr != nil {
				return serr
			}
			return err
		}
		if len(line) == 0 && !long {
			continue
		}
		if ch == nil {
			ch = &chunk{done: make(chan struct{})}
		}
		ch.buf = append(ch.buf, line...)
		ch.ends = append(ch.ends, len(ch.buf))
		ch.nums = append(ch.nums, lr.n)
		ch.events = append(ch.events, "")
		ch.ids = append(ch.ids, "")
		if long {
			ch.errs = append(ch.errs, errTooLong)
		} else {
			ch.errs = append(ch.errs, nil)
		}
		if len(ch.ends) >= chunkLines || len(ch.buf) >= chunkBytes {
			if err := send(); err != nil {
				return err
			}
		}
	}
}

// checkLine validates line n and returns the conversation id it names (event is always
// empty: the Nats-Msg-Id is made at publishing). A JSON line is checked by the producer
// package's rules; with --ids-file the body was checked once and each line must be a
// conversation id.
func (c *enqueueCmd) checkLine(in *enqueueInput, n int64, line []byte, msg *[]byte) (event, id string, err error) {
	if in.ids {
		if !kustomer.ValidID(string(line)) {
			return "", "", fmt.Errorf("%s is not a conversation id (24 hex characters)", strconv.Quote(logtext.Truncate(string(line), 80, "…")))
		}
		return "", string(line), nil
	}
	// The event id is made at publishing, from the run id, which may hash the whole input.
	if id, err = producer.CheckJSON("enqueue", line); err != nil {
		// The reason alone: the line number says which message, and the event id is ours.
		var ve *kustomer.ValidationError
		if errors.As(err, &ve) {
			err = ve
		}
		return "", "", err
	}
	return event, id, nil
}

// appendMessage appends the message to publish for a valid line: the line itself, or with
// --ids-file the update of that id with the one body.
func appendMessage(dst []byte, in *enqueueInput, id string, line []byte) []byte {
	if !in.ids {
		return append(dst, line...)
	}
	dst = append(dst, `{"id":"`...)
	dst = append(dst, id...)
	if in.replace {
		dst = append(dst, `","replace":true,"body":`...)
	} else {
		dst = append(dst, `","body":`...)
	}
	dst = append(dst, in.body...)
	return append(dst, '}')
}

// rejectsFile receives the invalid lines under --skip-invalid; it is created at the first.
type rejectsFile struct {
	path string
	f    *os.File
	w    *bufio.Writer
}

// maxRejectInput is the most of a line too long to publish that the rejects file keeps.
const maxRejectInput = 4096

// reject is one line of the rejects file.
type reject struct {
	Line      int64  `json:"line"`
	Reason    string `json:"reason"`
	Input     string `json:"input"`
	Truncated bool   `json:"truncated,omitempty"`
}

func (r *rejectsFile) write(line int64, reason error, input []byte) error {
	if r.f == nil {
		f, err := os.Create(r.path)
		if err != nil {
			return fmt.Errorf("rejects: %w", err)
		}
		r.f, r.w = f, bufio.NewWriter(f)
	}
	rec := reject{Line: line, Reason: reason.Error(), Input: string(input)}
	if errors.Is(reason, errTooLong) && len(input) > maxRejectInput {
		rec.Input, rec.Truncated = logtext.Truncate(rec.Input, maxRejectInput, ""), true
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if _, err := r.w.Write(b); err != nil {
		return fmt.Errorf("rejects: %w", err)
	}
	return nil
}

func (r *rejectsFile) close() error {
	if r.f == nil {
		return nil
	}
	err := r.w.Flush()
	if cerr := r.f.Close(); err == nil {
		err = cerr
	}
	r.f = nil
	if err != nil {
		return fmt.Errorf("rejects: %w", err)
	}
	return nil
}

// publish publishes every message of the spool to the lane chosen and waits until each is
// confirmed.
func (c *enqueueCmd) publish(ctx context.Context, e *env, s *session, top queue.Topology, spool io.Reader, total int64, run string) (queue.PublishStats, error) {
	p, err := producer.New(s.nc, producer.Config{
		Subject:         top.Subject,
		BackfillSubject: top.BackfillSubject,
		Lane:            producer.Lane(c.Lane),
		Stream:          top.Stream,
	})
	if err != nil {
		return queue.PublishStats{}, err
	}
	batch, err := p.NewBatch(producer.BatchConfig{Window: c.MaxPending})
	if err != nil {
		return queue.PublishStats{}, err
	}
	defer batch.Close()
	prog := newProgress(e.stderr, c.Progress, "publishing", total)
	stop := showProgress(prog, func() (int64, string) { return batch.Stats().Confirmed(), "" })

	err = publishSpool(ctx, batch, spool, run)
	if err == nil {
		err = batch.Wait(ctx)
	} else if ctx.Err() != nil {
		// Interrupted: give what is in flight a moment, so the counts say what was stored.
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		_ = batch.Wait(wctx)
		cancel()
	}
	stop()
	st := batch.Stats()
	prog.finish(st.Confirmed())
	return st, err
}

// publishSpool publishes the spool's records, which the validation pass checked with
// producer.CheckJSON (or built from a checked body and id), without decoding them again,
// each stamped with run and its line; its Nats-Msg-Id is made of both and its bytes.
func publishSpool(ctx context.Context, batch *producer.Batch, spool io.Reader, run string) error {
	lr := newLineReader(spool, maxLine+128)
	var mem slab
	for {
		rec, _, err := lr.next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("spool file: %w", err)
		}
		id, rest, ok1 := bytes.Cut(rec, []byte{' '})
		num, msg, ok2 := bytes.Cut(rest, []byte{' '})
		n, err := strconv.ParseInt(string(num), 10, 64)
		if !ok1 || !ok2 || err != nil {
			return errors.New("spool file: corrupt record")
		}
		if err := batch.PublishRunLine(ctx, queue.MsgID(run, n, msg), string(id), run, n, mem.copy(msg)); err != nil {
			return err
		}
	}
}

// slab hands out copies of small byte slices cut from large blocks, so a million messages
// cost a few thousand allocations. A block is freed once no message in it is referenced.
type slab struct{ block []byte }

const slabSize = 256 << 10

func (s *slab) copy(b []byte) []byte {
	if len(b) > slabSize/8 {
		return bytes.Clone(b)
	}
	if cap(s.block)-len(s.block) < len(b) {
		s.block = make([]byte, 0, slabSize)
	}
	start := len(s.block)
	s.block = append(s.block, b...)
	return s.block[start:len(s.block):len(s.block)]
}

// lineReader reads lines of any length up to a maximum, without copying those that fit its
// buffer.
type lineReader struct {
	r    *bufio.Reader
	long []byte
	max  int
	n    int64 // number of the line last returned, from 1
}

func newLineReader(r io.Reader, max int) *lineReader {
	return &lineReader{r: bufio.NewReaderSize(r, 64<<10), max: max}
}

// next returns the next line without its line ending and surrounding white space, valid
// until the following call. A line longer than max is returned cut to max bytes, with
// tooLong set. At the end of the input it returns io.EOF.
func (lr *lineReader) next() (line []byte, tooLong bool, err error) {
	b, err := lr.r.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		lr.long = append(lr.long[:0], b...)
		for err == bufio.ErrBufferFull {
			b, err = lr.r.ReadSlice('\n')
			if room := lr.max - len(lr.long); room > 0 {
				lr.long = append(lr.long, b[:min(len(b), room)]...)
			}
			if len(lr.long) >= lr.max && len(b) > 0 {
				tooLong = true
			}
		}
		b = lr.long
	}
	if err != nil && err != io.EOF {
		return nil, false, err
	}
	if err == io.EOF && len(b) == 0 {
		return nil, false, io.EOF
	}
	lr.n++
	return bytes.TrimSpace(b), tooLong, nil
}
