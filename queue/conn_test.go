package queue_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/queue/queuetest"
)

func TestConnectWaitTellsWaitingFromGivingUp(t *testing.T) {
	t.Parallel()
	log := slog.New(slog.DiscardHandler)

	t.Run("a refused password ends it at once, as a permanent ConnectError", func(t *testing.T) {
		t.Parallel()
		srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true,
			Users: []*server.User{{Username: "app", Password: "right"}}})
		if err != nil {
			t.Fatal(err)
		}
		srv.Start()
		t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
		if !srv.ReadyForConnections(10 * time.Second) {
			t.Fatal("server not ready")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		waited := 0
		_, err = queue.ConnectWait(ctx, queue.ConnConfig{URL: srv.ClientURL(), User: "app", Password: "wrong"}, log,
			func(int, *queue.ConnectError) { waited++ })
		var ce *queue.ConnectError
		if !errors.As(err, &ce) || ce.Kind != queue.ConnectAuth || !ce.Kind.Permanent() || waited != 0 {
			t.Fatalf("err = %v (waited %d times); want a permanent authorization error at once", err, waited)
		}
	})

	t.Run("a refused connection is waited out until the context ends", func(t *testing.T) {
		t.Parallel()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var kinds []queue.ConnectKind
		_, err = queue.ConnectWait(ctx, queue.ConnConfig{URL: "nats://" + addr}, log, func(attempt int, ce *queue.ConnectError) {
			kinds = append(kinds, ce.Kind)
			if attempt == 3 {
				cancel()
			}
		})
		if !errors.Is(err, context.Canceled) || len(kinds) != 3 || kinds[0] != queue.ConnectUnreachable {
			t.Fatalf("err = %v after %v; want three waits for an unreachable server, then the context's end", err, kinds)
		}
	})
}

// A connection whose first attempts failed (Connect keeps trying in the background) reports
// its later outages like any other: the failed first attempts must not count as an outage
// that never ended.
func TestConnectAfterFailedFirstAttemptsReportsLaterOutages(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	var logs testwait.Buffer // nats.go's handlers write it from their goroutines
	nc, err := queue.Connect(queue.ConnConfig{URL: fmt.Sprintf("nats://127.0.0.1:%d", port)}, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	testwait.Until(t, "a failed first attempt", 10*time.Second, func() bool { return queue.OutageCause(nc) != nil })
	srv := queuetest.StartServer(t, queuetest.WithPort(port))
	testwait.Until(t, "the connection", 20*time.Second, nc.IsConnected)
	srv.Embedded().Shutdown()
	testwait.Until(t, "the outage's WARN", 10*time.Second, func() bool {
		return strings.Contains(logs.String(), "disconnected from NATS; reconnecting")
	})
	if err := queue.OutageCause(nc); err == nil {
		t.Error("OutageCause = nil while the server is down")
	}
}
