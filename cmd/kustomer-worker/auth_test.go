package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
)

func TestEmbeddedServerBeyondLoopback(t *testing.T) {
	t.Parallel()
	t.Run("without credentials run refuses to start, naming nats-listen", func(t *testing.T) {
		t.Parallel()
		_, port, _ := net.SplitHostPort(freeAddr(t))
		for _, listen := range []string{"0.0.0.0:" + port, "[::]:" + port} {
			_, _, err := runArgs(t, map[string]string{"KUSTOMER_API_KEY": "k"},
				"run", "--http-addr", "", "--nats-listen", listen, "--data-dir", t.TempDir())
			var ue *usageError
			if !errors.As(err, &ue) || !strings.HasPrefix(err.Error(), "nats-listen: ") {
				t.Fatalf("--nats-listen %s: err = %v; want a usage error for nats-listen", listen, err)
			}
			for _, want := range []string{"loopback", "nats-user", "NATS_PASSWORD", "nats-nkey"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("--nats-listen %s: err = %q; want it to mention %s", listen, err, want)
				}
			}
		}
	})

	t.Run("with a user and password, the commands without them are refused and with them work", func(t *testing.T) {
		t.Parallel()
		fake := kustomertest.NewServer(t, kustomertest.Config{Budget: -1})
		passFile := filepath.Join(t.TempDir(), "nats_password")
		if err := os.WriteFile(passFile, []byte("s3cret-pw\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, port, _ := net.SplitHostPort(freeAddr(t))
		d := startDaemon(t, map[string]string{"KUSTOMER_API_KEY": "test-key", "NATS_USER": "worker", "NATS_PASSWORD_FILE": passFile},
			"--nats-listen", "0.0.0.0:"+port, "--data-dir", t.TempDir(), "--kustomer-url", fake.URL, "--shutdown-timeout", "2s")
		testwait.Until(t, "/readyz", 30*time.Second, func() bool { return d.status("/readyz") == 200 })
		if !strings.Contains(d.logs.String(), "authentication=true") {
			t.Errorf("the daemon's log does not say the embedded server requires authentication:\n%s", d.logs.String())
		}
		url := "nats://127.0.0.1:" + port
		line := fmt.Sprintf(`{"id":%q,"body":{"name":"authenticated"}}`+"\n", strings.Repeat("a", 24))
		for _, args := range [][]string{{"status"}, {"enqueue", "--lane", "live", "-"}, {"dlq", "list"}} {
			err := runWith(t, map[string]string{"NATS_URL": url}, line, args...)
			if err == nil || !strings.Contains(strings.ToLower(err.Error()), "authorization") {
				t.Errorf("%s without credentials: err = %v; want an authorization refusal", args[0], err)
			}
			err = runWith(t, map[string]string{"NATS_URL": url, "NATS_USER": "worker", "NATS_PASSWORD": "wrong"}, line, args...)
			if err == nil {
				t.Errorf("%s with a wrong password: no error; want a refusal", args[0])
			}
		}
		creds := map[string]string{"NATS_URL": url, "NATS_USER": "worker", "NATS_PASSWORD": "s3cret-pw"}
		for _, args := range [][]string{{"enqueue", "--lane", "live", "-"}, {"status"}, {"dlq", "list"}} {
			if err := runWith(t, creds, line, args...); err != nil {
				t.Errorf("%s with the credentials: %v", args[0], err)
			}
		}
		testwait.Until(t, "the enqueued update to be applied", 30*time.Second, func() bool {
			c, ok := fake.Conversation(strings.Repeat("a", 24))
			return ok && c.Attributes["name"] == "authenticated"
		})
		d.signal(syscall.SIGTERM)
		if code := d.wait(10 * time.Second); code != 0 {
			t.Fatalf("exit code %d; want 0", code)
		}
	})
}

// runWith runs the command line in-process with vars as its whole environment and stdin as
// its input.
func runWith(t *testing.T, vars map[string]string, stdin string, args ...string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out, errOut bytes.Buffer
	return run(ctx, args, &env{stdin: strings.NewReader(stdin), stdout: &out, stderr: &errOut, getenv: func(k string) string { return vars[k] }})
}
