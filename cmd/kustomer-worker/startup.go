package main

import (
	"errors"
	"fmt"

	"github.com/kustomer-worker/kustomer-worker/queue"
)

// startupError is a failure at start that waiting cannot fix: one line with the cause, the
// place and a hint; exit status 1.
type startupError struct {
	err  error
	hint string
}

func (e *startupError) Error() string { return fmt.Sprintf("%v (hint: %s)", e.err, e.hint) }
func (e *startupError) Unwrap() error { return e.err }

// natsHints say what to check for each permanent kind of NATS failure, in flag names.
var natsHints = map[queue.ConnectKind]string{
	queue.ConnectAuth: "check --nats-user with NATS_PASSWORD, NATS_TOKEN, --nats-creds or --nats-nkey " +
		"against the server's users and accounts",
	queue.ConnectTLS: "check that --nats-tls-ca holds the CA that signed the server's certificate, that the " +
		"host in --nats-url is one the certificate names, and --nats-tls-cert/--nats-tls-key if the server wants a client certificate",
	queue.ConnectCredentials: "check that the files given to --nats-creds, --nats-nkey and the --nats-tls-* flags exist " +
		"and are readable, and that --nats-url is a URL",
	queue.ConnectNoJetStream: "enable JetStream on the server (nats-server --jetstream, or jetstream {} in its " +
		"configuration) and for the account the worker connects as",
}

// startError gives a permanent NATS failure its hint; other errors come back as they are.
func startError(err error) error {
	var ce *queue.ConnectError
	if errors.As(err, &ce) && ce.Kind.Permanent() {
		return &startupError{err: ce, hint: natsHints[ce.Kind]}
	}
	return err
}
