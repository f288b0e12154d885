package integration_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// compose runs the repository's docker-compose.yml with "docker compose", or with the
// standalone docker-compose where the plugin is missing.
type compose struct {
	cmd     []string // e.g. {"docker", "compose"}
	file    string
	project string   // -p; "" for the default
	extra   []string // more -f files, overriding file
	env     []string // added to this process's environment
}

// The passwords of the compose file's NATS users in these tests (deploy/nats/auth.conf).
const (
	composeWorkerPassword   = "e2e-worker-pw"
	composeProducerPassword = "e2e-producer-pw"
)

// findCompose picks "docker compose" if it answers, else docker-compose. With neither, the
// test is skipped, or fails under KW_REQUIRE_DOCKER=1.
func findCompose(tb testing.TB) compose {
	tb.Helper()
	file := filepath.Join(suite.root, "docker-compose.yml")
	for _, cmd := range [][]string{{"docker", "compose"}, {"docker-compose"}} {
		args := append(cmd[1:len(cmd):len(cmd)], "version")
		if err := exec.Command(cmd[0], args...).Run(); err == nil {
			return compose{cmd: cmd, file: file, env: []string{
				"NATS_WORKER_PASSWORD=" + composeWorkerPassword, "NATS_PRODUCER_PASSWORD=" + composeProducerPassword}}
		}
	}
	const msg = `neither "docker compose" nor docker-compose is installed`
	if os.Getenv("KW_REQUIRE_DOCKER") == "1" {
		tb.Fatal(msg)
	}
	tb.Skip(msg)
	return compose{}
}

// run runs compose with args and returns its standard output; it fails the test on error.
func (c compose) run(tb testing.TB, timeout time.Duration, args ...string) string {
	tb.Helper()
	out, err := c.try(timeout, nil, args...)
	if err != nil {
		tb.Fatalf("%s: %v", strings.Join(c.args(args...), " "), err)
	}
	return out
}

func (c compose) args(args ...string) []string {
	all := append([]string{}, c.cmd...)
	all = append(all, "-f", c.file)
	all = append(all, c.extra...)
	if c.project != "" {
		all = append(all, "-p", c.project)
	}
	return append(all, args...)
}

// try runs compose with args and stdin (nil for none) and returns its standard output.
func (c compose) try(timeout time.Duration, stdin io.Reader, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	all := c.args(args...)
	cmd := exec.CommandContext(ctx, all[0], all[1:]...)
	cmd.Dir = suite.root
	cmd.Env = append(os.Environ(), c.env...)
	cmd.Stdin = stdin
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), &commandError{err: err, stderr: stderr.String()}
	}
	return stdout.String(), nil
}

type commandError struct {
	err    error
	stderr string
}

func (e *commandError) Error() string { return e.err.Error() + ": " + strings.TrimSpace(e.stderr) }
func (e *commandError) Unwrap() error { return e.err }

