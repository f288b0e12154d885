package queue

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/kustomer-worker/kustomer-worker/internal/logtext"
)

// Defaults of EmbeddedConfig: a server for producers on this machine, at NATS's usual port,
// with its store beside the working directory.
const (
	DefaultEmbeddedHost = "127.0.0.1"
	DefaultEmbeddedPort = 4222
	DefaultDataDir      = "./data"
)

// EmbeddedConfig configures the NATS server started inside the process when no URL is given.
//
// With User and Password, NKey or Token set (one of them), the server accepts only clients
// that present it; without, anyone who reaches the port may publish, read or delete the
// streams, so StartEmbedded refuses a Host beyond this machine's loopback then.
type EmbeddedConfig struct {
	Host    string // listen address; default DefaultEmbeddedHost so producers on this machine can publish
	Port    int    // client port; default DefaultEmbeddedPort; -1 picks a free port (tests)
	DataDir string // JetStream file store; default DefaultDataDir

	User     string // with Password: the one user the server accepts; default none
	Password string // User's password; default none. Never logged
	NKey     string // the public nkey (U...) of the one user the server accepts; default none
	Token    string // the token the server accepts; default none. Never logged
}

// LogValue redacts the password and the token.
func (c EmbeddedConfig) LogValue() slog.Value {
	redacted := func(s string) string {
		if s == "" {
			return ""
		}
		return logtext.Redacted
	}
	return slog.GroupValue(
		slog.String("host", c.Host), slog.Int("port", c.Port), slog.String("data_dir", c.DataDir),
		slog.String("user", c.User), slog.String("password", redacted(c.Password)),
		slog.String("nkey", c.NKey), slog.String("token", redacted(c.Token)),
	)
}

// String describes c with the password and the token redacted, for every verb of fmt.
func (c EmbeddedConfig) String() string {
	return fmt.Sprintf("queue.EmbeddedConfig{Host: %q, Port: %d, DataDir: %q, User: %q, Password: %s, NKey: %q, Token: %s}",
		c.Host, c.Port, c.DataDir, c.User, quotedSecret(c.Password), c.NKey, quotedSecret(c.Token))
}

// GoString is String, for %#v.
func (c EmbeddedConfig) GoString() string { return c.String() }

// quotedSecret stands for a secret in a description: "" if it is empty, logtext.Redacted
// otherwise.
func quotedSecret(s string) string {
	if s == "" {
		return `""`
	}
	return logtext.Redacted
}

// authenticated reports whether the server is to require credentials.
func (c EmbeddedConfig) authenticated() bool { return c.User != "" || c.NKey != "" || c.Token != "" }

// validate checks the credentials and that a server beyond loopback requires them.
func (c EmbeddedConfig) validate() error {
	bad := func(field, problem string) error {
		return &ConfigError{Type: "EmbeddedConfig", Field: field, Problem: problem}
	}
	n := 0
	for _, s := range []string{c.User, c.NKey, c.Token} {
		if s != "" {
			n++
		}
	}
	switch {
	case n > 1:
		return bad("User", "give at most one of User (with Password), NKey and Token")
	case (c.User == "") != (c.Password == ""):
		return bad("User", "give both User and Password or neither")
	case c.NKey != "" && !nkeys.IsValidPublicUserKey(c.NKey):
		return bad("NKey", "not a public user nkey (U...)")
	case !c.authenticated() && !isLoopback(c.Host):
		return bad("Host", fmt.Sprintf("%q is beyond this machine's loopback, and without credentials anyone who reaches it could publish updates sent with the org's key or delete the streams: give User and Password, NKey or Token, or listen on 127.0.0.1", c.Host))
	}
	return nil
}

// isLoopback reports whether host (a name or an IP address) is this machine's loopback:
// "localhost", 127.0.0.0/8 or ::1. Other names count as remote, and "" or 0.0.0.0 listen
// everywhere.
func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"))
	return err == nil && ip.Unmap().IsLoopback()
}

