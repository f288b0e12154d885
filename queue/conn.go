package queue

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go"

	"github.com/kustomer-worker/kustomer-worker/internal/logtext"
)

// ConnConfig says how to reach NATS. Secrets (Password, Token) never appear in logs: see LogValue.
type ConnConfig struct {
	URL       string // one or more comma-separated server URLs; required
	Name      string // connection name shown by the server; default "kustomer-worker"
	CredsFile string // user credentials (JWT + nkey seed) file; default none
	NKeyFile  string // nkey seed file; default none
	User      string // user name for user/password auth; default none
	Password  string // password for user/password auth; default none
	Token     string // token auth; default none
	TLSCA     string // CA certificate file to verify the server; default system roots
	TLSCert   string // client certificate file (with TLSKey) for mutual TLS; default none
	TLSKey    string // client key file; default none
}

// LogValue redacts the secrets.
func (c ConnConfig) LogValue() slog.Value {
	redact := func(s string) string {
		if s == "" {
			return ""
		}
		return logtext.Redacted
	}
	return slog.GroupValue(
		slog.String("url", RedactURLs(c.URL)),
		slog.String("name", c.Name),
		slog.String("creds_file", c.CredsFile),
		slog.String("nkey_file", c.NKeyFile),
		slog.String("user", c.User),
		slog.String("password", redact(c.Password)),
		slog.String("token", redact(c.Token)),
		slog.String("tls_ca", c.TLSCA),
		slog.String("tls_cert", c.TLSCert),
	)
}

// Validate returns a *ConfigError for the first field that cannot work.
func (c ConnConfig) Validate() error {
	bad := func(field, problem string) error {
		return &ConfigError{Type: "ConnConfig", Field: field, Problem: problem}
	}
	if c.URL == "" {
		return bad("URL", "empty")
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return bad("TLSCert", "give both TLSCert and TLSKey or neither")
	}
	if c.Password != "" && c.User == "" {
		return bad("Password", "set without User")
	}
	n := 0
	for _, s := range []string{c.CredsFile, c.NKeyFile, c.User, c.Token} {
		if s != "" {
			n++
		}
	}
	if n > 1 {
		return bad("CredsFile", "give at most one of CredsFile, NKeyFile, User and Token")
	}
	return nil
}

// Connect opens a connection that reconnects forever with capped exponential backoff and logs
// every disconnect and reconnect. If the server is not up yet, Connect keeps trying in the
// background and returns at once; JetStream calls fail until the first connect succeeds.
// Errors that retrying cannot fix (an unreadable nkey file) come back as a *ConnectError.
func Connect(cfg ConnConfig, log *slog.Logger) (*nats.Conn, error) {
	opts, err := options(cfg, log, true)
	if err != nil {
		return nil, err
	}
	nc, err := nats.Connect(cfg.URL, append(opts, nats.RetryOnFailedConnect(true))...)
	if err != nil {
		return nil, classify(cfg.URL, err)
	}
	return nc, nil
}

// ConnectWait connects like Connect, but makes the first connection itself, so that it can
// tell why it fails: an error that waiting cannot fix (authorization or authentication
// refused, a TLS failure, an unreadable credentials file) ends it at once with a *ConnectError;
// one that may heal (refused, DNS, timeout) is reported to waiting, with the attempt (from 1),
// and tried again after a growing delay until ctx ends. Once connected, the connection
// reconnects forever as Connect's does.
func ConnectWait(ctx context.Context, cfg ConnConfig, log *slog.Logger, waiting func(attempt int, err *ConnectError)) (*nats.Conn, error) {
	opts, err := options(cfg, log, false)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	var (
		attempt int
		last    *ConnectError // the last failure that may heal
	)
	connect := func() (*nats.Conn, error) {
		attempt++
		nc, err := nats.Connect(cfg.URL, opts...)
		if err == nil {
			return nc, nil
		}
		ce := classify(cfg.URL, err)
		if ce.Kind.Permanent() {
			return nil, backoff.Permanent(ce)
		}
		last = ce
		return nil, ce
	}
	notify := func(error, time.Duration) {
		if waiting != nil {
			waiting(attempt, last)
		}
	}
	nc, err := backoff.RetryNotifyWithData(connect, backoff.WithContext(doubling(reconnectInitial, reconnectMax), ctx), notify)
	if cerr := ctx.Err(); cerr != nil && last != nil && errors.Is(err, cerr) {
		return nil, fmt.Errorf("gave up waiting for NATS at %s (%v): %w", last.URL, last.Err, context.Cause(ctx))
	}
	if err == nil { // one line, also the end of a wait
		args := []any{"server", nc.ConnectedUrlRedacted()}
		if attempt > 1 {
			args = append(args, "waited", time.Since(start).Round(time.Millisecond))
		}
		log.Info("connected to NATS", args...)
	}
	return nc, err
}

