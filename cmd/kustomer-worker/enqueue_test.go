package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kustomer-worker/kustomer-worker/internal/leaktest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/queue/queuetest"
)

// opsRig is an embedded NATS server with the work and dead-letter streams, standing for the
// one of a running daemon, for the tests of the operator commands.
type opsRig struct {
	t   *testing.T
	url string
	nc  *nats.Conn
	js  jetstream.JetStream
	top queue.Topology
	// cons is the worker's consumer as take pulls it: one, like one replica, so that it
	// keeps the pin from one take to the next.
	cons jetstream.Consumer
}

func newOpsRig(t *testing.T) *opsRig {
	t.Helper()
	srv := queuetest.StartServer(t)
	nc, js := queuetest.Connect(t, srv.URL())
	r := &opsRig{t: t, url: srv.URL(), nc: nc, js: js,
		top: queue.Topology{DedupWindow: time.Minute, AckWait: 5 * time.Second}.WithDefaults()}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := queue.Ensure(ctx, js, r.top); err != nil {
		t.Fatal(err)
	}
	return r
}

// checkNoLeaks fails the test if it leaves goroutines behind. Call it first, so that it
// runs after every other cleanup.
func checkNoLeaks(t *testing.T) {
	t.Helper()
	t.Cleanup(func() { leaktest.VerifyNone(t, goleak.IgnoreCurrent()) })
}

// cli runs the command line in-process against the rig's NATS, with stdin as input.
func (r *opsRig) cli(stdin string, args ...string) (stdout, stderr string, err error) {
	r.t.Helper()
	return r.cliCtx(context.Background(), stdin, args...)
}

func (r *opsRig) cliCtx(ctx context.Context, stdin string, args ...string) (stdout, stderr string, err error) {
	r.t.Helper()
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	vars := map[string]string{"NATS_URL": r.url}
	err = run(ctx, args, &env{stdin: strings.NewReader(stdin), stdout: &out, stderr: &errOut, getenv: func(k string) string { return vars[k] }})
	return out.String(), errOut.String(), err
}

// workMsgs returns the messages of the work stream, in order.
func (r *opsRig) workMsgs() []*jetstream.RawStreamMsg {
	r.t.Helper()
	return r.streamMsgs(r.top.Stream)
}

func (r *opsRig) streamMsgs(stream string) []*jetstream.RawStreamMsg {
	r.t.Helper()
	ctx := context.Background()
	s, err := r.js.Stream(ctx, stream)
	if err != nil {
		r.t.Fatal(err)
	}
	st := s.CachedInfo().State
	var out []*jetstream.RawStreamMsg
	for seq := st.FirstSeq; st.Msgs > 0 && seq <= st.LastSeq; seq++ {
		if m, err := s.GetMsg(ctx, seq); err == nil {
			out = append(out, m)
		}
	}
	return out
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// convID is the conversation id number n.
func convID(n int) string { return fmt.Sprintf("%024x", 0xc0ffee000000+n) }

// updateLine is a valid message for conversation n.
func updateLine(n int, body string) string {
	return `{"id":"` + convID(n) + `","body":` + body + `}`
}

// decodeReason is what validation says of a line.
func decodeReason(t *testing.T, line string) string {
	t.Helper()
	_, err := kustomer.Decode([]byte(line))
	if err == nil {
		t.Fatalf("%s is valid", line)
	}
	return err.Error()
}

// summary reads the "name  number" lines the commands end with.
func summary(t *testing.T, out string) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 {
			m[f[0]] = f[1]
		}
	}
	return m
}

