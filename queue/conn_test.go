package queue_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/kustomer-worker/kustomer-worker/queue"
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
