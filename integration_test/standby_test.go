package integration_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/network"

	"github.com/kustomer-worker/kustomer-worker/kustomer/kustomertest"
)

// pinnedTTL is the workers' --pinned-ttl in these tests: the longest a standby waits to take
// over from an active replica that died.
const pinnedTTL = 2 * time.Second

// natsNodes are the names (network aliases and server names) of the three NATS nodes.
var natsNodes = []string{"n1", "n2", "n3"}

// natsCluster is a cluster (see cluster_test.go) whose NATS is three nodes with routes between
// them, JetStream on each, every node keeping its store on a volume of its own.
type natsCluster struct {
	*cluster
	nodes map[string]*testcontainers.DockerContainer // by server name
}

// newNATSCluster starts three NATS nodes, the fake with mockFlags, and connects the test to
// every node through their published ports.
func newNATSCluster(tb testing.TB, imgs images, mockFlags ...string) *natsCluster {
	tb.Helper()
	ctx := context.Background()
	nw, err := network.New(ctx)
	testcontainers.CleanupNetwork(tb, nw)
	if err != nil {
		tb.Fatalf("creating a Docker network: %v", err)
	}
	c := &cluster{images: imgs, network: nw}
	nc := &natsCluster{cluster: c, nodes: map[string]*testcontainers.DockerContainer{}}

	var routes []string
	for _, n := range natsNodes {
		routes = append(routes, "nats://"+n+":6222")
	}
	// A node is up once JetStream is enabled on it, before its peers are; the cluster forms
	// once all three run (waitJetStream).
	for _, n := range natsNodes {
		volume := "kw-e2e-" + n + "-" + randomHex(tb, 6)
		nc.nodes[n] = c.start(tb, n, imgs.nats, []testcontainers.ContainerCustomizer{
			testcontainers.WithCmd("--jetstream", "--store_dir=/data", "--http_port=8222", "--server_name="+n,
				"--cluster_name=kw-e2e", "--cluster=nats://0.0.0.0:6222", "--routes="+strings.Join(routes, ","),
				"--no_advertise"),
			testcontainers.WithExposedPorts("4222/tcp", "8222/tcp"),
			testcontainers.WithMounts(testcontainers.VolumeMount(volume, "/data")),
			testcontainers.WithWaitStrategyAndDeadline(startupTimeout, httpOK("8222/tcp", "/healthz?js-enabled-only=true")),
		}, testcontainers.RemoveVolumes(volume))
	}
	c.nats = nc.nodes[natsNodes[0]]

	args := append([]string{"mock", "--addr=0.0.0.0:8080", "--log-format=json"}, mockFlags...)
	c.mock = c.start(tb, "mock", imgs.worker, []testcontainers.ContainerCustomizer{
		testcontainers.WithCmd(args...),
		testcontainers.WithExposedPorts("8080/tcp"),
		testcontainers.WithWaitStrategyAndDeadline(startupTimeout, httpOK("8080/tcp", "/_mock/stats")),
	})
	c.rig = newRig(tb, nc.urls(tb), "http://"+c.endpoint(tb, c.mock, "8080/tcp"))
	nc.waitJetStream(tb)
	return nc
}

// urls are the published client URLs of the nodes that run now.
func (nc *natsCluster) urls(tb testing.TB) string {
	tb.Helper()
	var urls []string
	for _, n := range natsNodes {
		st, err := nc.nodes[n].State(context.Background())
		if err != nil || !st.Running {
			continue
		}
		urls = append(urls, "nats://"+nc.endpoint(tb, nc.nodes[n], "4222/tcp"))
	}
	return strings.Join(urls, ",")
}

// waitJetStream waits until the cluster answers JetStream requests (its meta leader is
// elected).
func (nc *natsCluster) waitJetStream(tb testing.TB) {
	tb.Helper()
	waitFor(tb, time.Minute, "the JetStream cluster to elect a meta leader", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_, err := nc.js.AccountInfo(ctx)
		return err == nil, fmt.Sprint(err)
	})
}

// streamLeader is the node that leads the stream now.
func (nc *natsCluster) streamLeader(tb testing.TB, stream string) string {
	tb.Helper()
	var leader string
	waitFor(tb, time.Minute, "stream "+stream+" to have a leader", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		s, err := nc.js.Stream(ctx, stream)
		if err != nil {
			return false, err.Error()
		}
		info := s.CachedInfo()
		if info.Cluster == nil || info.Cluster.Leader == "" {
			return false, "no leader"
		}
		leader = info.Cluster.Leader
		return true, ""
	})
	return leader
}

