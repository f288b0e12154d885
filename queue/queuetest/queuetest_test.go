package queuetest_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/kustomer-worker/kustomer-worker/internal/leaktest"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/queue/queuetest"
)

func TestMain(m *testing.M) {
	leaktest.VerifyTestMain(m)
}

func TestServer(t *testing.T) {
	t.Run("listens on loopback and keeps its JetStream store in DataDir", func(t *testing.T) {
		srv := queuetest.StartServer(t)
		if want := "nats://127.0.0.1:" + strconv.Itoa(srv.Port()); srv.URL() != want {
			t.Errorf("URL = %s; want %s", srv.URL(), want)
		}
		if _, err := os.Stat(filepath.Join(srv.DataDir(), "jetstream")); err != nil {
			t.Errorf("no JetStream store in DataDir %q: %v", srv.DataDir(), err)
		}
	})

	t.Run("keeps port, store and messages across a restart, and the connection reconnects", func(t *testing.T) {
		dir := t.TempDir()
		srv := queuetest.StartServer(t, queuetest.WithStoreDir(dir))
		port := srv.Port()
		nc, js := queuetest.Connect(t, srv.URL())
		top := queue.Topology{}.WithDefaults()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := queue.Ensure(ctx, js, top); err != nil {
			t.Fatal(err)
		}
		for range 3 {
			if _, err := js.Publish(ctx, top.Subject, []byte("{}")); err != nil {
				t.Fatal(err)
			}
		}
		srv.Restart(t)
		if srv.Port() != port || srv.DataDir() != dir {
			t.Fatalf("after Restart: port %d, dir %s; want %d, %s", srv.Port(), srv.DataDir(), port, dir)
		}
		testwait.Until(t, "the connection to reconnect after the restart", 10*time.Second, func() bool {
			return nc.Stats().Reconnects > 0 && nc.IsConnected()
		})
		if n := queuetest.StreamMsgs(t, js, top.Stream); n != 3 {
			t.Errorf("%d messages after the restart; want 3", n)
		}
	})
}
