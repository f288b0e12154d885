package main

import (
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"unicode"

	"github.com/alecthomas/kong"
)

// environmentOnly are the variables read without a flag: secrets, which flags would show in ps.
var environmentOnly = []string{"KUSTOMER_API_KEY", "NATS_PASSWORD", "NATS_TOKEN"}

// environment returns every environment variable the command line reads, from the kong
// model of every command: the flags' env tags, the deprecated names still read, and the
// secrets read without a flag.
func environment(t *testing.T) []string {
	t.Helper()
	var c cli
	p, err := kong.New(&c, kong.Name("kustomer-worker"), kong.Vars{"version": "test"}, defaultVars())
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	var walk func(n *kong.Node)
	walk = func(n *kong.Node) {
		for _, f := range n.Flags {
			for _, e := range f.Envs {
				seen[e] = true
			}
		}
		for _, ch := range n.Children {
			walk(ch)
		}
	}
	walk(p.Model.Node)
	for old := range deprecatedEnv {
		seen[old] = true
	}
	for _, e := range environmentOnly {
		seen[e] = true
	}
	names := make([]string, 0, len(seen))
	for n := range seen {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func TestEveryEnvironmentVariableIsDocumented(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile(filepath.Join(repoRoot(t), "docs", "CONFIGURATION.md"))
	if err != nil {
		t.Fatal(err)
	}
	names := environment(t)
	for _, name := range names {
		if !strings.Contains(string(doc), "`"+name+"`") {
			t.Errorf("docs/CONFIGURATION.md does not name the environment variable %s", name)
		}
	}
	t.Logf("%d environment variables, each documented", len(names))
}

func TestEnvironmentVariablesFollowTheNamingRule(t *testing.T) {
	t.Parallel()
	for _, name := range environment(t) {
		if _, old := deprecatedEnv[name]; old {
			continue
		}
		switch {
		case strings.HasPrefix(name, "KUSTOMER_"), strings.HasPrefix(name, "NATS_"),
			strings.HasPrefix(name, "WORKER_"), strings.HasPrefix(name, "MOCK_"):
		default:
			t.Errorf("%s: want a prefix KUSTOMER_ (Kustomer), NATS_ (NATS), WORKER_ (the worker) or MOCK_ (the fake)", name)
		}
	}
}

// history is wording that tells how the project changed rather than how it is: it belongs in
// commit messages, not in the user's documentation.
var history = regexp.MustCompile(`(?i)\bissues? #?\d+\b|this is a change|\bwas \d[\w.]* before\b|\b\d+ of \d+ before\b`)

func TestDocumentationHasNoHistory(t *testing.T) {
	t.Parallel()
	root := repoRoot(t)
	files, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, filepath.Join(root, "README.md"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(b), "\n") {
			if m := history.FindString(line); m != "" {
				rel, _ := filepath.Rel(root, f)
				t.Errorf("%s:%d: %q tells history: %s", rel, i+1, m, strings.TrimSpace(line))
			}
		}
	}
}

// Every alert links a section of docs/RUNBOOK.md that exists.
func TestEveryAlertHasARunbookSection(t *testing.T) {
	t.Parallel()
	root := repoRoot(t)
	rules, err := os.ReadFile(filepath.Join(root, "deploy", "prometheus", "rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	runbook, err := os.ReadFile(filepath.Join(root, "docs", "RUNBOOK.md"))
	if err != nil {
		t.Fatal(err)
	}
	alerts := regexp.MustCompile(`(?m)^\s+- alert: (\S+)$`).FindAllStringSubmatch(string(rules), -1)
	links := regexp.MustCompile(`runbook_url: "[^"#]*/docs/RUNBOOK\.md#([a-z]+)"`).FindAllStringSubmatch(string(rules), -1)
	if len(alerts) == 0 || len(links) != len(alerts) {
		t.Fatalf("%d alerts, %d runbook links: want one each", len(alerts), len(links))
	}
	for i, a := range alerts {
		if links[i][1] != strings.ToLower(a[1]) {
			t.Errorf("alert %s links #%s", a[1], links[i][1])
		}
		if !strings.Contains(string(runbook), "\n## "+a[1]+"\n") {
			t.Errorf("docs/RUNBOOK.md has no section ## %s", a[1])
		}
	}
}

// Links between README and docs/ reach a file that exists and, with #anchor, a heading in it.
func TestDocumentationLinksResolve(t *testing.T) {
	t.Parallel()
	root := repoRoot(t)
	files, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, filepath.Join(root, "README.md"))
	fence := regexp.MustCompile("(?s)```.*?```")
	link := regexp.MustCompile(`\]\(([^)\s]+)\)`)
	heading := regexp.MustCompile(`(?m)^#+\s+(.*)$`)
	anchors := func(path string) map[string]bool {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil
		}
		set := map[string]bool{}
		for _, m := range heading.FindAllStringSubmatch(fence.ReplaceAllString(string(b), ""), -1) {
			set[slug(m[1])] = true
		}
		return set
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(root, f)
		for _, m := range link.FindAllStringSubmatch(fence.ReplaceAllString(string(b), ""), -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			path, anchor, _ := strings.Cut(target, "#")
			full := f
			if path != "" {
				full = filepath.Join(filepath.Dir(f), path)
			}
			if _, err := os.Stat(full); err != nil {
				t.Errorf("%s: link %s: no such file", rel, target)
				continue
			}
			if anchor != "" && strings.HasSuffix(full, ".md") && !anchors(full)[anchor] {
				t.Errorf("%s: link %s: no such heading", rel, target)
			}
		}
	}
}

// slug is GitHub's anchor of a Markdown heading.
func slug(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(heading)) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
			b.WriteRune(r)
		}
	}
	return b.String()
}
