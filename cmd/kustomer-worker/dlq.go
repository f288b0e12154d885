package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kustomer-worker/kustomer-worker/internal/logtext"
	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/queue"
)

// dlqCmd reads and repairs the dead-letter stream.
type dlqCmd struct {
	List   dlqListCmd   `cmd:"" help:"List dead letters: sequence, conversation, class, status, attempts, failed-at, reason."`
	Show   dlqShowCmd   `cmd:"" help:"Show one dead letter: the original message and every header."`
	Replay dlqReplayCmd `cmd:"" help:"Publish dead letters to the work stream again; each is removed once its publish is acknowledged."`
	Purge  dlqPurgeCmd  `cmd:"" help:"Delete dead letters for good."`
	Export dlqExportCmd `cmd:"" help:"Write the original lines of dead letters (a run's, with --run) to stdout, ready to fix and enqueue again; line numbers and reasons on stderr or in --reasons."`
}

func (c *dlqCmd) Help() string {
	return `A dead letter is an update that can never succeed as it is, kept with why: class invalid (it
failed validation; no request was made), rejected (Kustomer answered a non-retryable 4xx such as
400 or 404), exhausted (retryable failures until the attempt limit) or stranded (delivered
max-deliver times without an outcome: found in the work stream and never applied). Fix the
cause, then replay.

Examples:
  kustomer-worker dlq list --class rejected
  kustomer-worker dlq list --run night-1
  kustomer-worker dlq export --run night-1 > failed.jsonl
  kustomer-worker dlq show 42
  kustomer-worker dlq replay --class exhausted
  kustomer-worker dlq show 42 --raw > fixed.json && $EDITOR fixed.json && kustomer-worker dlq replay --seq 42 --message-file fixed.json
  kustomer-worker dlq purge --status 404 --yes`
}

// dlqSelect are the filters every dlq command but show takes.
type dlqSelect struct {
	Class  []string `name:"class" sep:"," help:"Only these classes: invalid, rejected, exhausted, stranded (comma-separated or repeated)."`
	Status []int    `name:"status" sep:"," help:"Only these HTTP statuses, e.g. 400,404; 0 selects dead letters without one (comma-separated or repeated)."`
	Since  string   `name:"since" help:"Only dead letters that failed at or after this time: RFC 3339 (2025-01-31T09:00:00Z) or a duration ago (90m, 2h)."`
	Until  string   `name:"until" help:"Only dead letters that failed before this time: RFC 3339 or a duration ago."`
	RunID  string   `name:"run" help:"Only dead letters of this run (the run id enqueue printed)."`
}

func (s *dlqSelect) filter(now time.Time) (queue.DeadLetterFilter, error) {
	var f queue.DeadLetterFilter
	for _, c := range s.Class {
		switch cl := queue.DeadLetterClass(strings.TrimSpace(c)); cl {
		case queue.ClassInvalid, queue.ClassRejected, queue.ClassExhausted, queue.ClassStranded:
			f.Classes = append(f.Classes, cl)
		default:
			return f, usagef("class: %q is not invalid, rejected, exhausted or stranded", c)
		}
	}
	f.Statuses = s.Status
	if s.RunID != "" {
		if err := queue.CheckRunID(s.RunID); err != nil {
			return f, usagef("run: %v", err)
		}
		f.Run = s.RunID
	}
	var err error
	if f.Since, err = parseWhen(s.Since, now); err != nil {
		return f, usagef("since: %v", err)
	}
	if f.Until, err = parseWhen(s.Until, now); err != nil {
		return f, usagef("until: %v", err)
	}
	return f, nil
}

// parseWhen reads an RFC 3339 time or a duration before now; empty is the zero time.
func parseWhen(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("%q is neither an RFC 3339 time nor a duration such as 2h", s)
}

// dlqConn is what every dlq command needs to reach the dead-letter stream.
type dlqConn struct {
	natsFlags
	deadLetterFlags
	dialFlags
}

