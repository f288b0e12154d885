package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	"github.com/kustomer-worker/kustomer-worker/internal/logtext"
	"github.com/kustomer-worker/kustomer-worker/queue"
)

// dlqExportCmd writes the original lines of dead letters, for fixing and enqueueing again.
type dlqExportCmd struct {
	dlqConn
	dlqSelect
	Output  string `name:"output" short:"o" type:"path" help:"Write the lines to this file instead of stdout."`
	Reasons string `name:"reasons" type:"path" help:"Also write each line's number, sequence, class, status and reason to this file, as JSON Lines (default OUTPUT.reasons.jsonl with --output; else on stderr only)."`
}

func (c *dlqExportCmd) Help() string {
	return `Writes the original message of every dead letter selected, byte for byte, one a line: the
lines as enqueue read them, in the order of their line in the run's input (--run), else of the
dead-letter stream. The output is a JSON Lines file enqueue takes as it is: fix the lines, then
enqueue it as a new run. Each line's number in the run's input and Kustomer's reason are written
beside it, never into it (enqueue refuses fields it does not know): on stderr as
"line N (dead letter S): CLASS STATUS: REASON", and as JSON Lines in --reasons
({"line", "seq", "conversation_id", "class", "status", "reason", "output_line"}; output_line is
the line's number in the output). The dead letters stay: purge them (dlq purge --run ID --yes)
once the fixed run is applied.

Examples:
  kustomer-worker dlq export --run 20250131-3fa9c2d1e0 > failed.jsonl
  kustomer-worker dlq export --run night-1 --class rejected -o failed.jsonl   # reasons in failed.jsonl.reasons.jsonl
  $EDITOR failed.jsonl
  kustomer-worker enqueue failed.jsonl --run-id night-1-fix --wait`
}

// exportedReason is one line of --reasons.
type exportedReason struct {
	Line         int64     `json:"line,omitempty"`
	Seq          uint64    `json:"seq"`
	Conversation string    `json:"conversation_id"`
	Class        string    `json:"class"`
	Status       int       `json:"status"`
	Reason       string    `json:"reason"`
	FailedAt     time.Time `json:"failed_at"`
	OutputLine   int       `json:"output_line"`
}

func (c *dlqExportCmd) Run(ctx context.Context, e *env, g *globals) error {
	f, err := c.filter(time.Now())
	if err != nil {
		return err
	}
	reasonsPath := c.Reasons
	if reasonsPath == "" && c.Output != "" {
		reasonsPath = c.Output + ".reasons.jsonl"
	}
	s, d, err := c.open(ctx, e, g, "kustomer-worker dlq export")
	if err != nil {
		return err
	}
	defer s.close()
	var letters []*queue.DeadLetter
	if err := d.Each(ctx, f, false, func(l *queue.DeadLetter) error {
		letters = append(letters, l)
		return nil
	}); err != nil {
		return err
	}
	if f.Run != "" {
		slices.SortStableFunc(letters, func(a, b *queue.DeadLetter) int { return cmp.Compare(a.Line, b.Line) })
	}

	out := e.stdout
	var outFile *os.File
	if c.Output != "" {
		if outFile, err = os.Create(c.Output); err != nil {
			return usagef("output: %v", err)
		}
		defer outFile.Close()
		out = outFile
	}
	var reasons io.Writer = io.Discard
	var reasonsFile *os.File
	if reasonsPath != "" {
		if reasonsFile, err = os.Create(reasonsPath); err != nil {
			return usagef("reasons: %v", err)
		}
		defer reasonsFile.Close()
		reasons = reasonsFile
	}
	w := bufio.NewWriter(out)
	rw := bufio.NewWriter(reasons)
	for i, l := range letters {
		w.Write(l.Data)
		w.WriteByte('\n')
		conv := conversationOf(ctx, d, l)
		line := "-"
		if l.Line > 0 {
			line = fmt.Sprint(l.Line)
		}
		fmt.Fprintf(e.stderr, "line %s (dead letter %d, conversation %s): %s %s: %s\n", line, l.Seq, conv, l.Class, statusText(l.Status),
			oneLine(logtext.Truncate(l.Reason, 300, "…")))
		b, _ := json.Marshal(exportedReason{Line: l.Line, Seq: l.Seq, Conversation: conv, Class: string(l.Class), Status: l.Status,
			Reason: l.Reason, FailedAt: l.FailedAt.UTC(), OutputLine: i + 1})
		rw.Write(append(b, '\n'))
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if err := rw.Flush(); err != nil {
		return fmt.Errorf("reasons: %w", err)
	}
	if outFile != nil {
		if err := outFile.Close(); err != nil {
			return err
		}
	}
	if reasonsFile != nil {
		if err := reasonsFile.Close(); err != nil {
			return fmt.Errorf("reasons: %w", err)
		}
	}
	fmt.Fprintf(e.stderr, "exported %s\n", plural(len(letters), "line"))
	return nil
}