func TestEnqueueValidatesEveryLineFirst(t *testing.T) {
	checkNoLeaks(t)
	r := newOpsRig(t)
	badID := `{"id":"12345","body":{"status":"done"}}`
	badBody := `{"id":"` + convID(3) + `","body":{"priority":7,"status":"finished"}}`
	notJSON := `{"id": "` + convID(4) + `", "body": {`
	long := `{"id":"` + convID(5) + `","body":{"name":"` + strings.Repeat("x", maxLine) + `"}}`
	lines := []string{
		updateLine(1, `{"status":"done"}`), // 1
		badID,                              // 2
		"",                                 // 3: blank, skipped
		badBody,                            // 4
		updateLine(2, `{"tags":["a"]}`),    // 5
		notJSON,                            // 6
		long,                               // 7
		"   ",                              // 8: blank
	}
	file := writeFile(t, "backfill.jsonl", strings.Join(lines, "\n")+"\n")

	stdout, stderr, err := r.cli("", "enqueue", file, "--progress", "none")
	if err == nil {
		t.Fatalf("enqueue succeeded; want it to refuse the file\n%s", stdout)
	}
	var ue *usageError
	if errors.As(err, &ue) {
		t.Fatalf("err = %v: a bad file is not bad usage", err)
	}
	if want := "4 of 6 lines invalid: nothing published"; !strings.Contains(err.Error(), want) {
		t.Errorf("err = %q, want it to say %q", err, want)
	}
	want := strings.Join([]string{
		"line 2: " + decodeReason(t, badID),
		"line 4: " + decodeReason(t, badBody),
		"line 6: " + decodeReason(t, notJSON),
		fmt.Sprintf("line 7: line is longer than %d bytes", maxLine),
	}, "\n") + "\n"
	if stderr != want {
		t.Errorf("stderr =\n%s\nwant\n%s", stderr, want)
	}
	for _, reason := range []string{`"12345"`, "body.priority", "body.status"} {
		if !strings.Contains(stderr, reason) {
			t.Errorf("stderr does not name %s", reason)
		}
	}
	if msgs := r.workMsgs(); len(msgs) != 0 {
		t.Fatalf("the work stream holds %d messages; want nothing published", len(msgs))
	}

	t.Run("dry run validates without NATS", func(t *testing.T) {
		stdout, _, err := r.cli("", "enqueue", file, "--dry-run", "--skip-invalid", "--rejects", filepath.Join(t.TempDir(), "r.jsonl"),
			"--nats-url", "nats://127.0.0.1:1", "--progress", "none")
		if err != nil {
			t.Fatal(err)
		}
		if s := summary(t, stdout); s["valid"] != "2" || s["rejected"] != "4" {
			t.Fatalf("stdout =\n%s", stdout)
		}
	})
}

func TestEnqueueSkipInvalid(t *testing.T) {
	r := newOpsRig(t)
	bad := `{"id":"` + convID(2) + `","body":{"priority":9}}`
	file := writeFile(t, "in.jsonl", updateLine(1, `{"status":"done"}`)+"\n"+bad+"\n"+updateLine(3, `{"status":"open"}`)+"\n")
	rejects := filepath.Join(t.TempDir(), "rejects.jsonl")
	stdout, stderr, err := r.cli("", "enqueue", file, "--skip-invalid", "--rejects", rejects, "--progress", "none")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	if s := summary(t, stdout); s["published"] != "2" || s["rejected"] != "1" || s["duplicates"] != "0" {
		t.Fatalf("summary =\n%s", stdout)
	}
	if !strings.Contains(stdout, rejects) {
		t.Errorf("the summary does not say where the rejects are:\n%s", stdout)
	}
	data, err := os.ReadFile(rejects)
	if err != nil {
		t.Fatal(err)
	}
	var got reject
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatalf("rejects file %q: %v", data, err)
	}
	if want := (reject{Line: 2, Reason: decodeReason(t, bad), Input: bad}); got != want {
		t.Fatalf("reject = %+v, want %+v", got, want)
	}
	msgs := r.workMsgs()
	if len(msgs) != 2 || string(msgs[0].Data) != updateLine(1, `{"status":"done"}`) || string(msgs[1].Data) != updateLine(3, `{"status":"open"}`) {
		t.Fatalf("published %d messages: %v", len(msgs), msgs)
	}
}

func TestEnqueueTwicePublishesOnce(t *testing.T) {
	checkNoLeaks(t)
	r := newOpsRig(t)
	var lines []string
	for i := range 300 {
		lines = append(lines, updateLine(i%100, fmt.Sprintf(`{"priority":%d}`, 1+i%5)))
	}
	// The same update twice, with another one in between: both must be applied, in order.
	lines = append(lines, updateLine(7, `{"status":"open"}`), updateLine(7, `{"status":"done"}`), updateLine(7, `{"status":"open"}`))
	file := writeFile(t, "backfill.jsonl", strings.Join(lines, "\n")+"\n")

	stdout, _, err := r.cli("", "enqueue", file, "--progress", "none")
	if err != nil {
		t.Fatal(err)
	}
	if s := summary(t, stdout); s["published"] != "303" || s["duplicates"] != "0" {
		t.Fatalf("first run:\n%s", stdout)
	}
	stdout, _, err = r.cli("", "enqueue", file, "--progress", "none", "--window", "16")
	if err != nil {
		t.Fatal(err)
	}
	if s := summary(t, stdout); s["published"] != "0" || s["duplicates"] != "303" {
		t.Fatalf("second run:\n%s", stdout)
	}
	msgs := r.workMsgs()
	if len(msgs) != len(lines) {
		t.Fatalf("the work stream holds %d messages, want %d", len(msgs), len(lines))
	}
	for i, m := range msgs {
		u, err := kustomer.Decode(m.Data)
		if err != nil || string(m.Data) != lines[i] {
			t.Fatalf("message %d = %s, want line %d: %s", i, m.Data, i+1, lines[i])
		}
		if m.Subject != r.top.BackfillSubject+"."+u.ID {
			t.Fatalf("message %d went to %s, want the backfill subject with its id", i, m.Subject)
		}
		if m.Header.Get(jetstream.MsgIDHeader) == "" {
			t.Fatalf("message %d has no Nats-Msg-Id", i)
		}
	}

	t.Run("another run id publishes again", func(t *testing.T) {
		stdout, _, err := r.cli("", "enqueue", file, "--progress", "none", "--run-id", "again")
		if err != nil {
			t.Fatal(err)
		}
		if s := summary(t, stdout); s["published"] != "303" {
			t.Fatalf("summary:\n%s", stdout)
		}
	})
}