// options are the connection options of cfg, without RetryOnFailedConnect; connectLine: log
// the first connection from nats.go's handler.
func options(cfg ConnConfig, log *slog.Logger, connectLine bool) ([]nats.Option, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	name := cfg.Name
	if name == "" {
		name = "kustomer-worker"
	}
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectBufSize(64 << 20),
		nats.CustomReconnectDelay(reconnectDelay),
		nats.ConnectHandler(func(nc *nats.Conn) {
			stateOf(nc, cfg.URL).back() // Connect's first attempts may have failed
			if connectLine {
				log.Info("connected to NATS", "server", nc.ConnectedUrlRedacted())
			}
		}),
		// An outage after the first connection: one WARN with the cause when it starts, the
		// cause of every failed attempt kept for Outage, one INFO when it ends.
		nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
			if err != nil && stateOf(nc, cfg.URL).lost(err) { // nil: we closed it ourselves
				log.Warn("disconnected from NATS; reconnecting", "error", err)
			}
		}),
		nats.ReconnectErrHandler(func(nc *nats.Conn, err error) {
			stateOf(nc, cfg.URL).failed(err)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("reconnected to NATS", "server", nc.ConnectedUrlRedacted(),
				"after", stateOf(nc, cfg.URL).back().Round(time.Millisecond))
		}),
		nats.ClosedHandler(func(nc *nats.Conn) {
			states.Delete(nc)
			log.Debug("NATS connection closed")
		}),
		nats.ErrorHandler(func(nc *nats.Conn, sub *nats.Subscription, err error) {
			log.Warn("NATS error", "error", err)
		}),
	}
	switch {
	case cfg.CredsFile != "":
		opts = append(opts, nats.UserCredentials(cfg.CredsFile))
	case cfg.NKeyFile != "":
		opt, err := nats.NkeyOptionFromSeed(cfg.NKeyFile)
		if err != nil {
			return nil, &ConnectError{URL: RedactURLs(cfg.URL), Kind: ConnectCredentials, Err: err}
		}
		opts = append(opts, opt)
	case cfg.User != "":
		opts = append(opts, nats.UserInfo(cfg.User, cfg.Password))
	case cfg.Token != "":
		opts = append(opts, nats.Token(cfg.Token))
	}
	if cfg.TLSCA != "" {
		opts = append(opts, nats.RootCAs(cfg.TLSCA))
	}
	if cfg.TLSCert != "" {
		opts = append(opts, nats.ClientCert(cfg.TLSCert, cfg.TLSKey))
	}
	return opts, nil
}

// reconnectDelay backs off from reconnectInitial to reconnectMax, with jitter from nats.go
// on top.
func reconnectDelay(attempts int) time.Duration {
	return nthDelay(reconnectInitial, reconnectMax, attempts)
}

// WaitConnected blocks until nc is connected or ctx ends.
func WaitConnected(ctx context.Context, nc *nats.Conn) error {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for !nc.IsConnected() {
		if nc.IsClosed() {
			return nats.ErrConnectionClosed
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for NATS: %w", context.Cause(ctx))
		case <-t.C:
		}
	}
	return nil
}

// RedactURLs hides user names, passwords and tokens in a comma-separated list of URLs,
// including those without a scheme (which NATS accepts) and those url.Parse rejects: whatever
// comes before the last '@' of a URL is dropped, up to its scheme.
func RedactURLs(s string) string {
	parts := strings.Split(s, ",")
	for i, p := range parts {
		p = strings.TrimSpace(p)
		scheme := ""
		if j := strings.Index(p, "://"); j >= 0 {
			scheme, p = p[:j+3], p[j+3:]
		}
		if at := strings.LastIndexByte(p, '@'); at >= 0 {
			p = p[at+1:]
		}
		parts[i] = scheme + p
	}
	return strings.Join(parts, ",")
}
