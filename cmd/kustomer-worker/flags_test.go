package main

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/worker"
)

func TestSettingErrorsNameFlags(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		err  error
		want string
	}{
		{"a worker field set to zero", func() error {
			c := worker.Config{}.WithDefaults()
			c.MaxAttempts = 0
			return c.Validate()
		}(), "max-attempts: 0 is below 1"},
		{"the outage spread", func() error {
			c := worker.Config{OutageSpread: -1}.WithDefaults()
			return c.Validate()
		}(), "outage-spread: -1 is below 1"},
		{"a worker field compared with another", func() error {
			c := worker.Config{Concurrency: 16, MaxAckPending: 4}.WithDefaults()
			return c.Validate()
		}(), "max-ack-pending: 4 is below concurrency 16"},
		{"a topology field", queue.Topology{AckWait: time.Millisecond}.WithDefaults().Validate(), "ack-wait: 1ms is under 1s"},
		{"a topology field renamed from Replicas", queue.Topology{StreamReplicas: 7}.WithDefaults().Validate(), "stream-replicas: 7 is not from 1 to 5"},
		{"a backfill subject inside the live one", queue.Topology{BackfillSubject: "kustomer.conversations.update.bf"}.WithDefaults().Validate(),
			`backfill-subject: "kustomer.conversations.update.bf" overlaps the work subject "kustomer.conversations.update": the lanes need subjects of their own`},
		{"a connection field", queue.ConnConfig{URL: "nats://x", TLSCert: "c"}.Validate(), "nats-tls-cert: give both nats-tls-cert and nats-tls-key or neither"},
		{"an embedded server field", &queue.ConfigError{Type: "EmbeddedConfig", Field: "DataDir", Problem: "unusable"}, "data-dir: unusable"},
		{"a Kustomer client option", func() error {
			_, err := kustomer.New(kustomer.Options{BaseURL: "ftp://x", Key: kustomer.StaticKey("k")})
			return err
		}(), `kustomer-url: "ftp://x" must start with https:// or http://`},
	}
	for _, c := range cases {
		t.Run(c.name+" reads in flag names", func(t *testing.T) {
			t.Parallel()
			err := settingError(c.err)
			var ue *usageError
			if !errors.As(err, &ue) {
				t.Fatalf("err = %v; want a usage error", err)
			}
			if err.Error() != c.want {
				t.Errorf("err = %q; want %q", err, c.want)
			}
		})
	}
	t.Run("other errors pass unchanged", func(t *testing.T) {
		plain := errors.New("plain")
		if got := settingError(plain); got != plain {
			t.Errorf("settingError(plain) = %v", got)
		}
	})
}

func TestHelpShowsLibraryDefaults(t *testing.T) {
	t.Parallel()
	out, _, err := runArgs(t, nil, "run", "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"--concurrency=" + strconv.Itoa(worker.DefaultConcurrency),
		"--max-deliver=" + strconv.Itoa(queue.DefaultMaxDeliver),
		"--stream=\"" + queue.DefaultStream + "\"",
		"--ack-wait=" + queue.DefaultAckWait.String(),
	} {
		if !strings.Contains(out, want) {
			t.Errorf("help lacks %q:\n%s", want, out)
		}
	}
}

func TestKustomerURLFromEitherVariable(t *testing.T) {
	t.Parallel()
	// An unusable URL stops run before it connects anywhere, and the error quotes it: so the
	// error shows which variable the flag took its value from.
	const newer, older = "ftp://newer.example", "ftp://older.example"
	cases := []struct {
		name      string
		env       map[string]string
		want, not string
	}{
		{"KUSTOMER_URL, its name", map[string]string{"KUSTOMER_URL": newer}, newer, older},
		{"KUSTOMER_BASE_URL, its deprecated name", map[string]string{"KUSTOMER_BASE_URL": older}, older, newer},
		{"KUSTOMER_URL over KUSTOMER_BASE_URL when both are set", map[string]string{"KUSTOMER_URL": newer, "KUSTOMER_BASE_URL": older}, newer, older},
	}
	for _, c := range cases {
		t.Run("kustomer-url is read from "+c.name, func(t *testing.T) {
			t.Parallel()
			c.env["KUSTOMER_API_KEY"] = "k"
			_, _, err := runArgs(t, c.env, "run", "--http-addr", "")
			var ue *usageError
			if !errors.As(err, &ue) || !strings.HasPrefix(err.Error(), "kustomer-url: ") {
				t.Fatalf("err = %v; want a usage error for kustomer-url", err)
			}
			if !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), c.not) {
				t.Errorf("err = %q; want it to quote %s, not %s", err, c.want, c.not)
			}
		})
	}
}

func TestPlainHTTPKustomerURL(t *testing.T) {
	t.Parallel()
	t.Run("to a host other than loopback is refused, naming the flag that allows it", func(t *testing.T) {
		t.Parallel()
		env := map[string]string{"KUSTOMER_API_KEY": "k", "KUSTOMER_URL": "http://mock:8080"}
		_, _, err := runArgs(t, env, "run", "--http-addr", "")
		var ue *usageError
		if !errors.As(err, &ue) || !strings.HasPrefix(err.Error(), "kustomer-url: ") {
			t.Fatalf("err = %v; want a usage error for kustomer-url", err)
		}
		for _, want := range []string{"http://mock:8080", "in clear", "--kustomer-allow-insecure"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("err = %q; want it to say %q", err, want)
			}
		}
	})
	// An unusable --http-addr is the next setting run checks after the Kustomer client: its
	// error shows that the URL was accepted.
	for name, env := range map[string]map[string]string{
		"to loopback is accepted":                       {"KUSTOMER_URL": "http://127.0.0.1:8080"},
		"is accepted with KUSTOMER_ALLOW_INSECURE=true": {"KUSTOMER_URL": "http://mock:8080", "KUSTOMER_ALLOW_INSECURE": "true"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			env["KUSTOMER_API_KEY"] = "k"
			_, _, err := runArgs(t, env, "run", "--http-addr", "no-port")
			if err == nil || !strings.HasPrefix(err.Error(), "http-addr: ") {
				t.Errorf("err = %v; want the URL accepted and the next check (http-addr) to fail", err)
			}
		})
	}
}