func TestEnqueueLanes(t *testing.T) {
	checkNoLeaks(t)
	r := newOpsRig(t)
	file := writeFile(t, "urgent.jsonl", updateLine(1, `{"status":"done"}`)+"\n")
	stdout, _, err := r.cli("", "enqueue", file, "--progress", "none", "--lane", "live")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stdout, "live lane, "+r.top.Subject+".<id>") {
		t.Errorf("the summary does not name the lane:\n%s", stdout)
	}
	stdout, _, err = r.cli("", "enqueue", file, "--progress", "none", "--run-id", "2")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stdout, "backfill lane, "+r.top.BackfillSubject+".<id>") {
		t.Errorf("the summary does not name the lane:\n%s", stdout)
	}
	msgs := r.workMsgs()
	if len(msgs) != 2 || msgs[0].Subject != r.top.Subject+"."+convID(1) || msgs[1].Subject != r.top.BackfillSubject+"."+convID(1) {
		t.Fatalf("work stream holds %d messages: %v", len(msgs), msgs)
	}
	if _, _, err := r.cli("", "enqueue", file, "--lane", "fast"); err == nil {
		t.Error("an unknown lane was accepted")
	}
}

func TestEnqueueFromStdin(t *testing.T) {
	r := newOpsRig(t)
	var in strings.Builder
	for i := range 50 {
		fmt.Fprintln(&in, updateLine(i, `{"status":"done"}`))
	}
	in.WriteString(`{"id":"` + convID(99) + `","body":{"status":"x"}}`) // last line, no newline, invalid
	stdout, stderr, err := r.cli(in.String(), "enqueue", "-", "--skip-invalid", "--rejects", filepath.Join(t.TempDir(), "r"), "--progress", "plain")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	if s := summary(t, stdout); s["published"] != "50" || s["rejected"] != "1" {
		t.Fatalf("summary:\n%s", stdout)
	}
	if !strings.HasPrefix(stderr, "line 51: body.status") {
		t.Errorf("stderr = %q, want line 51 reported", stderr)
	}
	if n := len(r.workMsgs()); n != 50 {
		t.Fatalf("the work stream holds %d messages, want 50", n)
	}
}

func TestEnqueueIDsFile(t *testing.T) {
	r := newOpsRig(t)
	ids := writeFile(t, "ids.txt", convID(1)+"\n\n  "+convID(2)+"  \nnot-an-id\n"+convID(3)+"\n")
	body := writeFile(t, "body.json", "{\n  \"status\": \"done\",\n  \"tags\": [\"closed-by-backfill\"]\n}\n")

	t.Run("a bad id stops everything", func(t *testing.T) {
		_, stderr, err := r.cli("", "enqueue", "--ids-file", ids, "--body-file", body, "--progress", "none")
		if err == nil || stderr != "line 4: \"not-an-id\" is not a conversation id (24 hex characters)\n" {
			t.Fatalf("err = %v, stderr = %q", err, stderr)
		}
	})
	t.Run("one body for every id", func(t *testing.T) {
		stdout, _, err := r.cli("", "enqueue", "--ids-file", ids, "--body-file", body, "--replace", "--skip-invalid",
			"--rejects", filepath.Join(t.TempDir(), "r"), "--progress", "none")
		if err != nil {
			t.Fatal(err)
		}
		if s := summary(t, stdout); s["published"] != "3" || s["rejected"] != "1" {
			t.Fatalf("summary:\n%s", stdout)
		}
		msgs := r.workMsgs()
		if len(msgs) != 3 {
			t.Fatalf("published %d", len(msgs))
		}
		for i, m := range msgs {
			u, err := kustomer.Decode(m.Data)
			if err != nil {
				t.Fatalf("message %d is invalid: %v", i, err)
			}
			want := kustomer.Update{ID: convID(i + 1), Replace: true, Body: json.RawMessage(`{"status":"done","tags":["closed-by-backfill"]}`)}
			if u.ID != want.ID || u.Replace != want.Replace || string(u.Body) != string(want.Body) {
				t.Fatalf("message %d = %+v, want %+v", i, u, want)
			}
		}
	})
	t.Run("ids from a pipeline with --body", func(t *testing.T) {
		stdout, _, err := r.cli(convID(8)+"\n"+convID(9)+"\n", "enqueue", "--ids-file", "-", "--body", `{"status":"done"}`, "--progress", "none")
		if err != nil {
			t.Fatal(err)
		}
		if s := summary(t, stdout); s["published"] != "2" {
			t.Fatalf("summary:\n%s", stdout)
		}
		msgs := r.workMsgs()
		if got := string(msgs[len(msgs)-1].Data); got != `{"id":"`+convID(9)+`","body":{"status":"done"}}` {
			t.Fatalf("last message = %s", got)
		}
	})
	t.Run("a bad body is bad usage", func(t *testing.T) {
		_, _, err := r.cli("", "enqueue", "--ids-file", ids, "--body", `{"priority":0}`)
		var ue *usageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), "body.priority") {
			t.Fatalf("err = %v, want a usage error naming body.priority", err)
		}
	})
}

