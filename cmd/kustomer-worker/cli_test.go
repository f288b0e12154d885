package main

import (
	"errors"
	"regexp"
	"runtime/debug"
	"strings"
	"testing"
)

func TestCLIExplainsItself(t *testing.T) {
	t.Parallel()
	t.Run("bare kustomer-worker prints the usage and exits 2", func(t *testing.T) {
		t.Parallel()
		_, stderr, err := runArgs(t, nil)
		var ue *usageError
		if !errors.As(err, &ue) {
			t.Fatalf("err = %v; want a usage error (exit status 2)", err)
		}
		for _, want := range []string{"Usage: kustomer-worker <command>", "run ", "enqueue ", "help "} {
			if !strings.Contains(stderr, want) {
				t.Errorf("stderr lacks %q:\n%s", want, stderr)
			}
		}
	})
	t.Run("help with a command prints that command's usage", func(t *testing.T) {
		t.Parallel()
		out, _, err := runArgs(t, nil, "help", "run")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "Usage: kustomer-worker run") || !strings.Contains(out, "--rate-per-minute") {
			t.Errorf("help run printed:\n%s", out)
		}
	})
	t.Run("help alone prints the program's usage", func(t *testing.T) {
		t.Parallel()
		out, _, err := runArgs(t, nil, "help")
		if err != nil || !strings.Contains(out, "Usage: kustomer-worker <command>") {
			t.Errorf("help printed %q, err %v", out, err)
		}
	})
	t.Run("version prints a version", func(t *testing.T) {
		t.Parallel()
		out, _, err := runArgs(t, nil, "version")
		if err != nil || !strings.HasPrefix(out, "kustomer-worker ") {
			t.Errorf("version printed %q, err %v", out, err)
		}
	})
}

// Each default shows once in --help, in kong's --flag=DEFAULT, not again in the text.
func TestHelpPrintsEachDefaultOnce(t *testing.T) {
	t.Parallel()
	flagDefault := regexp.MustCompile(`--([a-z-]+)="?([^" ]+)"?\s`)
	for _, cmd := range [][]string{{"run"}, {"enqueue"}, {"status"}, {"dlq", "list"}, {"demo"}, {"mock"}} {
		t.Run(strings.Join(cmd, " "), func(t *testing.T) {
			t.Parallel()
			out, _, err := runArgs(t, nil, append(cmd, "--help")...)
			if err != nil {
				t.Fatal(err)
			}
			text := strings.Join(strings.Fields(out), " ")
			for _, m := range flagDefault.FindAllStringSubmatch(out, -1) {
				if strings.Contains(text, "(default "+m[2]+")") {
					t.Errorf("--%s's default %s is printed twice", m[1], m[2])
				}
			}
		})
	}
}

func TestCommandsListOnlyTheirFlags(t *testing.T) {
	t.Parallel()
	out, _, err := runArgs(t, nil, "enqueue", "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, flag := range []string{"--priority-group", "--attempts-bucket", "--consumer", "--roles-bucket", "--bulk-bucket", "--dlq-stream"} {
		if strings.Contains(out, flag) {
			t.Errorf("enqueue --help lists %s, which does nothing there", flag)
		}
	}
}

func TestOldNamesStillWorkWithAWarning(t *testing.T) {
	t.Parallel()
	t.Run("an old environment variable is read, with one warning", func(t *testing.T) {
		t.Parallel()
		// An unknown level is refused before anything starts: the error shows it was read.
		_, stderr, err := runArgs(t, map[string]string{"LOG_LEVEL": "loud", "KUSTOMER_API_KEY": "k"}, "run", "--http-addr", "")
		if err == nil || !strings.Contains(err.Error(), "loud") {
			t.Errorf("err = %v; want LOG_LEVEL's value refused", err)
		}
		if strings.Count(stderr, "LOG_LEVEL is deprecated: use WORKER_LOG_LEVEL") != 1 {
			t.Errorf("stderr = %q; want one deprecation warning", stderr)
		}
	})
	t.Run("the new variable wins over the old one, without a warning", func(t *testing.T) {
		t.Parallel()
		_, stderr, err := runArgs(t, map[string]string{"LOG_LEVEL": "loud", "WORKER_LOG_LEVEL": "shouty", "KUSTOMER_API_KEY": "k"}, "run", "--http-addr", "")
		if err == nil || !strings.Contains(err.Error(), "shouty") || strings.Contains(stderr, "deprecated") {
			t.Errorf("err = %v, stderr %q; want WORKER_LOG_LEVEL read alone", err, stderr)
		}
	})
	t.Run("an old flag name sets the new flag, with one warning", func(t *testing.T) {
		t.Parallel()
		_, stderr, err := runArgs(t, nil, "enqueue", "--dry-run", "--window", "0", "-")
		if err == nil || !strings.Contains(err.Error(), "max-pending: 0 is below 1") {
			t.Errorf("err = %v; want --window's 0 carried to max-pending", err)
		}
		if strings.Count(stderr, "--window is deprecated: use --max-pending") != 1 {
			t.Errorf("stderr = %q; want one deprecation warning", stderr)
		}
	})
	t.Run("bulk-min sets bulk-min-size", func(t *testing.T) {
		t.Parallel()
		_, stderr, err := runArgs(t, map[string]string{"KUSTOMER_API_KEY": "k"}, "run", "--http-addr", "", "--bulk", "--bulk-min", "500")
		if err == nil || !strings.Contains(err.Error(), "bulk-min-size: 500") {
			t.Errorf("err = %v; want --bulk-min's 500 refused as bulk-min-size", err)
		}
		if !strings.Contains(stderr, "--bulk-min is deprecated: use --bulk-min-size") {
			t.Errorf("stderr = %q; want a deprecation warning", stderr)
		}
	})
	t.Run("the nats CLI's NATS_CA is read as nats-tls-ca", func(t *testing.T) {
		t.Parallel()
		_, _, err := runArgs(t, map[string]string{"NATS_CA": "/nonexistent/ca.pem"}, "status", "--connect-timeout", "1s")
		if err == nil || !strings.Contains(err.Error(), "ca.pem") {
			t.Errorf("err = %v; want the CA file of NATS_CA used", err)
		}
	})
}

func TestVersionFromBuildInformation(t *testing.T) {
	t.Parallel()
	vcs := func(settings ...string) *debug.BuildInfo {
		bi := &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}
		for i := 0; i < len(settings); i += 2 {
			bi.Settings = append(bi.Settings, debug.BuildSetting{Key: settings[i], Value: settings[i+1]})
		}
		return bi
	}
	cases := []struct {
		name string
		bi   *debug.BuildInfo
		want string
	}{
		{"a checkout's revision and time", vcs("vcs.revision", "0123456789abcdef0123", "vcs.time", "2026-12-07T04:00:00Z"), "dev-0123456789ab (2026-12-07T04:00:00Z)"},
		{"a checkout with changes", vcs("vcs.revision", "0123456789abcdef0123", "vcs.modified", "true"), "dev-0123456789ab+dirty"},
		{"go install's module version", &debug.BuildInfo{Main: debug.Module{Version: "v1.4.0"}}, "v1.4.0"},
		{"nothing recorded", vcs(), "dev"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := versionOf(c.bi); got != c.want {
				t.Errorf("versionOf = %q; want %q", got, c.want)
			}
		})
	}
}