func (c *dlqConn) open(ctx context.Context, e *env, g *globals, name string) (*session, *queue.DeadLetterStore, error) {
	top := c.topology()
	if err := top.Validate(); err != nil {
		return nil, nil, settingError(err)
	}
	s, err := dial(ctx, e, g, &c.natsFlags, c.dialFlags, name)
	if err != nil {
		return nil, nil, err
	}
	return s, &queue.DeadLetterStore{JS: s.js, Topology: top}, nil
}

// dlqListCmd lists dead letters.
type dlqListCmd struct {
	dlqConn
	dlqSelect
	JSON bool `name:"json" help:"Print one JSON object a line, with the full reason."`
}

func (c *dlqListCmd) Help() string {
	return `Examples:
  kustomer-worker dlq list
  kustomer-worker dlq list --class rejected --status 404 --since 24h
  kustomer-worker dlq list --run 20250131-3fa9c2d1e0
  kustomer-worker dlq list --json | jq -r 'select(.class == "exhausted") | .seq'`
}

// listedDeadLetter is the JSON form of a dead letter in dlq list.
type listedDeadLetter struct {
	Seq             uint64    `json:"seq"`
	Conversation    string    `json:"conversation_id"`
	Class           string    `json:"class"`
	Status          int       `json:"status"`
	Reason          string    `json:"reason"`
	Attempts        int       `json:"attempts"`
	FailedAt        time.Time `json:"failed_at"`
	OriginalSubject string    `json:"original_subject"`
	OriginalSeq     uint64    `json:"original_seq"`
	Run             string    `json:"run,omitempty"`
	Line            int64     `json:"line,omitempty"`
}

func (c *dlqListCmd) Run(ctx context.Context, e *env, g *globals) error {
	f, err := c.filter(time.Now())
	if err != nil {
		return err
	}
	s, d, err := c.open(ctx, e, g, "kustomer-worker dlq list")
	if err != nil {
		return err
	}
	defer s.close()
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	if !c.JSON {
		if c.RunID != "" {
			fmt.Fprint(tw, "LINE\t")
		}
		fmt.Fprintln(tw, "SEQ\tCONVERSATION\tCLASS\tSTATUS\tATTEMPTS\tFAILED-AT\tREASON")
	}
	n := 0
	err = d.Each(ctx, f, true, func(l *queue.DeadLetter) error {
		n++
		conv := conversationOf(ctx, d, l)
		if c.JSON {
			return writeJSON(e.stdout, listedDeadLetter{
				Seq: l.Seq, Conversation: conv, Class: string(l.Class), Status: l.Status, Reason: l.Reason,
				Attempts: l.Attempts, FailedAt: l.FailedAt.UTC(), OriginalSubject: l.OriginalSubject, OriginalSeq: l.OriginalSeq,
				Run: l.Run, Line: l.Line,
			})
		}
		status := "-"
		if l.Status != 0 {
			status = strconv.Itoa(l.Status)
		}
		if conv == "" {
			conv = "-"
		}
		if c.RunID != "" {
			fmt.Fprintf(tw, "%d\t", l.Line)
		}
		_, err := fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%s\t%s\n", l.Seq, conv, l.Class, status, l.Attempts,
			l.FailedAt.UTC().Format(time.RFC3339), oneLine(logtext.Truncate(l.Reason, 100, "…")))
		return err
	})
	if ferr := tw.Flush(); err == nil {
		err = ferr
	}
	if err != nil {
		return err
	}
	if !c.JSON {
		fmt.Fprintln(e.stderr, plural(n, "dead letter"))
	}
	return nil
}

// conversationOf is the conversation a dead letter is about: the id ending its original
// subject (enqueue publishes to SUBJECT.<id>), else the "id" of its message.
func conversationOf(ctx context.Context, d *queue.DeadLetterStore, l *queue.DeadLetter) string {
	if i := strings.LastIndexByte(l.OriginalSubject, '.'); i >= 0 && kustomer.ValidID(l.OriginalSubject[i+1:]) {
		return l.OriginalSubject[i+1:]
	}
	data := l.Data
	if data == nil {
		full, err := d.Get(ctx, l.Seq)
		if err != nil {
			return ""
		}
		data = full.Data
	}
	var m struct {
		ID any `json:"id"`
	}
	if json.Unmarshal(data, &m) != nil || m.ID == nil {
		return ""
	}
	if s, ok := m.ID.(string); ok {
		return logtext.Truncate(s, 40, "…")
	}
	return logtext.Truncate(fmt.Sprint(m.ID), 40, "…")
}

