package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
	"github.com/kustomer-worker/kustomer-worker/queue/queuetest"
)

// selfSigned writes a CA certificate for 127.0.0.1 to dir and returns its path and the server
// side of it.
func selfSigned(t *testing.T, dir string) (caFile string, cfg *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "kustomer-worker test NATS"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	caFile = filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return caFile, &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, MinVersion: tls.VersionTLS12}
}

// natsServer starts a real nats-server in the test, with or without JetStream, users and TLS.
func natsServer(t *testing.T, jetStream bool, users []*server.User, tlsConfig *tls.Config, port int) string {
	t.Helper()
	opts := &server.Options{Host: "127.0.0.1", Port: port, NoLog: true, NoSigs: true, JetStream: jetStream, StoreDir: t.TempDir(), Users: users}
	if tlsConfig != nil {
		opts.TLSConfig, opts.TLS, opts.TLSTimeout = tlsConfig, true, 2
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	if jetStream && !srv.JetStreamEnabled() {
		t.Fatal("JetStream not enabled")
	}
	return "nats://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(srv.Addr().(*net.TCPAddr).Port))
}

// inProcess is `run` in this process, with a context the test ends.
type inProcess struct {
	logs   *syncWriter
	cancel context.CancelFunc
	done   chan error
}

func startInProcess(t *testing.T, envs map[string]string, args ...string) *inProcess {
	t.Helper()
	p := &inProcess{logs: &syncWriter{}, done: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	e := &env{stdin: strings.NewReader(""), stdout: io.Discard, stderr: p.logs, getenv: func(k string) string { return envs[k] }}
	go func() {
		p.done <- run(ctx, append([]string{"run", "--http-addr", "127.0.0.1:0", "--log-level", "debug"}, args...), e)
	}()
	t.Cleanup(func() {
		cancel()
		<-p.done
		p.done <- nil
		if t.Failed() {
			t.Logf("log:\n%s", p.logs)
		}
	})
	return p
}

func (p *inProcess) get(path string) (int, string) {
	m := servingAddr.FindStringSubmatch(p.logs.String()) // the port the daemon picked
	if m == nil {
		return 0, ""
	}
	resp, err := http.Get("http://" + m[1] + path)
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func TestStartFailsAtOnceOnWhatWaitingCannotFix(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	caFile, serverTLS := selfSigned(t, dir)
	secure := natsServer(t, true, []*server.User{{Username: "app", Password: "right-password"}}, serverTLS, -1)
	noJetStream := natsServer(t, false, nil, nil, -1)
	fake := kustomertest.NewServer(t, kustomertest.Config{Budget: -1})
	withKey := func(kv ...string) map[string]string {
		m := map[string]string{"KUSTOMER_API_KEY": "test-key"}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	cases := []struct {
		name  string
		env   map[string]string
		args  []string
		wants []string
	}{
		{"a wrong password", withKey("NATS_PASSWORD", "wrong-password"),
			[]string{"--nats-url", secure, "--nats-user", "app", "--nats-tls-ca", caFile},
			[]string{"NATS at " + secure, "authorization refused", "hint: check --nats-user with NATS_PASSWORD"}},
		{"an unknown user", withKey("NATS_PASSWORD", "right-password"),
			[]string{"--nats-url", secure, "--nats-user", "nobody", "--nats-tls-ca", caFile},
			[]string{"authorization refused"}},
		{"a server certificate nobody vouches for", withKey("NATS_PASSWORD", "right-password"),
			[]string{"--nats-url", secure, "--nats-user", "app"},
			[]string{"NATS at " + secure, "TLS failure", "hint: check that --nats-tls-ca"}},
		{"a server without JetStream", withKey(),
			[]string{"--nats-url", noJetStream},
			[]string{"NATS at " + noJetStream, "JetStream not enabled", "hint: enable JetStream"}},
		{"a key file that does not exist", map[string]string{},
			[]string{"--nats-url", secure, "--api-key-file", filepath.Join(dir, "no-such-key")},
			[]string{"api-key-file " + filepath.Join(dir, "no-such-key"), "Kustomer API key unreadable", "hint: check the path given to --api-key-file"}},
		{"credentials in the URL are not shown", withKey(),
			[]string{"--nats-url", strings.Replace(secure, "nats://", "nats://app:wrong-password@", 1), "--nats-tls-ca", caFile},
			[]string{"NATS at " + secure + ":", "authorization refused"}},
	}
	for _, c := range cases {
		t.Run(c.name+" ends run with one line and exit status 1", func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			_, stderr, err := runArgs(t, c.env, append([]string{"run", "--http-addr", "", "--kustomer-url", fake.URL}, c.args...)...)
			if err == nil {
				t.Fatal("run succeeded")
			}
			var ue *usageError
			if errors.As(err, &ue) {
				t.Errorf("err = %v: a usage error (exit 2); want exit 1", err)
			}
			if took := time.Since(start); took > 10*time.Second {
				t.Errorf("took %s: waited for what waiting cannot fix", took)
			}
			msg := err.Error()
			if strings.Contains(msg, "\n") {
				t.Errorf("more than one line: %q", msg)
			}
			for _, want := range c.wants {
				if !strings.Contains(msg, want) {
					t.Errorf("err = %q; want it to contain %q", msg, want)
				}
			}
			for _, secret := range []string{"wrong-password", "right-password", "test-key"} {
				if strings.Contains(msg, secret) || strings.Contains(stderr, secret) {
					t.Errorf("a secret in the output: %q\n%s", msg, stderr)
				}
			}
		})
	}

	t.Run("the operator commands name a refused password too", func(t *testing.T) {
		t.Parallel()
		for _, cmd := range [][]string{{"status"}, {"dlq", "list"}} {
			_, _, err := runArgs(t, withKey("NATS_PASSWORD", "wrong-password"),
				append(cmd, "--nats-url", secure, "--nats-user", "app", "--nats-tls-ca", caFile)...)
			if err == nil || !strings.Contains(err.Error(), "authorization refused") || strings.Contains(err.Error(), "wrong-password") {
				t.Errorf("%v: err = %v; want the refusal named, without the password", cmd, err)
			}
		}
	})

	t.Run("the right password over TLS starts the daemon", func(t *testing.T) {
		t.Parallel()
		p := startInProcess(t, withKey("NATS_PASSWORD", "right-password"),
			"--nats-url", secure, "--nats-user", "app", "--nats-tls-ca", caFile, "--kustomer-url", fake.URL)
		testwait.Until(t, "/readyz to pass", 20*time.Second, func() bool { code, _ := p.get("/readyz"); return code == 200 })
	})
}

func TestExitStatusOfAStartFailureIsOne(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary; skipped with -short")
	}
	t.Parallel()
	noJetStream := natsServer(t, false, nil, nil, -1)
	d := startDaemon(t, map[string]string{"KUSTOMER_API_KEY": "k"}, "--nats-url", noJetStream)
	if code := d.wait(30 * time.Second); code != 1 {
		t.Errorf("exit status %d; want 1\n%s", code, d.logs)
	}
	if !strings.Contains(d.logs.String(), "kustomer-worker: NATS at "+noJetStream+": JetStream not enabled") {
		t.Errorf("the last line does not name the cause and the place:\n%s", d.logs)
	}
}

func TestUnreachableNATSIsWaitedOutVisibly(t *testing.T) {
	// Not parallel: the port freeAddr found must stay free until the test starts NATS on it,
	// and a NATS server of a parallel test could take it meanwhile.
	addr := freeAddr(t)
	_, portText, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(portText)
	fake := kustomertest.NewServer(t, kustomertest.Config{Budget: -1})
	p := startInProcess(t, map[string]string{"KUSTOMER_API_KEY": "test-key"}, "--nats-url", "nats://"+addr, "--kustomer-url", fake.URL)

	testwait.Until(t, "/healthz while NATS is away", 5*time.Second, func() bool { code, _ := p.get("/healthz"); return code == 200 })
	var code int
	var body string
	if !testwait.Within(5*time.Second, func() bool {
		code, body = p.get("/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "waiting for NATS at nats://"+addr) && strings.Contains(body, "connection refused")
	}) {
		t.Errorf("/readyz = %d %q; want 503 naming NATS, its URL and the cause", code, body)
	}
	testwait.Until(t, "a WARN naming the cause", 5*time.Second, func() bool {
		return strings.Contains(p.logs.String(), `level=WARN msg="NATS unreachable; waiting for it" url=nats://`+addr+` error="connection refused`)
	})

	natsServer(t, true, nil, nil, port)
	testwait.Until(t, "/readyz to pass once NATS is there", 30*time.Second, func() bool { code, _ := p.get("/readyz"); return code == 200 })
	testwait.Until(t, "the end of the wait logged", 5*time.Second, func() bool {
		return strings.Contains(p.logs.String(), `level=INFO msg="connected to NATS" server=nats://`+addr+` waited=`)
	})
	logs := p.logs.String()
	if n := strings.Count(logs, `msg="connected to NATS"`) + strings.Count(logs, "NATS reachable"); n != 1 {
		t.Errorf("%d INFO lines for the end of the wait; want 1 (connected, with the time waited)", n)
	}
	if n := strings.Count(p.logs.String(), "NATS unreachable; waiting for it"); n != 1 {
		t.Errorf("%d lines for the start of the wait; want 1 (then growing intervals)", n)
	}
}

func TestASignalWhileWaitingForNATSIsANormalStop(t *testing.T) {
	t.Parallel()
	p := startInProcess(t, map[string]string{"KUSTOMER_API_KEY": "test-key"}, "--nats-url", "nats://127.0.0.1:1") // nothing listens there
	testwait.Until(t, "the wait to begin", 5*time.Second, func() bool {
		return strings.Contains(p.logs.String(), "NATS unreachable; waiting for it")
	})
	p.cancel()
	err := testwait.Recv(t, "run to return after the signal", 10*time.Second, p.done)
	p.done <- err
	if err != nil {
		t.Errorf("run = %v; want nil (exit status 0): a signal is a normal stop", err)
	}
	if !strings.Contains(p.logs.String(), `msg="stopped before NATS could be reached"`) {
		t.Errorf("no line saying why it stopped:\n%s", p.logs)
	}
}

// Issue 10: after start, a lost NATS server was reported as "error=reconnecting" every time,
// /readyz said only "not connected to NATS", and its return wrote two INFO lines.
func TestNATSLostAfterStartIsWaitedOutVisibly(t *testing.T) {
	// Not parallel: the stopped server's port must stay free until it starts again.
	srv := queuetest.StartServer(t)
	fake := kustomertest.NewServer(t, kustomertest.Config{Budget: -1})
	p := startInProcess(t, map[string]string{"KUSTOMER_API_KEY": "test-key"}, "--nats-url", srv.URL(), "--kustomer-url", fake.URL)
	testwait.Until(t, "/readyz to pass", 20*time.Second, func() bool { code, _ := p.get("/readyz"); return code == 200 })

	srv.Embedded().Shutdown()
	var code int
	var body string
	if !testwait.Within(10*time.Second, func() bool {
		code, body = p.get("/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "not connected to NATS: ") && strings.Contains(body, "connection refused")
	}) {
		t.Errorf("/readyz = %d %q; want 503 with the cause", code, body)
	}
	testwait.Until(t, "a repeated WARN naming the cause", 20*time.Second, func() bool {
		return strings.Contains(p.logs.String(), `level=WARN msg="NATS still unreachable; waiting for it" url=`+srv.URL()+` error="dial tcp`)
	})

	queuetest.StartServer(t, queuetest.WithPort(srv.Port()), queuetest.WithStoreDir(srv.DataDir()))
	testwait.Until(t, "/readyz to pass once NATS is back", 30*time.Second, func() bool { code, _ := p.get("/readyz"); return code == 200 })
	logs := p.logs.String()
	if n := strings.Count(logs, `msg="disconnected from NATS; reconnecting"`); n != 1 {
		t.Errorf("%d lines for the start of the outage; want 1", n)
	}
	if n := strings.Count(logs, "error=reconnecting"); n != 0 {
		t.Errorf("%d lines without the cause", n)
	}
	if n := strings.Count(logs, `level=INFO msg="reconnected to NATS"`) + strings.Count(logs, "NATS reachable"); n != 1 {
		t.Errorf("%d INFO lines for the end of the outage; want 1", n)
	}
	if !strings.Contains(logs, `level=INFO msg="reconnected to NATS" server=`+srv.URL()+` after=`) {
		t.Errorf("the end of the outage does not say how long it lasted:\n%s", logs)
	}
}

func TestKustomerUnreachableIsNamedOnce(t *testing.T) {
	t.Parallel()
	b := startBroker(t)
	closed := freeAddr(t) // nothing listens there
	b.publishUpdates(t, 5)
	p := startInProcess(t, map[string]string{"KUSTOMER_API_KEY": "test-key"}, "--nats-url", b.url,
		"--kustomer-url", "http://"+closed, "--max-attempts", "50", "--max-deliver", "100")
	testwait.Until(t, "the outage breaker to take over", 30*time.Second, func() bool {
		return strings.Contains(p.logs.String(), "Kustomer unavailable: pausing every request")
	})
	logs := p.logs.String()
	want := `level=ERROR msg="cannot reach Kustomer: connection refused: is --kustomer-url right?" kustomer_url=http://` + closed
	if n := strings.Count(logs, want); n != 1 {
		t.Errorf("%d lines %q; want exactly 1", n, want)
	}
}

func TestAFloodOfInvalidMessagesKeepsTheLogReadable(t *testing.T) {
	t.Parallel()
	b := startBroker(t)
	fake := kustomertest.NewServer(t, kustomertest.Config{Budget: -1})
	const n = 300
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range n {
		if _, err := b.js.Publish(ctx, "kustomer.conversations.update", []byte(fmt.Sprintf(`{"id":"not-an-id-%d"}`, i))); err != nil {
			t.Fatal(err)
		}
	}
	p := startInProcess(t, map[string]string{"KUSTOMER_API_KEY": "test-key"}, "--nats-url", b.url, "--kustomer-url", fake.URL)
	testwait.Until(t, "every message dead-lettered", 60*time.Second, func() bool {
		return queuetest.StreamMsgs(t, b.js, "KUSTOMER_UPDATES_DLQ") == n
	})
	testwait.Until(t, "the held-back lines counted as a metric", 10*time.Second, func() bool {
		_, body := p.get("/metrics")
		return strings.Contains(body, `kustomer_worker_log_lines_held_back_total{kind="WARN dead-lettered class=invalid"}`)
	})
	p.cancel()
	if err := testwait.Recv(t, "run to return", 30*time.Second, p.done); err != nil {
		t.Fatal(err)
	}
	p.done <- nil
	logs := p.logs.String()
	if got := strings.Count(logs, `msg=dead-lettered`); got > 10 {
		t.Errorf("%d dead-lettered lines for %d invalid messages; want a handful and a summary", got, n)
	}
	if !strings.Contains(logs, "× WARN dead-lettered class=invalid") {
		t.Errorf("no summary of the held-back lines:\n%s", logs)
	}
	var buf bytes.Buffer
	buf.WriteString(logs)
	if lines := strings.Count(buf.String(), "\n"); lines > 60 {
		t.Errorf("%d log lines for %d invalid messages", lines, n)
	}
}

func TestAnUnusableDataDirIsNamed(t *testing.T) {
	t.Parallel()
	notADir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notADir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, _, err := runArgs(t, map[string]string{"KUSTOMER_API_KEY": "k"}, "run", "--http-addr", "",
		"--kustomer-url", "http://127.0.0.1:1", "--data-dir", notADir, "--nats-listen", "127.0.0.1:-1")
	var ue *usageError
	if !errors.As(err, &ue) || !strings.HasPrefix(err.Error(), "data-dir: ") || !strings.Contains(err.Error(), notADir) {
		t.Fatalf("err = %v; want a usage error for data-dir, quoting it", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("took %s to report it", took)
	}
}

// A single replica starting on a fresh stream is the active one from its first pull: it says
// so, and it does not take the messages of its own first pull for another replica's.
func TestASingleReplicaStartsActiveAndHoldsNothingBack(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary; skipped with -short")
	}
	const convs, updates = 40, 200
	b := startBroker(t)
	fake := kustomertest.NewServer(t, kustomertest.Config{Budget: -1})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d := startDaemon(t, map[string]string{"KUSTOMER_API_KEY": "test-key"},
		"--nats-url", b.url, "--kustomer-url", fake.URL, "--rate-per-minute", "0")
	testwait.Until(t, "the daemon to create the stream", 30*time.Second, func() bool { return strings.Contains(d.logs.String(), "serving /metrics") })
	for i := range updates {
		msg := fmt.Sprintf(`{"id":"%024x","body":{"name":"u-%d"}}`, i%convs+1, i)
		if _, err := b.js.Publish(ctx, "kustomer.conversations.update", []byte(msg)); err != nil {
			t.Fatal(err)
		}
	}
	testwait.Until(t, "every update applied", 60*time.Second, func() bool { return fake.Stats().Applied >= updates })
	logs := d.logs.String()
	if !strings.Contains(logs, "role: active") {
		t.Errorf("the log never says the replica is active:\n%s", logs)
	}
	for _, lie := range []string{"role: standby", "holding back conversations"} {
		if strings.Contains(logs, lie) {
			t.Errorf("a single replica on a fresh stream logs %q:\n%s", lie, logs)
		}
	}
}
