package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kustomer-worker/kustomer-worker/queue"
)

// dialFlags say how long the operator commands wait for NATS.
type dialFlags struct {
	ConnectTimeout time.Duration `name:"connect-timeout" env:"NATS_CONNECT_TIMEOUT" default:"5s" help:"How long to wait for NATS before giving up."`
}

// session is a connection to NATS for one operator command.
type session struct {
	nc *nats.Conn
	js jetstream.JetStream
}

// dial connects as run does, to the URL of f or else to the embedded server of a daemon on
// this machine, and fails clearly when nothing answers.
func dial(ctx context.Context, e *env, g *globals, f *natsFlags, d dialFlags, name string) (*session, error) {
	cc, err := f.conn(e, name, defaultNATSURL)
	if err != nil {
		return nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, max(d.ConnectTimeout, 100*time.Millisecond))
	defer cancel()
	nc, err := queue.ConnectWait(wctx, cc, opsLogger(e, g), nil)
	if err != nil {
		var ce *queue.ConnectError
		switch {
		case errors.As(err, &ce) && ce.Kind == queue.ConnectAuth && f.NATSURL == "":
			return nil, &startupError{err: ce, hint: "the embedded server of `kustomer-worker run` requires the credentials it was given: set the same NATS_USER with NATS_PASSWORD (or NATS_PASSWORD_FILE), NATS_NKEY or NATS_TOKEN here"}
		case errors.As(err, &ce) && ce.Kind.Permanent():
			return nil, startError(err)
		case ctx.Err() != nil:
			return nil, context.Cause(ctx)
		case wctx.Err() == nil: // not a wait that ran out: bad settings
			return nil, settingError(err)
		case f.NATSURL == "":
			return nil, fmt.Errorf("no NATS at %s: is `kustomer-worker run` running? set --nats-url", queue.RedactURLs(cc.URL))
		}
		return nil, fmt.Errorf("no NATS at %s within %s: check --nats-url", queue.RedactURLs(cc.URL), d.ConnectTimeout)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		closeQuietly(nc)
		return nil, err
	}
	return &session{nc: nc, js: js}, nil
}

func (s *session) close() { closeQuietly(s.nc) }

// closeQuietly closes nc without the disconnect warning a deliberate close would log.
func closeQuietly(nc *nats.Conn) {
	nc.SetDisconnectErrHandler(nil)
	nc.SetReconnectHandler(nil)
	nc.Close()
}

// opsLogger is the logger of the short-lived commands: warnings and errors only, unless
// --log-level debug asks for everything.
func opsLogger(e *env, g *globals) *slog.Logger {
	gg := *g
	if gg.LogLevel == "info" {
		gg.LogLevel = "warn"
	}
	return gg.logger(e.stderr)
}

// streamWaitFlags say how long a producer command waits for the work stream a starting worker
// is about to create.
type streamWaitFlags struct {
	WaitStreams time.Duration `name:"wait-streams" env:"WORKER_WAIT_STREAMS" default:"30s" help:"How long to wait for the work stream when it does not exist yet, as while a worker starts and creates it; 0 fails at once."`
}

// streamPoll is how often waitStream looks for the stream again.
const streamPoll = 250 * time.Millisecond

// waitStream finds the stream name, waiting up to f.WaitStreams for it to be created and
// saying so once on w. Other errors, or a stream still missing then, come back at once.
func (f streamWaitFlags) waitStream(ctx context.Context, w io.Writer, js jetstream.JetStream, name string) error {
	deadline := time.Now().Add(f.WaitStreams)
	said := false
	for {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := queue.FindStream(sctx, js, name)
		cancel()
		if err == nil || !errors.Is(err, jetstream.ErrStreamNotFound) || !time.Now().Before(deadline) {
			if err != nil && said {
				return fmt.Errorf("after waiting %s: %w", f.WaitStreams, err)
			}
			return err
		}
		if !said {
			said = true
			fmt.Fprintf(w, "stream %s not found yet: waiting up to %s for a starting worker to create it (--wait-streams)\n", name, f.WaitStreams)
		}
		t := time.NewTimer(streamPoll)
		select {
		case <-ctx.Done():
			t.Stop()
			return context.Cause(ctx)
		case <-t.C:
		}
	}
}