// clusterWorker starts a worker against all three nodes, with replicated streams.
func (nc *natsCluster) clusterWorker(tb testing.TB, name string, env map[string]string) *testcontainers.DockerContainer {
	tb.Helper()
	all := map[string]string{
		"NATS_URL":               "nats://n1:4222,nats://n2:4222,nats://n3:4222",
		"WORKER_STREAM_REPLICAS": "3",
		"WORKER_PINNED_TTL":      pinnedTTL.String(),
	}
	maps.Copy(all, env)
	return nc.startWorker(tb, name, all)
}

// role is what a worker's /readyz says of it: "active", "standby", or "" when not ready.
func role(hc *http.Client, readyURL string) string {
	resp, err := hc.Get(readyURL)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	switch {
	case resp.StatusCode != http.StatusOK:
		return ""
	case strings.Contains(string(b), "(standby)"):
		return "standby"
	case strings.Contains(string(b), "(active"):
		return "active"
	}
	return strings.TrimSpace(string(b))
}

// convUpdates makes per updates to each of convs conversations, in the order they are to be
// published: the first update of every conversation, then the second, and so on, so that the
// updates of one conversation lie far apart in the stream. last maps each conversation id to
// the marker of its last update.
func convUpdates(prefix string, convs, per int) (ups []update, last map[string]string) {
	last = make(map[string]string, convs)
	for u := range per {
		for c := range convs {
			id := fmt.Sprintf("%024x", 0x6a00000000+c)
			marker := fmt.Sprintf("%s-%04d-%d", prefix, c, u)
			data, _ := json.Marshal(map[string]any{"id": id, "body": map[string]any{"name": marker}})
			ups = append(ups, update{marker: marker, data: data})
			last[id] = marker
		}
	}
	return ups, last
}

// checkLastUpdates checks that every conversation ends at its last update.
func (r *rig) checkLastUpdates(tb testing.TB, last map[string]string) {
	tb.Helper()
	var stale []string
	for _, id := range slices.Sorted(maps.Keys(last)) {
		var c kustomertest.Conversation
		r.getJSON(tb, "/_mock/conversations/"+id, &c)
		if got, _ := c.Attributes["name"].(string); got != last[id] {
			stale = append(stale, fmt.Sprintf("%s at %q, want %q", id, got, last[id]))
		}
	}
	tb.Logf("%d conversations checked: %d not at their last update", len(last), len(stale))
	if len(stale) > 0 {
		tb.Errorf("%d of %d conversations are not at their last update; the first ones:\n%s",
			len(stale), len(last), strings.Join(stale[:min(len(stale), 20)], "\n"))
	}
}

// checkNothingStuck checks that both lanes' consumers hold nothing and the dead-letter stream
// is empty.
func (r *rig) checkNothingStuck(tb testing.TB) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, name := range []string{consumer, backfillConsumer} {
		cons, err := r.js.Consumer(ctx, workStream, name)
		if err != nil {
			tb.Fatal(err)
		}
		info, err := cons.Info(ctx)
		if err != nil {
			tb.Fatal(err)
		}
		if info.NumAckPending != 0 || info.NumPending != 0 {
			tb.Errorf("consumer %s: %d pending, %d unacknowledged; want none", name, info.NumPending, info.NumAckPending)
		}
		if info.Config.PriorityPolicy != jetstream.PriorityPolicyPinned {
			tb.Errorf("consumer %s priority policy %v, want pinned", name, info.Config.PriorityPolicy)
		}
	}
	if dl := r.deadLetters(tb); len(dl) != 0 {
		tb.Errorf("%d dead letters, want none", len(dl))
	}
}