func TestComposeFile(t *testing.T) {
	imgs := setup(t)
	dc := findCompose(t)

	t.Run("is valid with every profile and the default images", func(t *testing.T) {
		// The real worker's secret file need not exist for the file to be valid.
		for _, profiles := range [][]string{nil, {"mock"}, {"kustomer"}} {
			var args []string
			for _, p := range profiles {
				args = append(args, "--profile", p)
			}
			dc.run(t, time.Minute, append(args, "config", "--quiet")...)
		}
		services := strings.Fields(dc.run(t, time.Minute, "--profile", "mock", "--profile", "kustomer", "config", "--services"))
		for _, want := range []string{"nats", "worker", "mock", "worker-mock"} {
			if !strings.Contains(" "+strings.Join(services, " ")+" ", " "+want+" ") {
				t.Errorf("services %v lack %s", services, want)
			}
		}
	})

	t.Run("the cluster override is valid with every profile and has three nodes under the workers", func(t *testing.T) {
		cl := dc
		cl.extra = []string{"-f", filepath.Join(suite.root, "docker-compose.cluster.yml")}
		for _, profiles := range [][]string{nil, {"mock"}, {"kustomer"}} {
			var args []string
			for _, p := range profiles {
				args = append(args, "--profile", p)
			}
			cl.run(t, time.Minute, append(args, "config", "--quiet")...)
		}
		cfg := cl.run(t, time.Minute, "--profile", "mock", "--profile", "kustomer", "config")
		for _, want := range []string{"nats-2:", "nats-3:", "NATS_URL: nats://nats:4222,nats://nats-2:4222,nats://nats-3:4222", "WORKER_STREAM_REPLICAS: \"3\""} {
			if !strings.Contains(cfg, want) && !strings.Contains(cfg, strings.ReplaceAll(want, `"`, "'")) {
				t.Errorf("the merged configuration lacks %s", want)
			}
		}
	})

	t.Run("mock profile processes an enqueue end to end with the local images", func(t *testing.T) {
		up := dc
		up.project = "kwe2e" + randomHex(t, 4)
		up.env = append(up.env[:len(up.env):len(up.env)],
			"NATS_IMAGE="+imgs.nats, "WORKER_IMAGE="+imgs.worker,
			// Random loopback ports, so that nothing on this machine is in the way.
			"NATS_CLIENT_PUBLISH=127.0.0.1:", "NATS_MONITOR_PUBLISH=127.0.0.1:", "MOCK_PUBLISH=127.0.0.1:",
			"MOCK_LATENCY=5ms", "MOCK_LATENCY_JITTER=5ms",
		)
		t.Cleanup(func() {
			if t.Failed() {
				out, _ := up.try(time.Minute, nil, "--profile", "mock", "logs", "--no-color", "--tail", "60")
				t.Logf("compose logs:\n%s", out)
			}
			if out, err := up.try(3*time.Minute, nil, "--profile", "mock", "down", "--volumes", "--remove-orphans", "--timeout", "15"); err != nil {
				t.Errorf("compose down: %v\n%s", err, out)
			}
		})
		up.run(t, 3*time.Minute, "--profile", "mock", "up", "--detach")

		port := func(service, p string) string {
			return strings.TrimSpace(up.run(t, time.Minute, "--profile", "mock", "port", service, p))
		}
		hc := &http.Client{Timeout: 10 * time.Second}
		t.Cleanup(hc.CloseIdleConnections)
		readyURL := "http://" + port("worker-mock", "9464") + "/readyz"
		waitFor(t, startupTimeout, "the compose worker to report itself ready", func() (bool, string) {
			s := httpStatus(hc, readyURL)
			return s == http.StatusOK, "readyz answered " + http.StatusText(s)
		})

		// The valid updates go through "kustomer-worker enqueue" run the way the docs show;
		// enqueue refuses invalid lines, so those are published directly, as a careless
		// producer would.
		ups := makeUpdates("compose", 60, 2)
		var lines bytes.Buffer
		var invalid []update
		for _, u := range ups {
			if u.invalid {
				invalid = append(invalid, u)
				continue
			}
			lines.Write(u.data)
			lines.WriteByte('\n')
		}
		if out, err := up.try(2*time.Minute, &lines, "--profile", "mock", "run", "--rm", "-T", "worker-mock", "enqueue", "-"); err != nil {
			t.Fatalf("compose run worker-mock enqueue: %v\n%s", err, out)
		}
		natsAddr := port("nats", "4222")
		if nc, err := nats.Connect("nats://"+natsAddr, nats.Timeout(10*time.Second)); err == nil {
			nc.Close()
			t.Error("a client without a user connected to the compose file's NATS; want it refused")
		}
		r := newRig(t, "nats://worker:"+composeWorkerPassword+"@"+natsAddr, "http://"+port("mock", "8080"))
		r.publish(t, invalid)
		r.waitSettled(t, 2*time.Minute)
		checkNothingLost(t, ups, r.account(t), exactlyOnce)
	})
}
