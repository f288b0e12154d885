package main

import (
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
)

// repoRoot is the repository's root, two levels above this package.
func repoRoot(tb testing.TB) string {
	tb.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		tb.Fatal(err)
	}
	return root
}

// Dockerfile.multistage builds from the context .dockerignore admits: the binary must build
// from exactly those files, so a new package the binary imports cannot be left out again.
func TestImageBuildContextBuilds(t *testing.T) {
	if testing.Short() {
		t.Skip("compiles the binary; skipped with -short")
	}
	t.Parallel()
	root := repoRoot(t)
	f, err := os.Open(filepath.Join(root, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	patterns, err := ignorefile.ReadAll(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		t.Fatal(err)
	}
	ctxDir := t.TempDir()
	copied := 0
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil || rel == "." {
			return err
		}
		if d.Name() == ".git" && d.IsDir() {
			return filepath.SkipDir
		}
		excluded, err := pm.MatchesOrParentMatches(filepath.ToSlash(rel))
		if err != nil {
			return err
		}
		if excluded || d.IsDir() || !d.Type().IsRegular() {
			return nil
		}
		copied++
		return copyFile(filepath.Join(ctxDir, rel), path)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("the build context holds %d files", copied)
	cmd := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(t.TempDir(), "kustomer-worker"), "./cmd/kustomer-worker")
	cmd.Dir = ctxDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-buildvcs=false", "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build in the build context .dockerignore admits failed: %v\n%s", err, out)
	}
}

func copyFile(dst, src string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// The compose files' NATS image runs the minor version of the server the daemon embeds (go.mod),
// so that what runs in compose is what the tests ran.
func TestComposeNATSImageMatchesEmbeddedServer(t *testing.T) {
	t.Parallel()
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		t.Skip("no build information")
	}
	var embedded string
	for _, dep := range bi.Deps {
		if dep.Path == "github.com/nats-io/nats-server/v2" {
			embedded = dep.Version
		}
	}
	m := regexp.MustCompile(`^v(\d+\.\d+)\.`).FindStringSubmatch(embedded)
	if m == nil {
		t.Fatalf("nats-server version %q unreadable", embedded)
	}
	want := "nats:" + m[1] + "-alpine"
	image := regexp.MustCompile(`(?:^|[^\w-]|:-)(nats:\d+\.\d+[\w.-]*)`)
	root := repoRoot(t)
	for _, name := range []string{"docker-compose.yml", "docker-compose.cluster.yml", "Dockerfile.nats", "docs/CONTAINERS.md"} {
		b, err := os.ReadFile(filepath.Join(root, name))
		if err != nil {
			t.Fatal(err)
		}
		found := image.FindAllStringSubmatch(string(b), -1)
		if len(found) == 0 && strings.HasPrefix(name, "docker-compose") {
			t.Errorf("%s names no nats image", name)
		}
		for _, m := range found {
			if got := m[1]; got != want {
				t.Errorf("%s uses %s; the embedded server is %s: want %s", name, got, embedded, want)
			}
		}
	}
}
