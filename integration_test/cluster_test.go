package integration_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"maps"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"
	tclog "github.com/testcontainers/testcontainers-go/log"
	"github.com/testcontainers/testcontainers-go/network"
	"github.com/testcontainers/testcontainers-go/wait"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
)

// Settings every worker of these tests runs with, short so that the tests are fast.
const (
	// ackWait is how long a killed worker's messages wait before they are redelivered.
	ackWait = 5 * time.Second
	// shutdownTimeout is how long requests in flight may finish after SIGTERM.
	shutdownTimeout = 10 * time.Second
	// startupTimeout bounds how long a container may take to become ready.
	startupTimeout = 90 * time.Second
)

// cluster is one test's containers on a Docker network of their own: a NATS server (alias
// "nats") keeping its JetStream store on a named volume, the fake Kustomer API (alias
// "mock"), and the workers the test starts. Everything is removed when the test ends.
type cluster struct {
	*rig
	images  images
	network *testcontainers.DockerNetwork
	nats    *testcontainers.DockerContainer
	mock    *testcontainers.DockerContainer
}

// newCluster starts NATS and the fake, the fake with the given extra flags of
// "kustomer-worker mock" (e.g. "--budget=-1"), and connects the test to both through their
// published ports.
func newCluster(tb testing.TB, imgs images, mockFlags ...string) *cluster {
	tb.Helper()
	ctx := context.Background()
	nw, err := network.New(ctx)
	testcontainers.CleanupNetwork(tb, nw)
	if err != nil {
		tb.Fatalf("creating a Docker network: %v", err)
	}
	c := &cluster{images: imgs, network: nw}

	volume := "kw-e2e-nats-" + randomHex(tb, 6)
	c.nats = c.start(tb, "nats", imgs.nats, []testcontainers.ContainerCustomizer{
		testcontainers.WithCmd("--jetstream", "--store_dir=/data", "--http_port=8222", "--server_name=e2e-nats"),
		testcontainers.WithExposedPorts("4222/tcp", "8222/tcp"),
		testcontainers.WithMounts(testcontainers.VolumeMount(volume, "/data")),
		testcontainers.WithWaitStrategyAndDeadline(startupTimeout, httpOK("8222/tcp", "/healthz?js-enabled-only=true")),
	}, testcontainers.RemoveVolumes(volume))

	args := append([]string{"mock", "--addr=0.0.0.0:8080", "--log-format=json"}, mockFlags...)
	c.mock = c.start(tb, "mock", imgs.worker, []testcontainers.ContainerCustomizer{
		testcontainers.WithCmd(args...),
		testcontainers.WithExposedPorts("8080/tcp"),
		testcontainers.WithWaitStrategyAndDeadline(startupTimeout, httpOK("8080/tcp", "/_mock/stats")),
	})

	c.rig = newRig(tb, c.natsURL(tb), "http://"+c.endpoint(tb, c.mock, "8080/tcp"))
	return c
}

// start runs a container on the cluster's network under alias name, removing it (and the
// given volumes) when the test ends and printing the end of its logs if the test failed.
func (c *cluster) start(tb testing.TB, name, image string, opts []testcontainers.ContainerCustomizer, rm ...testcontainers.TerminateOption) *testcontainers.DockerContainer {
	tb.Helper()
	opts = append([]testcontainers.ContainerCustomizer{
		testcontainers.WithLogger(tclog.TestLogger(tb)),
		network.WithNetwork([]string{name}, c.network),
	}, opts...)
	ctr, err := testcontainers.Run(context.Background(), image, opts...)
	testcontainers.CleanupContainer(tb, ctr, rm...)
	if ctr != nil {
		tb.Cleanup(func() {
			if tb.Failed() {
				logTail(tb, name, ctr, 80)
			}
		})
	}
	if err != nil {
		tb.Fatalf("starting %s (%s): %v", name, image, err)
	}
	return ctr
}

// startWorker starts a worker container named name, reading from the cluster's NATS and
// writing to its fake. env overrides the defaults below (variables of "kustomer-worker run").
// It returns once the worker's /readyz answers 200.
func (c *cluster) startWorker(tb testing.TB, name string, env map[string]string) *testcontainers.DockerContainer {
	tb.Helper()
	all := map[string]string{
		"NATS_URL":                 "nats://nats:4222",
		"KUSTOMER_URL":             "http://mock:8080",
		"KUSTOMER_ALLOW_INSECURE":  "true",     // plain http to the fake in its container
		"KUSTOMER_API_KEY":         "test-key", // the fake's key, not a secret
		"KUSTOMER_RATE_PER_MINUTE": "0",        // pace by the fake's rate-limit headers alone
		"KUSTOMER_REQUEST_TIMEOUT": "5s",
		"WORKER_CONCURRENCY":       "8",
		"WORKER_ACK_WAIT":          ackWait.String(),
		"WORKER_SHUTDOWN_TIMEOUT":  shutdownTimeout.String(),
		"WORKER_HTTP_ADDR":         "0.0.0.0:9464",
		"WORKER_LOG_FORMAT":        "json",
	}
	maps.Copy(all, env)
	return c.start(tb, name, c.images.worker, []testcontainers.ContainerCustomizer{
		testcontainers.WithCmd("run"),
		testcontainers.WithEnv(all),
		testcontainers.WithExposedPorts("9464/tcp"),
		testcontainers.WithWaitStrategyAndDeadline(startupTimeout, httpOK("9464/tcp", "/readyz")),
	})
}