func TestEnqueueUsage(t *testing.T) {
	r := newOpsRig(t)
	file := writeFile(t, "f.jsonl", updateLine(1, `{"status":"done"}`)+"\n")
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"no input", []string{"enqueue"}, "give a JSON Lines FILE"},
		{"two inputs", []string{"enqueue", file, "--ids-file", file, "--body", "{}"}, "not both"},
		{"a body without ids", []string{"enqueue", file, "--body", `{"status":"done"}`}, "go with --ids-file"},
		{"ids without a body", []string{"enqueue", "--ids-file", file}, "--body or --body-file"},
		{"rejects without skip-invalid", []string{"enqueue", file, "--rejects", "r"}, "--skip-invalid"},
		{"a missing file", []string{"enqueue", file + ".nope"}, "no such file"},
		{"zero publishes pending", []string{"enqueue", file, "--max-pending", "0"}, "max-pending"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := r.cli("", c.args...)
			var ue *usageError
			if !errors.As(err, &ue) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want a usage error containing %q", err, c.want)
			}
		})
	}
}

func TestEnqueueWithoutNATS(t *testing.T) {
	r := newOpsRig(t)
	file := writeFile(t, "f.jsonl", updateLine(1, `{"status":"done"}`)+"\n")
	_, _, err := r.cli("", "enqueue", file, "--nats-url", "nats://someone:secret@127.0.0.1:1", "--connect-timeout", "300ms")
	if err == nil || !strings.Contains(err.Error(), "no NATS at nats://127.0.0.1:1") {
		t.Fatalf("err = %v", err)
	}
	if strings.Contains(err.Error(), "secret") {
		t.Fatalf("the error shows the password: %v", err)
	}

	t.Run("nor without the streams, when told not to wait for them", func(t *testing.T) {
		if err := r.js.DeleteStream(context.Background(), r.top.Stream); err != nil {
			t.Fatal(err)
		}
		_, _, err := r.cli("", "enqueue", file, "--wait-streams", "0")
		if !errors.Is(err, jetstream.ErrStreamNotFound) || !strings.Contains(err.Error(), "kustomer-worker run") {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestLineReader(t *testing.T) {
	long := strings.Repeat("y", 200)
	in := "a\r\n\n  b  \n" + long + "\nc"
	lr := newLineReader(strings.NewReader(in), 100)
	lr.r = bufioSmall(strings.NewReader(in)) // exercise lines longer than the buffer
	type got struct {
		n    int64
		line string
		long bool
	}
	var all []got
	for {
		line, tooLong, err := lr.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, got{lr.n, string(line), tooLong})
	}
	want := []got{{1, "a", false}, {2, "", false}, {3, "b", false}, {4, long[:100], true}, {5, "c", false}}
	if fmt.Sprint(all) != fmt.Sprint(want) {
		t.Fatalf("lines = %v\nwant %v", all, want)
	}
}

// bufioSmall is a reader with bufio's smallest buffer, so lines exceed it.
func bufioSmall(r io.Reader) *bufio.Reader { return bufio.NewReaderSize(r, 16) }

// lockedBuffer collects output written by another goroutine.
type lockedBuffer = testwait.Buffer
