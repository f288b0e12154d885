package main

import (
	"net"
	"strconv"

	"github.com/kustomer-worker/kustomer-worker/queue"
)

// natsFlags say how to reach NATS; every command that talks to NATS embeds them. The password
// and token come only from the environment (NATS_PASSWORD, NATS_TOKEN): flags show in ps.
type natsFlags struct {
	NATSURL   string `name:"nats-url" env:"NATS_URL" help:"NATS server URL(s), comma-separated. For run, empty starts an embedded server; other commands default to nats://127.0.0.1:4222, the embedded server of a running daemon."`
	NATSCreds string `name:"nats-creds" env:"NATS_CREDS" type:"path" help:"NATS user credentials file (JWT and nkey seed)."`
	NATSNKey  string `name:"nats-nkey" env:"NATS_NKEY" type:"path" help:"NATS nkey seed file."`
	NATSUser  string `name:"nats-user" env:"NATS_USER" help:"NATS user name; the password comes from NATS_PASSWORD."`
	NATSCA    string `name:"nats-tls-ca" env:"NATS_TLS_CA" type:"path" help:"CA certificate to verify the NATS server."`
	NATSCert  string `name:"nats-tls-cert" env:"NATS_TLS_CERT" type:"path" help:"Client certificate for mutual TLS."`
	NATSKey   string `name:"nats-tls-key" env:"NATS_TLS_KEY" type:"path" help:"Client key for mutual TLS."`
}

func (f *natsFlags) conn(e *env, name, fallbackURL string) queue.ConnConfig {
	url := f.NATSURL
	if url == "" {
		url = fallbackURL
	}
	return queue.ConnConfig{
		URL: url, Name: name, CredsFile: f.NATSCreds, NKeyFile: f.NATSNKey,
		User: f.NATSUser, Password: e.getenv("NATS_PASSWORD"), Token: e.getenv("NATS_TOKEN"),
		TLSCA: f.NATSCA, TLSCert: f.NATSCert, TLSKey: f.NATSKey,
	}
}

// defaultNATSURL is where the commands other than run look for NATS: the embedded server of a
// daemon running on this machine.
const defaultNATSURL = "nats://127.0.0.1:4222"

// topologyFlags name the streams and the consumer.
type topologyFlags struct {
	Stream         string `name:"stream" env:"WORKER_STREAM" default:"KUSTOMER_UPDATES" help:"Work stream (default KUSTOMER_UPDATES)."`
	Subject        string `name:"subject" env:"WORKER_SUBJECT" default:"kustomer.conversations.update" help:"Work subject; the stream also takes SUBJECT.> (default kustomer.conversations.update)."`
	DLQStream      string `name:"dlq-stream" env:"WORKER_DLQ_STREAM" default:"KUSTOMER_UPDATES_DLQ" help:"Dead-letter stream (default KUSTOMER_UPDATES_DLQ)."`
	DLQSubject     string `name:"dlq-subject" env:"WORKER_DLQ_SUBJECT" default:"kustomer.conversations.dlq" help:"Dead-letter subject (default kustomer.conversations.dlq)."`
	Consumer       string `name:"consumer" env:"WORKER_CONSUMER" default:"kustomer-worker" help:"Durable consumer shared by every replica (default kustomer-worker)."`
	AttemptsBucket string `name:"attempts-bucket" env:"WORKER_ATTEMPTS_BUCKET" default:"KUSTOMER_WORKER_ATTEMPTS" help:"KV bucket counting attempts across restarts (default KUSTOMER_WORKER_ATTEMPTS)."`
}

func (f *topologyFlags) topology() queue.Topology {
	return queue.Topology{
		Stream: f.Stream, Subject: f.Subject, DLQStream: f.DLQStream, DLQSubject: f.DLQSubject,
		Consumer: f.Consumer, AttemptsBucket: f.AttemptsBucket,
	}.WithDefaults()
}

// embeddedFlags configure the NATS server started in the process when no URL is given.
type embeddedFlags struct {
	NATSListen string `name:"nats-listen" env:"NATS_LISTEN" default:"127.0.0.1:4222" help:"With no --nats-url: where the embedded NATS server listens, so producers on this machine can publish (default 127.0.0.1:4222)."`
	DataDir    string `name:"data-dir" env:"DATA_DIR" default:"./data" type:"path" help:"With no --nats-url: the embedded server's JetStream store (default ./data)."`
}

func (f *embeddedFlags) embedded() (queue.EmbeddedConfig, error) {
	host, port, err := net.SplitHostPort(f.NATSListen)
	if err != nil {
		return queue.EmbeddedConfig{}, usagef("nats-listen: %v", err)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < -1 || p > 65535 {
		return queue.EmbeddedConfig{}, usagef("nats-listen: %q is not a port", port)
	}
	return queue.EmbeddedConfig{Host: host, Port: p, DataDir: f.DataDir}, nil
}