// httpOK is a wait strategy: it holds once GET http://127.0.0.1:<published port>/path
// answers 200. Unlike wait.ForHTTP it never asks testcontainers for the Docker host's
// address, which inside a container is a bridge gateway the test may not reach.
func httpOK(port, path string) wait.Strategy { return &loopbackHTTP{port: port, path: path} }

type loopbackHTTP struct{ port, path string }

func (s *loopbackHTTP) WaitUntilReady(ctx context.Context, target wait.StrategyTarget) error {
	hc := &http.Client{Timeout: 2 * time.Second}
	defer hc.CloseIdleConnections()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	last := "no published port yet"
	for {
		st, err := target.State(ctx)
		if err == nil && (st.Status == "exited" || st.Status == "dead") {
			return fmt.Errorf("the container %s with code %d while waiting for GET %s", st.Status, st.ExitCode, s.path)
		}
		if p, err := target.MappedPort(ctx, s.port); err == nil {
			url := "http://127.0.0.1:" + p.Port() + s.path
			code := httpStatus(hc, url)
			if code == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("GET %s answered %d", url, code)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w; %s", ctx.Err(), last)
		case <-tick.C:
		}
	}
}

// natsURL is where the test reaches NATS now; the published port changes when the container
// is started again.
func (c *cluster) natsURL(tb testing.TB) string {
	tb.Helper()
	return "nats://" + c.endpoint(tb, c.nats, "4222/tcp")
}

// endpoint is 127.0.0.1 and the host port a container's port is published on.
func (c *cluster) endpoint(tb testing.TB, ctr *testcontainers.DockerContainer, port string) string {
	tb.Helper()
	p, err := ctr.MappedPort(context.Background(), port)
	if err != nil {
		tb.Fatalf("published port of %s: %v", port, err)
	}
	return "127.0.0.1:" + p.Port()
}

// kill sends signal (e.g. "KILL", "TERM") to the container's main process, and returns the
// container's state once it has exited, and how long that took. It fails the test if the
// container is still running after within.
func kill(tb testing.TB, ctr *testcontainers.DockerContainer, signal string, within time.Duration) (exitCode int, took time.Duration) {
	tb.Helper()
	ctx := context.Background()
	start := time.Now()
	if _, err := suite.docker.ContainerKill(ctx, ctr.GetContainerID(), client.ContainerKillOptions{Signal: signal}); err != nil {
		tb.Fatalf("docker kill --signal %s: %v", signal, err)
	}
	waitFor(tb, within, "the container to exit after SIG"+signal, func() (bool, string) {
		st, err := ctr.State(ctx)
		if err != nil {
			return false, err.Error()
		}
		return !st.Running, "status " + string(st.Status)
	})
	took = time.Since(start)
	st, err := ctr.State(ctx)
	if err != nil {
		tb.Fatalf("container state: %v", err)
	}
	return st.ExitCode, took
}

// httpStatus answers the status of GET url, or 0 if there was no answer.
func httpStatus(hc *http.Client, url string) int {
	resp, err := hc.Get(url)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// logTail writes the last n lines of a container's logs to the test log.
func logTail(tb testing.TB, name string, ctr *testcontainers.DockerContainer, n int) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rc, err := ctr.Logs(ctx)
	if err != nil {
		tb.Logf("logs of %s: %v", name, err)
		return
	}
	defer rc.Close()
	var lines []string
	sc := bufio.NewScanner(rc)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	tb.Logf("last %d log lines of %s:\n%s", len(lines), name, strings.Join(lines, "\n"))
}

// waitFor checks cond every 200ms until it holds, and fails the test with what, timeout and
// cond's last status if it does not within timeout.
func waitFor(tb testing.TB, timeout time.Duration, what string, cond func() (ok bool, status string)) {
	tb.Helper()
	var status string
	if !testwait.WithinEvery(timeout, 200*time.Millisecond, func() (ok bool) { ok, status = cond(); return ok }) {
		tb.Fatalf("waited %s for %s; last status: %s", timeout, what, status)
	}
}

// randomHex returns 2n random hex characters.
func randomHex(tb testing.TB, n int) string {
	tb.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		tb.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// describe formats a worker's name and container id for logs.
func describe(name string, ctr *testcontainers.DockerContainer) string {
	return fmt.Sprintf("%s (%.12s)", name, ctr.GetContainerID())
}
