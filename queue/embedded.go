package queue

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// EmbeddedConfig configures the NATS server started inside the process when no URL is given.
type EmbeddedConfig struct {
	Host    string // listen address; default "127.0.0.1" so producers on this machine can publish
	Port    int    // client port; default 4222; -1 picks a free port (tests)
	DataDir string // JetStream file store; default "./data"
}

// Embedded is a nats-server running in this process, with JetStream on a file store.
type Embedded struct {
	srv *server.Server
}

// StartEmbedded starts the server and waits until it accepts connections with JetStream on.
// The caller owns it and must call Shutdown last, after its own connections are drained.
func StartEmbedded(cfg EmbeddedConfig, log *slog.Logger) (*Embedded, error) {
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	if cfg.Port == 0 {
		cfg.Port = 4222
	}
	if cfg.DataDir == "" {
		cfg.DataDir = "./data"
	}
	opts := &server.Options{
		ServerName: "kustomer-worker-embedded",
		Host:       cfg.Host,
		Port:       cfg.Port,
		JetStream:  true,
		StoreDir:   cfg.DataDir,
		NoSigs:     true,
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	srv.SetLoggerV2(&serverLog{log: log.With("component", "nats-server")}, false, false, false)
	srv.Start()
	if !srv.ReadyForConnections(30 * time.Second) {
		srv.Shutdown()
		return nil, fmt.Errorf("embedded NATS: not ready to accept connections on %s within 30s",
			net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port)))
	}
	if !srv.JetStreamEnabled() {
		srv.Shutdown()
		return nil, errors.New("embedded NATS: JetStream did not start (see data-dir)")
	}
	return &Embedded{srv: srv}, nil
}

// ClientURL is the URL clients use to reach the server.
func (e *Embedded) ClientURL() string { return e.srv.ClientURL() }

// Shutdown stops the server and waits until it has stopped.
func (e *Embedded) Shutdown() {
	e.srv.Shutdown()
	e.srv.WaitForShutdown()
}

// serverLog adapts nats-server's logger to slog.
type serverLog struct{ log *slog.Logger }

func (l *serverLog) Noticef(format string, v ...any) { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l *serverLog) Warnf(format string, v ...any)   { l.log.Warn(fmt.Sprintf(format, v...)) }
func (l *serverLog) Fatalf(format string, v ...any)  { l.log.Error(fmt.Sprintf(format, v...)) }
func (l *serverLog) Errorf(format string, v ...any)  { l.log.Error(fmt.Sprintf(format, v...)) }
func (l *serverLog) Debugf(format string, v ...any)  { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l *serverLog) Tracef(format string, v ...any)  {}
