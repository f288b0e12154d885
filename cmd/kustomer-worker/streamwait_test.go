package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/queue/queuetest"
)

// An enqueue in the first seconds after the workers start, before any created the streams,
// waits for them, saying so, instead of failing at once.
func TestEnqueueWaitsForTheStreamsOfAStartingWorker(t *testing.T) {
	t.Parallel()
	srv := queuetest.StartServer(t)
	_, js := queuetest.Connect(t, srv.URL())
	line := `{"id":"0123456789abcdef01234567","body":{"status":"done"}}` + "\n"
	var stderr testwait.Buffer
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		vars := map[string]string{"NATS_URL": srv.URL()}
		done <- run(ctx, []string{"enqueue", "--wait-streams", "90s", "--progress", "none", "-"}, &env{
			stdin: strings.NewReader(line), stdout: &testwait.Buffer{}, stderr: &stderr,
			getenv: func(k string) string { return vars[k] }})
	}()
	testwait.Until(t, "enqueue to say it waits for the stream", time.Minute, func() bool {
		return strings.Contains(stderr.String(), "waiting up to 1m30s for a starting worker to create it")
	})
	top := queue.Topology{DedupWindow: time.Minute}.WithDefaults()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := queue.Ensure(ctx, js, top); err != nil {
		t.Fatal(err)
	}
	if err := testwait.Recv(t, "enqueue to end", time.Minute, done); err != nil {
		t.Fatalf("enqueue: %v\n%s", err, stderr.String())
	}
	s, err := js.Stream(ctx, top.Stream)
	if err != nil {
		t.Fatal(err)
	}
	if n := s.CachedInfo().State.Msgs; n != 1 {
		t.Errorf("work stream holds %d messages; want 1", n)
	}
}

func TestEnqueueWithoutWaitFailsAtOnce(t *testing.T) {
	t.Parallel()
	srv := queuetest.StartServer(t)
	vars := map[string]string{"NATS_URL": srv.URL()}
	line := `{"id":"0123456789abcdef01234567","body":{"status":"done"}}` + "\n"
	err := run(context.Background(), []string{"enqueue", "--wait-streams", "0", "--progress", "none", "-"}, &env{
		stdin: strings.NewReader(line), stdout: &testwait.Buffer{}, stderr: &testwait.Buffer{},
		getenv: func(k string) string { return vars[k] }})
	if err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("err = %v; want the stream not found", err)
	}
}
