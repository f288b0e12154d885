package queue_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/kustomer-worker/kustomer-worker/queue"
)

func TestEmbeddedAuthentication(t *testing.T) {
	t.Parallel()
	quiet := slog.New(slog.DiscardHandler)
	start := func(t *testing.T, cfg queue.EmbeddedConfig) *queue.Embedded {
		t.Helper()
		cfg.Port, cfg.DataDir = -1, t.TempDir()
		emb, err := queue.StartEmbedded(cfg, quiet)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(emb.Shutdown)
		return emb
	}
	// usable connects with cc and checks that JetStream answers, creating the work stream.
	usable := func(t *testing.T, cc queue.ConnConfig) error {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		nc, err := queue.ConnectWait(ctx, cc, quiet, nil)
		if err != nil {
			return err
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			return err
		}
		return queue.Ensure(ctx, js, queue.Topology{}.WithDefaults())
	}
	refused := func(t *testing.T, url string, opts ...nats.Option) {
		t.Helper()
		nc, err := nats.Connect(url, opts...)
		if err == nil {
			nc.Close()
			t.Fatal("a client without the server's credentials connected; want it refused")
		}
		if !errors.Is(err, nats.ErrAuthorization) && !strings.Contains(strings.ToLower(err.Error()), "authorization") {
			t.Errorf("err = %v; want an authorization violation", err)
		}
	}

	t.Run("with a user and password, a client without them is refused and one with them works", func(t *testing.T) {
		t.Parallel()
		emb := start(t, queue.EmbeddedConfig{Host: "127.0.0.1", User: "worker", Password: "s3cret"})
		if !emb.Authenticated() {
			t.Error("Authenticated() = false")
		}
		refused(t, emb.ClientURL())
		refused(t, emb.ClientURL(), nats.UserInfo("worker", "wrong"))
		if err := usable(t, queue.ConnConfig{URL: emb.ClientURL(), User: "worker", Password: "s3cret"}); err != nil {
			t.Errorf("with the credentials: %v", err)
		}
	})

	t.Run("with an nkey, a client without its seed is refused and one with it works", func(t *testing.T) {
		t.Parallel()
		kp, err := nkeys.CreateUser()
		if err != nil {
			t.Fatal(err)
		}
		pub, _ := kp.PublicKey()
		seed, _ := kp.Seed()
		seedFile := filepath.Join(t.TempDir(), "worker.nk")
		if err := os.WriteFile(seedFile, seed, 0o600); err != nil {
			t.Fatal(err)
		}
		emb := start(t, queue.EmbeddedConfig{Host: "127.0.0.1", NKey: pub})
		refused(t, emb.ClientURL())
		if err := usable(t, queue.ConnConfig{URL: emb.ClientURL(), NKeyFile: seedFile}); err != nil {
			t.Errorf("with the seed: %v", err)
		}
	})

	t.Run("with a token, a client without it is refused and one with it works", func(t *testing.T) {
		t.Parallel()
		emb := start(t, queue.EmbeddedConfig{Host: "127.0.0.1", Token: "t0ken"})
		refused(t, emb.ClientURL())
		if err := usable(t, queue.ConnConfig{URL: emb.ClientURL(), Token: "t0ken"}); err != nil {
			t.Errorf("with the token: %v", err)
		}
	})

	t.Run("beyond loopback without credentials it refuses to start, naming Host", func(t *testing.T) {
		t.Parallel()
		for _, host := range []string{"0.0.0.0", "::", "192.0.2.1", "nats.internal"} {
			emb, err := queue.StartEmbedded(queue.EmbeddedConfig{Host: host, Port: -1, DataDir: t.TempDir()}, quiet)
			if err == nil {
				emb.Shutdown()
				t.Errorf("host %q: started without credentials; want it refused", host)
				continue
			}
			var ce *queue.ConfigError
			if !errors.As(err, &ce) || ce.Field != "Host" || !strings.Contains(ce.Problem, "loopback") {
				t.Errorf("host %q: err = %v; want a *ConfigError for Host saying it is beyond loopback", host, err)
			}
		}
	})

	t.Run("beyond loopback with credentials it starts", func(t *testing.T) {
		t.Parallel()
		emb := start(t, queue.EmbeddedConfig{Host: "0.0.0.0", User: "worker", Password: "s3cret"})
		if err := usable(t, queue.ConnConfig{URL: emb.ClientURL(), User: "worker", Password: "s3cret"}); err != nil {
			t.Errorf("with the credentials: %v", err)
		}
	})

	t.Run("half a user or two kinds of credentials are refused", func(t *testing.T) {
		t.Parallel()
		for _, cfg := range []queue.EmbeddedConfig{{User: "u"}, {Password: "p"}, {User: "u", Password: "p", Token: "t"}, {NKey: "not-a-key"}} {
			cfg.Port, cfg.DataDir = -1, t.TempDir()
			emb, err := queue.StartEmbedded(cfg, quiet)
			if err == nil {
				emb.Shutdown()
				t.Errorf("%+v: started; want a *ConfigError", cfg)
				continue
			}
			var ce *queue.ConfigError
			if !errors.As(err, &ce) {
				t.Errorf("%+v: err = %v; want a *ConfigError", cfg, err)
			}
		}
	})
}

func TestEmbeddedConfigNeverPrintsItsSecrets(t *testing.T) {
	t.Parallel()
	cfg := queue.EmbeddedConfig{Host: "0.0.0.0", User: "worker", Password: "pw-secret", Token: "tok-secret"}
	var b strings.Builder
	slog.New(slog.NewTextHandler(&b, nil)).Info("x", "cfg", cfg)
	for _, s := range []string{fmt.Sprint(cfg), fmt.Sprintf("%+v", cfg), fmt.Sprintf("%#v", cfg), b.String()} {
		if strings.Contains(s, "pw-secret") || strings.Contains(s, "tok-secret") || !strings.Contains(s, "worker") {
			t.Errorf("%s: shows a secret, or not the user", s)
		}
	}
}