// TestThreeNodeClusterLosesALeaderAndTheActiveWorkerMidBackfill: 1,000 conversations x 5
// updates through two worker replicas (one active, one standby) on a three-node cluster with
// replicated streams; the node leading the work stream is killed and started again, then the
// active worker is killed. Every update must be applied, every conversation end at its last
// update, nothing be dead-lettered or left behind.
func TestThreeNodeClusterLosesALeaderAndTheActiveWorkerMidBackfill(t *testing.T) {
	imgs := setup(t)
	c := newNATSCluster(t, imgs, "--budget=-1", "--latency=5ms")
	// Paced to 50 a second so that the kills land mid-run even on a loaded machine, where
	// finding and killing the leader has taken 25 s (at 150 a second the run was then over).
	env := map[string]string{"KUSTOMER_RATE_PER_MINUTE": "3000"}
	workers := map[string]*testcontainers.DockerContainer{
		"worker-a": c.clusterWorker(t, "worker-a", env),
		"worker-b": c.clusterWorker(t, "worker-b", env),
	}
	ready := func(name string) string { return "http://" + c.endpoint(t, workers[name], "9464/tcp") + "/readyz" }

	// The backfill goes to the backfill lane, as enqueue sends it: with no live traffic, the
	// replica pinned on the backfill lane is the active one (queue.Follower).
	ups, last := convUpdates("standby", 1000, 5)
	c.publishTo(t, backfillSubject, ups)
	c.waitApplied(t, 1000, 2*time.Minute)

	// (a) The node leading the work stream dies; the stream elects another leader.
	leader := c.streamLeader(t, workStream)
	nodeKilled := time.Now()
	code, _ := kill(t, c.nodes[leader], "KILL", 30*time.Second)
	killedAt := c.stats(t).Applied
	t.Logf("killed NATS node %s, the work stream's leader, after %d applied (exit %d)", leader, killedAt, code)
	c.rig.connect(t, c.urls(t))
	newLeader := c.streamLeader(t, workStream)
	t.Logf("work stream leader now %s", newLeader)
	c.waitApplied(t, min(killedAt+500, len(ups)), 2*time.Minute)
	gap := c.longestGap(t, nodeKilled, time.Now())
	t.Logf("longest pause in requests from the node's death until 500 more were applied: %s", gap)
	if gap > 5*time.Second { // what the workers did meanwhile
		for name, w := range workers {
			logTail(t, name, w, 40)
		}
	}
	if err := c.nodes[leader].Start(context.Background()); err != nil {
		t.Fatalf("starting NATS node %s again: %v", leader, err)
	}
	c.rig.connect(t, c.urls(t))
	t.Logf("started %s again after %d applied", leader, c.stats(t).Applied)

	// (b) The active worker dies; the standby takes over.
	c.waitApplied(t, 3000, 2*time.Minute)
	var active, standby string
	waitFor(t, 30*time.Second, "one worker active and one standby", func() (bool, string) {
		ra, rb := role(c.http, ready("worker-a")), role(c.http, ready("worker-b"))
		switch {
		case ra == "active" && rb == "standby":
			active, standby = "worker-a", "worker-b"
		case rb == "active" && ra == "standby":
			active, standby = "worker-b", "worker-a"
		default:
			return false, fmt.Sprintf("worker-a %q, worker-b %q", ra, rb)
		}
		return true, ""
	})
	kill(t, workers[active], "KILL", 30*time.Second)
	killed := time.Now()
	t.Logf("SIGKILLed the active worker %s after %d applied", active, c.stats(t).Applied)
	waitFor(t, time.Minute, "the standby "+standby+" to become active", func() (bool, string) {
		r := role(c.http, ready(standby))
		return r == "active", "readyz: " + r
	})
	t.Logf("%s active %s after the kill; first request after the kill at +%s", standby,
		time.Since(killed).Round(10*time.Millisecond), c.firstRequestAfter(t, killed))

	c.waitSettled(t, 5*time.Minute)
	checkNothingLost(t, ups, c.account(t), duplicatesAllowed)
	c.checkLastUpdates(t, last)
	c.checkNothingStuck(t)
}

// longestGap is the longest time between two requests the fake received from..to, counting
// from and to themselves as the ends.
func (r *rig) longestGap(tb testing.TB, from, to time.Time) time.Duration {
	tb.Helper()
	var reqs []kustomertest.Request
	r.getJSON(tb, "/_mock/requests", &reqs)
	var longest time.Duration
	prev := from
	for _, q := range reqs {
		if q.Time.Before(from) || q.Time.After(to) {
			continue
		}
		longest = max(longest, q.Time.Sub(prev))
		prev = q.Time
	}
	return max(longest, to.Sub(prev)).Round(10 * time.Millisecond)
}

// firstRequestAfter is how long after t the fake received its first request; -1 if none yet.
func (r *rig) firstRequestAfter(tb testing.TB, t time.Time) time.Duration {
	tb.Helper()
	var reqs []kustomertest.Request
	r.getJSON(tb, "/_mock/requests", &reqs)
	for _, q := range reqs {
		if q.Time.After(t) {
			return q.Time.Sub(t).Round(10 * time.Millisecond)
		}
	}
	return -1
}