// Embedded is a nats-server running in this process, with JetStream on a file store.
type Embedded struct {
	srv  *server.Server
	auth bool // clients must present credentials
}

// StartEmbedded starts the server and waits until it accepts connections with JetStream on.
// The caller owns it and must call Shutdown last, after its own connections are drained.
// JetStream failing to start, most often on a DataDir it cannot use, comes back as a
// *ConfigError for DataDir; a Host beyond loopback without credentials, as one for Host.
func StartEmbedded(cfg EmbeddedConfig, log *slog.Logger) (*Embedded, error) {
	if cfg.Host == "" {
		cfg.Host = DefaultEmbeddedHost
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.Port == 0 {
		cfg.Port = DefaultEmbeddedPort
	}
	if cfg.DataDir == "" {
		cfg.DataDir = DefaultDataDir
	}
	opts := &server.Options{
		ServerName: "kustomer-worker-embedded",
		Host:       cfg.Host,
		Port:       cfg.Port,
		JetStream:  true,
		StoreDir:   cfg.DataDir,
		NoSigs:     true,
	}
	switch {
	case cfg.User != "":
		opts.Users = []*server.User{{Username: cfg.User, Password: cfg.Password}}
	case cfg.NKey != "":
		opts.Nkeys = []*server.NkeyUser{{Nkey: cfg.NKey}}
	case cfg.Token != "":
		opts.Authorization = cfg.Token
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	sl := &serverLog{log: log.With("component", "nats-server"), fatal: make(chan string, 1)}
	srv.SetLoggerV2(sl, false, false, false)
	addr := net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port))
	srv.Start() // returns early, after a fatal error, if JetStream or the listener fails
	select {
	case fatal := <-sl.fatal:
		srv.Shutdown()
		// The server names no cause but in its message; JetStream fails on its store.
		if strings.Contains(fatal, "JetStream") {
			return nil, dataDirError(cfg.DataDir, fatal)
		}
		return nil, fmt.Errorf("embedded NATS on %s: %s", addr, fatal)
	default:
	}
	if !srv.ReadyForConnections(30 * time.Second) {
		srv.Shutdown()
		return nil, fmt.Errorf("embedded NATS: not ready to accept connections on %s within 30s", addr)
	}
	if !srv.JetStreamEnabled() {
		srv.Shutdown()
		return nil, dataDirError(cfg.DataDir, "JetStream is not enabled")
	}
	return &Embedded{srv: srv, auth: cfg.authenticated()}, nil
}

// ClientURL is the URL clients use to reach the server.
func (e *Embedded) ClientURL() string { return e.srv.ClientURL() }

// Authenticated reports whether the server requires credentials.
func (e *Embedded) Authenticated() bool { return e.auth }

// Shutdown stops the server and waits until it has stopped.
func (e *Embedded) Shutdown() {
	e.srv.Shutdown()
	e.srv.WaitForShutdown()
}

// dataDirError says that JetStream did not start on the store in dir, and why.
func dataDirError(dir, why string) error {
	return &ConfigError{Type: "EmbeddedConfig", Field: "DataDir",
		Problem: fmt.Sprintf("the embedded NATS server's JetStream did not start with its store in %q: %s", dir, why)}
}

// serverLog adapts nats-server's logger to slog, and hands the first fatal error (after which
// the server stops starting) to StartEmbedded.
type serverLog struct {
	log   *slog.Logger
	fatal chan string // buffered: the first fatal error; later ones are only logged
}

func (l *serverLog) Noticef(format string, v ...any) { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l *serverLog) Warnf(format string, v ...any)   { l.log.Warn(fmt.Sprintf(format, v...)) }
func (l *serverLog) Fatalf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	l.log.Error(msg)
	select {
	case l.fatal <- msg:
	default:
	}
}
func (l *serverLog) Errorf(format string, v ...any) { l.log.Error(fmt.Sprintf(format, v...)) }
func (l *serverLog) Debugf(format string, v ...any) { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l *serverLog) Tracef(format string, v ...any) {}