// dlqShowCmd shows one dead letter.
type dlqShowCmd struct {
	dlqConn
	Seq  uint64 `arg:"" name:"seq" help:"Sequence of the dead letter, as dlq list shows it."`
	Raw  bool   `name:"raw" help:"Print only the original message, byte for byte: to fix it and replay it with --message-file."`
	JSON bool   `name:"json" help:"Print a JSON object with the headers and the message."`
}

func (c *dlqShowCmd) Help() string {
	return `Examples:
  kustomer-worker dlq show 42
  kustomer-worker dlq show 42 --raw > fixed.json`
}

func (c *dlqShowCmd) Run(ctx context.Context, e *env, g *globals) error {
	s, d, err := c.open(ctx, e, g, "kustomer-worker dlq show")
	if err != nil {
		return err
	}
	defer s.close()
	l, err := d.Get(ctx, c.Seq)
	if err != nil {
		return err
	}
	if c.Raw {
		_, err := e.stdout.Write(l.Data)
		return err
	}
	keys := make([]string, 0, len(l.Header))
	for k := range l.Header {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if c.JSON {
		doc := struct {
			Seq          uint64              `json:"seq"`
			Stream       string              `json:"stream"`
			Stored       time.Time           `json:"stored_at"`
			Conversation string              `json:"conversation_id"`
			Headers      map[string][]string `json:"headers"`
			Message      any                 `json:"message"`
		}{Seq: l.Seq, Stream: d.Topology.DLQStream, Stored: l.Stored.UTC(), Conversation: conversationOf(ctx, d, l), Headers: l.Header}
		if json.Valid(l.Data) {
			doc.Message = json.RawMessage(l.Data)
		} else {
			doc.Message = string(l.Data)
		}
		return writeJSON(e.stdout, doc)
	}
	w := e.stdout
	fmt.Fprintf(w, "dead letter %d of %s, stored %s\n", l.Seq, d.Topology.DLQStream, l.Stored.UTC().Format(time.RFC3339))
	if conv := conversationOf(ctx, d, l); conv != "" {
		fmt.Fprintf(w, "conversation %s\n", conv)
	}
	fmt.Fprintln(w, "\nheaders:")
	for _, k := range keys {
		for _, v := range l.Header[k] {
			fmt.Fprintf(w, "  %s: %s\n", k, v)
		}
	}
	fmt.Fprintf(w, "\nmessage (%d bytes):\n", len(l.Data))
	w.Write(l.Data)
	_, err = fmt.Fprintln(w)
	return err
}

// dlqTarget says which dead letters replay and purge act on.
type dlqTarget struct {
	dlqSelect
	Seq    []uint64 `name:"seq" sep:"," help:"Only these sequences (comma-separated or repeated)."`
	All    bool     `name:"all" help:"Every dead letter."`
	DryRun bool     `name:"dry-run" help:"Show what would be done; change nothing."`
}

func (t *dlqTarget) filter(now time.Time) (queue.DeadLetterFilter, error) {
	f, err := t.dlqSelect.filter(now)
	if err != nil {
		return f, err
	}
	f.Seqs = t.Seq
	switch {
	case t.All && !f.Empty():
		return f, usagef("all: give --all or a selection (--seq, --class, --status, --since, --until), not both")
	case !t.All && f.Empty():
		return f, usagef("say which dead letters: --seq, --class, --status, --since, --until, or --all")
	}
	return f, nil
}

// dlqReplayCmd publishes dead letters to the work stream again.
type dlqReplayCmd struct {
	dlqConn
	dlqTarget
	MessageFile string `name:"message-file" help:"With one --seq: replay this fixed message (a JSON update, - for stdin) instead of the stored one."`
	JSON        bool   `name:"json" help:"Print one JSON object: the counts and each dead letter replayed (seq, new sequence, conversation) or skipped."`
}

// replayJSON is dlq replay's --json output.
type replayJSON struct {
	DryRun   bool         `json:"dryRun,omitempty"`
	Replayed int          `json:"replayed"`
	Skipped  int          `json:"skipped"`
	Items    []replayItem `json:"items"`
	Error    string       `json:"error,omitempty"`
}

type replayItem struct {
	Seq          uint64 `json:"seq"`
	Conversation string `json:"conversation_id"`
	NewSeq       uint64 `json:"new_seq,omitempty"`
	Skipped      string `json:"skipped,omitempty"` // why, when skipped
	Run          string `json:"run,omitempty"`
	Line         int64  `json:"line,omitempty"`
}

func (c *dlqReplayCmd) Help() string {
	return `Each dead letter is published to the work stream with its original headers (minus the Dlq-*
ones) and, only once JetStream acknowledged that publish, deleted from the dead-letter stream. It
goes back to the lane it came from (its Dlq-Original-Subject): a backfill message to the backfill
lane, a live update to the live lane; one from a subject of neither goes to the live lane. A
running worker then applies it. A dead letter whose message is invalid is skipped unless
--message-file gives a fixed one. Replaying the same dead letter twice within the dedup window
publishes it once.

Examples:
  # After an outage or a bad API key, everything that ran out of attempts:
  kustomer-worker dlq replay --class exhausted

  # Check first:
  kustomer-worker dlq replay --status 404 --since 2h --dry-run

  # Fix one message, then replay it:
  kustomer-worker dlq show 42 --raw > fixed.json
  $EDITOR fixed.json
  kustomer-worker dlq replay --seq 42 --message-file fixed.json`
}

func (c *dlqReplayCmd) Run(ctx context.Context, e *env, g *globals) error {
	f, err := c.filter(time.Now())
	if err != nil {
		return err
	}
	var fixed []byte
	if c.MessageFile != "" {
		if len(c.Seq) != 1 || c.All || len(c.Class) > 0 || len(c.Status) > 0 || c.Since != "" || c.Until != "" {
			return usagef("message-file: goes with exactly one --seq and no other selection")
		}
		if fixed, err = readInput(e, c.MessageFile); err != nil {
			return usagef("message-file: %v", err)
		}
		fixed = []byte(strings.TrimSpace(string(fixed)))
		if _, err := kustomer.Decode(fixed); err != nil {
			return usagef("message-file: %v", err)
		}
	}
	s, d, err := c.open(ctx, e, g, "kustomer-worker dlq replay")
	if err != nil {
		return err
	}
	defer s.close()

	replayed, skipped := 0, 0
	doc := replayJSON{DryRun: c.DryRun, Items: []replayItem{}}
	stdout := e.stdout
	if c.JSON {
		stdout = io.Discard
	}
	err = d.Each(ctx, f, false, func(l *queue.DeadLetter) error {
		data := l.Data
		if fixed != nil {
			data = fixed
		}
		if _, err := kustomer.Decode(data); err != nil {
			skipped++
			doc.Items = append(doc.Items, replayItem{Seq: l.Seq, Conversation: conversationOf(ctx, d, l), Skipped: "invalid: " + err.Error(), Run: l.Run, Line: l.Line})
			fmt.Fprintf(e.stderr, "skipped %d: the message is invalid (%v); fix it: dlq show %d --raw, then dlq replay --seq %d --message-file FILE\n",
				l.Seq, logtext.Truncate(err.Error(), 200, "…"), l.Seq, l.Seq)
			return nil
		}
		conv := conversationOf(ctx, d, l)
		if c.DryRun {
			replayed++
			doc.Items = append(doc.Items, replayItem{Seq: l.Seq, Conversation: conv, Run: l.Run, Line: l.Line})
			fmt.Fprintf(stdout, "would replay %d (conversation %s, %s %s)\n", l.Seq, conv, l.Class, statusText(l.Status))
			return nil
		}
		ack, err := d.Replay(ctx, l, fixed)
		if err != nil {
			return err
		}
		replayed++
		doc.Items = append(doc.Items, replayItem{Seq: l.Seq, Conversation: conv, NewSeq: ack.Sequence, Run: l.Run, Line: l.Line})
		fmt.Fprintf(stdout, "replayed %d as %s sequence %d (conversation %s)\n", l.Seq, ack.Stream, ack.Sequence, conv)
		return nil
	})
	verb := "replayed"
	if c.DryRun {
		verb = "would replay"
	}
	fmt.Fprintf(stdout, "%s %d, skipped %d\n", verb, replayed, skipped)
	if c.JSON {
		doc.Replayed, doc.Skipped = replayed, skipped
		if err != nil {
			doc.Error = err.Error()
		}
		if werr := writeJSON(e.stdout, doc); werr != nil && err == nil {
			err = werr
		}
	}
	if err != nil {
		return err
	}
	onlySeqs := len(c.Class) == 0 && len(c.Status) == 0 && c.Since == "" && c.Until == ""
	if onlySeqs && len(f.Seqs) > 0 && replayed+skipped < len(slices.Compact(slices.Sorted(slices.Values(f.Seqs)))) {
		return errors.New("some sequences hold no dead letter (see dlq list)")
	}
	return nil
}

// dlqPurgeCmd deletes dead letters.
type dlqPurgeCmd struct {
	dlqConn
	dlqTarget
	Yes  bool `name:"yes" help:"Confirm: the dead letters are deleted for good."`
	JSON bool `name:"json" help:"Print one JSON object: how many were deleted (or would be) and their sequences."`
}

// purgeJSON is dlq purge's --json output.
type purgeJSON struct {
	DryRun  bool     `json:"dryRun,omitempty"`
	Deleted int      `json:"deleted"`
	Seqs    []uint64 `json:"seqs"`
	Error   string   `json:"error,omitempty"`
}

func (c *dlqPurgeCmd) Help() string {
	return `Deleted dead letters cannot be recovered: look at them first with dlq list or --dry-run.

Examples:
  kustomer-worker dlq purge --status 404 --dry-run
  kustomer-worker dlq purge --status 404 --yes
  kustomer-worker dlq purge --seq 42 --yes
  kustomer-worker dlq purge --all --yes`
}

func (c *dlqPurgeCmd) Run(ctx context.Context, e *env, g *globals) error {
	f, err := c.filter(time.Now())
	if err != nil {
		return err
	}
	if !c.Yes && !c.DryRun {
		return usagef("purge deletes dead letters for good: add --yes (or look first with --dry-run)")
	}
	s, d, err := c.open(ctx, e, g, "kustomer-worker dlq purge")
	if err != nil {
		return err
	}
	defer s.close()
	n := 0
	doc := purgeJSON{DryRun: c.DryRun, Seqs: []uint64{}}
	stdout := e.stdout
	if c.JSON {
		stdout = io.Discard
	}
	err = d.Each(ctx, f, true, func(l *queue.DeadLetter) error {
		if c.DryRun {
			n++
			doc.Seqs = append(doc.Seqs, l.Seq)
			fmt.Fprintf(stdout, "would delete %d (%s %s: %s)\n", l.Seq, l.Class, statusText(l.Status), oneLine(logtext.Truncate(l.Reason, 100, "…")))
			return nil
		}
		if err := d.Delete(ctx, l.Seq); err != nil {
			if errors.Is(err, queue.ErrNoDeadLetter) {
				return nil // deleted meanwhile
			}
			return err
		}
		n++
		doc.Seqs = append(doc.Seqs, l.Seq)
		return nil
	})
	if c.JSON {
		doc.Deleted = n
		if err != nil {
			doc.Error = err.Error()
		}
		if werr := writeJSON(e.stdout, doc); werr != nil && err == nil {
			err = werr
		}
		return err
	}
	if c.DryRun {
		fmt.Fprintln(e.stdout, "would delete", plural(n, "dead letter"))
	} else {
		fmt.Fprintln(e.stdout, "deleted", plural(n, "dead letter"))
	}
	return err
}
