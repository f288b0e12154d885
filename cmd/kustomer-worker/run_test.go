package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kustomer-worker/kustomer-worker/internal/leaktest"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/queue/queuetest"
)

// binary is the kustomer-worker built once for the tests that run it as a process.
var (
	binaryOnce sync.Once
	binaryPath string
	binaryErr  error
)

func buildBinary(t *testing.T) string {
	t.Helper()
	binaryOnce.Do(func() {
		dir, err := os.MkdirTemp("", "kustomer-worker-bin")
		if err != nil {
			binaryErr = err
			return
		}
		binaryPath = filepath.Join(dir, "kustomer-worker")
		out, err := exec.Command("go", "build", "-race", "-o", binaryPath, ".").CombinedOutput()
		if err != nil {
			binaryErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binaryErr != nil {
		t.Fatal(binaryErr)
	}
	return binaryPath
}

// TestMain removes the built binary and fails the package's tests if any of them leaves a
// goroutine behind.
func TestMain(m *testing.M) {
	code := m.Run()
	if binaryPath != "" {
		os.RemoveAll(filepath.Dir(binaryPath))
	}
	http.DefaultClient.CloseIdleConnections() // the probes of /healthz and /readyz
	if code == 0 {
		if err := leaktest.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak: goroutines left behind:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// runArgs runs the CLI in-process and returns its output and error.
func runArgs(t *testing.T, envs map[string]string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = run(ctx, args, &env{stdin: strings.NewReader(""), stdout: &out, stderr: &errOut, getenv: func(k string) string { return envs[k] }})
	return out.String(), errOut.String(), err
}

func TestRunRefusesBadConfiguration(t *testing.T) {
	t.Parallel()
	keyFile := filepath.Join(t.TempDir(), "key")
	cases := []struct {
		name    string
		env     map[string]string
		args    []string
		setting string
	}{
		{"no key at all", nil, nil, "KUSTOMER_API_KEY or api-key-file"},
		{"both a key and a key file", map[string]string{"KUSTOMER_API_KEY": "k"}, []string{"--api-key-file", keyFile}, "KUSTOMER_API_KEY and api-key-file"},
		{"a negative rate", map[string]string{"KUSTOMER_API_KEY": "k"}, []string{"--rate-per-minute", "-5"}, "rate-per-minute"},
		{"a rate from the environment that is not a number", map[string]string{"KUSTOMER_API_KEY": "k", "KUSTOMER_RATE_PER_MINUTE": "fast"}, nil, "rate-per-minute"},
		{"zero concurrency", map[string]string{"KUSTOMER_API_KEY": "k"}, []string{"--concurrency", "0"}, "concurrency"},
		{"max-deliver under max-attempts", map[string]string{"KUSTOMER_API_KEY": "k"}, []string{"--max-deliver", "5"}, "max-deliver"},
		{"a relative Kustomer URL", map[string]string{"KUSTOMER_API_KEY": "k"}, []string{"--kustomer-url", "api.kustomerapp.com"}, "kustomer-url"},
		{"an unknown log level", map[string]string{"KUSTOMER_API_KEY": "k"}, []string{"--log-level", "loud"}, "log-level"},
		{"a bad stream name", map[string]string{"KUSTOMER_API_KEY": "k"}, []string{"--stream", "a.b"}, "stream"},
		{"half a TLS pair", map[string]string{"KUSTOMER_API_KEY": "k"}, []string{"--nats-url", "nats://127.0.0.1:1", "--nats-tls-cert", keyFile}, "nats-tls-cert"},
	}
	for _, c := range cases {
		t.Run("it names the setting for "+c.name, func(t *testing.T) {
			t.Parallel()
			args := append([]string{"run", "--http-addr", ""}, c.args...)
			_, _, err := runArgs(t, c.env, args...)
			var ue *usageError
			if !errors.As(err, &ue) {
				t.Fatalf("err = %v; want a usage error", err)
			}
			if !strings.Contains(err.Error(), c.setting) {
				t.Errorf("err = %q; want it to name %q", err, c.setting)
			}
		})
	}
}

// daemon is the built binary running `run` against a NATS server and the fake of this test.
type daemon struct {
	t      *testing.T
	cmd    *exec.Cmd
	logs   *syncWriter
	exited chan error
}

// servingAddr finds the address the daemon logged it serves /metrics, /healthz and /readyz on.
var servingAddr = regexp.MustCompile(`serving /metrics, /healthz and /readyz"?[ ,]"?addr"?[=:]"?([0-9.]+:[0-9]+)`)

// addr is the address of the daemon's /metrics, /healthz and /readyz, or "" until it serves
// them. The daemon listens on a port of its own choosing (--http-addr 127.0.0.1:0) and logs
// it: a port chosen by the test could be taken by a parallel test's server before the daemon
// binds it.
func (d *daemon) addr() string {
	if m := servingAddr.FindStringSubmatch(d.logs.String()); m != nil {
		return m[1]
	}
	return ""
}

// url is http://addr/path once the daemon serves it, waiting up to 30 seconds.
func (d *daemon) url(path string) string {
	d.t.Helper()
	testwait.Until(d.t, "the daemon to serve /metrics, /healthz and /readyz", 30*time.Second, func() bool { return d.addr() != "" })
	return "http://" + d.addr() + path
}

func startDaemon(t *testing.T, envs map[string]string, args ...string) *daemon {
	t.Helper()
	d := &daemon{t: t, logs: &syncWriter{}, exited: make(chan error, 1)}
	d.cmd = exec.Command(buildBinary(t), append([]string{"run", "--http-addr", "127.0.0.1:0", "--log-level", "debug"}, args...)...)
	d.cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	for k, v := range envs {
		d.cmd.Env = append(d.cmd.Env, k+"="+v)
	}
	d.cmd.Stdout, d.cmd.Stderr = io.Discard, d.logs
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.exited <- d.cmd.Wait() }()
	t.Cleanup(func() {
		_ = d.cmd.Process.Kill()
		<-d.exited
		if t.Failed() {
			t.Logf("daemon log:\n%s", d.logs.String())
		}
	})
	return d
}

// syncWriter collects a process's output for reading while it runs.
type syncWriter = testwait.Buffer

func (d *daemon) status(path string) int {
	addr := d.addr()
	if addr == "" {
		return 0
	}
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func (d *daemon) signal(sig syscall.Signal) {
	d.t.Helper()
	if err := d.cmd.Process.Signal(sig); err != nil {
		d.t.Fatal(err)
	}
}

// wait returns the exit code, failing the test if the process outlives timeout.
func (d *daemon) wait(timeout time.Duration) int {
	d.t.Helper()
	select {
	case <-d.exited:
		d.exited <- nil // for Cleanup
		return d.cmd.ProcessState.ExitCode()
	case <-time.After(timeout):
		d.t.Fatalf("still running %s after the signal", timeout)
		return -1
	}
}

// broker is an embedded NATS server owned by the test, standing for an external one.
type broker struct {
	js  jetstream.JetStream
	url string
}

func startBroker(t *testing.T) *broker {
	t.Helper()
	srv := queuetest.StartServer(t)
	_, js := queuetest.Connect(t, srv.URL())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := queue.Ensure(ctx, js, queue.Topology{AckWait: 2 * time.Second}.WithDefaults()); err != nil {
		t.Fatal(err)
	}
	return &broker{js: js, url: srv.URL()}
}

func (b *broker) publishUpdates(t *testing.T, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range n {
		msg := fmt.Sprintf(`{"id":"%024x","body":{"name":"n-%d"}}`, i+1, i)
		if _, err := b.js.Publish(ctx, "kustomer.conversations.update", []byte(msg)); err != nil {
			t.Fatal(err)
		}
	}
}

// checkAllApplied checks update by update that each reached the fake with its final value.
func checkAllApplied(t *testing.T, fake *kustomertest.Server, n int) {
	t.Helper()
	for i := range n {
		c, ok := fake.Conversation(fmt.Sprintf("%024x", i+1))
		if !ok || c.Attributes["name"] != "n-"+strconv.Itoa(i) {
			t.Fatalf("update %d was lost (conversation: %+v)", i, c)
		}
	}
}

func TestDaemonLosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary; skipped with -short")
	}
	const n = 400
	args := func(b *broker, fake *kustomertest.Server) []string {
		return []string{"--nats-url", b.url, "--kustomer-url", fake.URL, "--rate-per-minute", "0",
			"--ack-wait", "2s", "--shutdown-timeout", "5s", "--concurrency", "4"}
	}
	key := map[string]string{"KUSTOMER_API_KEY": "test-key"}

	t.Run("SIGTERM drains, exits 0 within the shutdown timeout, and a restart finishes the rest", func(t *testing.T) {
		b := startBroker(t)
		fake := kustomertest.NewServer(t, kustomertest.Config{Budget: -1, Latency: 10 * time.Millisecond})
		b.publishUpdates(t, n)
		d := startDaemon(t, key, args(b, fake)...)
		testwait.Until(t, "some updates applied", 30*time.Second, func() bool { return fake.Stats().Applied > 30 })
		d.signal(syscall.SIGTERM)
		if code := d.wait(10 * time.Second); code != 0 {
			t.Fatalf("exit code %d after SIGTERM; want 0\n%s", code, d.logs)
		}
		if fake.Stats().Applied >= n {
			t.Fatal("everything was applied before the signal; the test needs a backlog")
		}
		startDaemon(t, key, args(b, fake)...)
		testwait.Until(t, "the work stream to empty", 60*time.Second, func() bool { return queuetest.StreamMsgs(t, b.js, "KUSTOMER_UPDATES") == 0 })
		checkAllApplied(t, fake, n)
	})

	t.Run("SIGKILL mid-run loses nothing once restarted", func(t *testing.T) {
		b := startBroker(t)
		fake := kustomertest.NewServer(t, kustomertest.Config{Budget: -1, Latency: 10 * time.Millisecond})
		b.publishUpdates(t, n)
		d := startDaemon(t, key, args(b, fake)...)
		testwait.Until(t, "some updates applied", 30*time.Second, func() bool { return fake.Stats().Applied > 30 })
		d.signal(syscall.SIGKILL)
		d.wait(10 * time.Second)
		startDaemon(t, key, args(b, fake)...)
		testwait.Until(t, "the work stream to empty", 60*time.Second, func() bool { return queuetest.StreamMsgs(t, b.js, "KUSTOMER_UPDATES") == 0 })
		checkAllApplied(t, fake, n)
		if dl := queuetest.StreamMsgs(t, b.js, "KUSTOMER_UPDATES_DLQ"); dl != 0 {
			t.Errorf("%d dead letters; want none", dl)
		}
	})

	t.Run("a refused key fails /readyz until the key file is rewritten", func(t *testing.T) {
		b := startBroker(t)
		fake := kustomertest.NewServer(t, kustomertest.Config{Budget: -1})
		keyFile := filepath.Join(t.TempDir(), "key")
		if err := os.WriteFile(keyFile, []byte("old-key\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		b.publishUpdates(t, 20)
		d := startDaemon(t, nil, append(args(b, fake), "--api-key-file", keyFile)...)
		testwait.Until(t, "/healthz", 20*time.Second, func() bool { return d.status("/healthz") == 200 })
		testwait.Until(t, "/readyz to fail", 20*time.Second, func() bool { return d.status("/readyz") == 503 })
		if dl := queuetest.StreamMsgs(t, b.js, "KUSTOMER_UPDATES_DLQ"); dl != 0 {
			t.Fatalf("%d dead letters for a key problem; want none", dl)
		}
		if err := os.WriteFile(keyFile, []byte("test-key\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		testwait.Until(t, "the work stream to empty", 60*time.Second, func() bool { return queuetest.StreamMsgs(t, b.js, "KUSTOMER_UPDATES") == 0 })
		testwait.Until(t, "/readyz to pass", 10*time.Second, func() bool { return d.status("/readyz") == 200 })
		checkAllApplied(t, fake, 20)
		if strings.Contains(d.logs.String(), "old-key") || strings.Contains(d.logs.String(), "test-key") {
			t.Error("the API key appears in the log")
		}
	})

	t.Run("serves Go's profiles on the metrics address only with --pprof", func(t *testing.T) {
		b := startBroker(t)
		fake := kustomertest.NewServer(t, kustomertest.Config{Budget: -1})
		plain := startDaemon(t, key, args(b, fake)...)
		profiled := startDaemon(t, key, append(args(b, fake), "--pprof")...)
		for _, d := range []*daemon{plain, profiled} {
			testwait.Until(t, "/healthz", 20*time.Second, func() bool { return d.status("/healthz") == 200 })
		}
		if got := plain.status("/debug/pprof/"); got != http.StatusNotFound {
			t.Errorf("without --pprof, /debug/pprof/ answers %d; want 404", got)
		}
		for _, path := range []string{"/debug/pprof/", "/debug/pprof/goroutine?debug=1", "/debug/pprof/block", "/debug/pprof/profile?seconds=1"} {
			if got := profiled.status(path); got != http.StatusOK {
				t.Errorf("with --pprof, %s answers %d; want 200", path, got)
			}
		}
	})

	t.Run("with no NATS URL it runs on the embedded server and keeps the backlog across restarts", func(t *testing.T) {
		fake := kustomertest.NewServer(t, kustomertest.Config{Budget: -1, Latency: 5 * time.Millisecond})
		dataDir, listen := t.TempDir(), freeAddr(t)
		embArgs := []string{"--data-dir", dataDir, "--nats-listen", listen, "--kustomer-url", fake.URL, "--shutdown-timeout", "2s"}
		d := startDaemon(t, key, embArgs...)
		testwait.Until(t, "/readyz", 20*time.Second, func() bool { return d.status("/readyz") == 200 })
		nc, js := queuetest.Connect(t, "nats://"+listen)
		b := &broker{js: js}
		b.publishUpdates(t, 200)
		testwait.Until(t, "some updates applied", 30*time.Second, func() bool { return fake.Stats().Applied > 10 })
		nc.Close()
		d.signal(syscall.SIGTERM)
		if code := d.wait(10 * time.Second); code != 0 {
			t.Fatalf("exit code %d; want 0", code)
		}
		d = startDaemon(t, key, embArgs...)
		testwait.Until(t, "every update applied", 60*time.Second, func() bool { return fake.Stats().Applied >= 200 })
		checkAllApplied(t, fake, 200)
		d.signal(syscall.SIGTERM)
		if code := d.wait(10 * time.Second); code != 0 {
			t.Fatalf("exit code %d; want 0", code)
		}
	})
}
