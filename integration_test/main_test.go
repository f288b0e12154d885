// Package integration_test runs kustomer-worker end to end in real containers: the worker
// image and a NATS image, both built once per run by scripts/build-images.sh from binaries
// compiled on this machine, and the fake Kustomer API in a container of the worker image. Each
// test gets a Docker network, a NATS server with its store on a volume, the fake and its
// workers, and removes them when it ends. The test process reaches NATS and the fake only
// through their ports published on 127.0.0.1.
//
// "Nothing lost" is checked update by update: every update carries a unique marker in
// body.name, and each must have been answered 200 by the fake, or sit in the dead-letter
// stream with a reason.
//
// The tests need a Docker engine. Testcontainers' Ryuk sidecar must be off, because its image
// cannot be pulled without a registry (the tests clean up after themselves):
//
//	TESTCONTAINERS_RYUK_DISABLED=true go test -count=1 -timeout 30m ./integration_test/
//
// Without Docker, or in -short mode, every test is skipped with the reason. With
// KW_REQUIRE_DOCKER=1 (CI), a missing Docker engine or Ryuk setting fails the run instead.
// KW_KEEP_IMAGES=1 keeps the images built for the run.
package integration_test

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/kustomer-worker/kustomer-worker/internal/leaktest"
	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"
	"go.uber.org/goleak"
)

// suite is what TestMain prepared for every test. It is written once, before m.Run, and only
// read afterwards.
var suite struct {
	skip   string // why the tests cannot run here; "" when they can
	images images
	docker *testcontainers.DockerClient
	root   string // the repository root
}

// images are the names of the images built for this run.
type images struct {
	worker string // kustomer-worker, also serving the fake Kustomer API ("mock")
	nats   string // nats-server with JetStream, from the module version go.mod pins
}

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(runTests(m))
}

// runTests prepares the suite, runs the tests and removes what the run built. It returns the
// process's exit status.
func runTests(m *testing.M) int {
	required := os.Getenv("KW_REQUIRE_DOCKER") == "1"
	reason, err := prepare()
	switch {
	case err != nil:
		fmt.Fprintln(os.Stderr, "integration_test:", err)
		return 1
	case reason != "" && required:
		fmt.Fprintf(os.Stderr, "integration_test: FAIL: %s (KW_REQUIRE_DOCKER=1 makes this a failure)\n", reason)
		return 1
	case reason != "":
		suite.skip = reason
		fmt.Fprintln(os.Stderr, "integration_test: skipping every test:", reason)
		return m.Run()
	}
	// Goroutines running now belong to the Docker client and live as long as the process.
	before := goleak.IgnoreCurrent()
	code := m.Run()
	if os.Getenv("KW_KEEP_IMAGES") != "1" {
		removeImages(suite.docker, suite.images)
	}
	suite.docker.Close()
	if err := leaktest.Find(before); err != nil && code == 0 {
		fmt.Fprintln(os.Stderr, "integration_test: goroutines leaked:", err)
		return 1
	}
	return code
}

// prepare checks that Docker answers and testcontainers can run without a registry, then
// builds the images. A non-empty reason means the tests cannot run here; an error means
// something that should have worked did not.
func prepare() (reason string, err error) {
	if testing.Short() && os.Getenv("KW_REQUIRE_DOCKER") != "1" {
		return "end-to-end tests in containers take minutes; skipped in -short mode", nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dc, err := testcontainers.NewDockerClientWithOpts(ctx)
	if err != nil {
		return fmt.Sprintf("Docker does not answer (%v); these end-to-end tests need a Docker engine", err), nil
	}
	// The images are built with the docker command, which must reach the same engine.
	if out, err := exec.CommandContext(ctx, "docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		dc.Close()
		return fmt.Sprintf("the docker command does not reach the Docker engine (%v: %s); the images are built with it", err, bytes.TrimSpace(out)), nil
	}
	if !testcontainers.ReadConfig().RyukDisabled {
		dc.Close()
		return `TESTCONTAINERS_RYUK_DISABLED is not "true": testcontainers would pull its Ryuk image, ` +
			"and no registry may be reachable; run with TESTCONTAINERS_RYUK_DISABLED=true " +
			"(the tests remove their containers, networks and volumes themselves)", nil
	}
	_, file, _, _ := runtime.Caller(0)
	root, err := filepath.Abs(filepath.Join(filepath.Dir(file), ".."))
	if err != nil {
		dc.Close()
		return "", err
	}
	imgs, err := buildImages(root)
	if err != nil {
		dc.Close()
		return "", err
	}
	suite.images, suite.docker, suite.root = imgs, dc, root
	return "", nil
}

// buildImages runs scripts/build-images.sh with a tag of its own, so that concurrent runs and
// the images of a developer's docker compose never collide.
func buildImages(root string) (images, error) {
	tag := fmt.Sprintf("e2e-%d-%d", os.Getpid(), time.Now().Unix())
	imgs := images{worker: "kustomer-worker:" + tag, nats: "kustomer-worker-nats:" + tag}
	dir, err := os.MkdirTemp("", "kustomer-worker-images-")
	if err != nil {
		return images{}, err
	}
	defer os.RemoveAll(dir)
	start := time.Now()
	cmd := exec.Command("sh", filepath.Join(root, "scripts", "build-images.sh"))
	cmd.Dir = root
	cmd.Env = append(os.Environ(),
		"WORKER_IMAGE="+imgs.worker, "NATS_IMAGE="+imgs.nats, "BUILD_DIR="+dir, "VERSION=e2e-test")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return images{}, fmt.Errorf("scripts/build-images.sh: %w", err)
	}
	fmt.Fprintf(os.Stderr, "integration_test: built %s and %s in %s\n", imgs.worker, imgs.nats, time.Since(start).Round(time.Second))
	return imgs, nil
}

// removeImages removes the images of this run; failures are reported, not fatal.
func removeImages(dc *testcontainers.DockerClient, imgs images) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, name := range []string{imgs.worker, imgs.nats} {
		if _, err := dc.ImageRemove(ctx, name, client.ImageRemoveOptions{Force: true, PruneChildren: true}); err != nil {
			fmt.Fprintf(os.Stderr, "integration_test: removing image %s: %v\n", name, err)
		}
	}
}

// setup skips the test when TestMain found that the suite cannot run here, and otherwise
// returns the images to run.
func setup(tb testing.TB) images {
	tb.Helper()
	if suite.skip != "" {
		tb.Skip(suite.skip)
	}
	return suite.images
}
