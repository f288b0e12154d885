package main

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"unicode"

	"github.com/alecthomas/kong"

	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/worker"
)

// natsFlags say how to reach NATS; every command that talks to NATS embeds them. The password
// and token come only from the environment (NATS_PASSWORD, NATS_TOKEN): flags show in ps.
type natsFlags struct {
	NATSURL     string `name:"nats-url" env:"NATS_URL" help:"NATS server URL(s), comma-separated. For run, empty starts an embedded server; other commands default to ${default_nats_url}, the embedded server of a running daemon."`
	NATSCreds   string `name:"nats-creds" env:"NATS_CREDS" type:"path" help:"NATS user credentials file (JWT and nkey seed)."`
	NATSNKey    string `name:"nats-nkey" env:"NATS_NKEY" type:"path" help:"NATS nkey seed file."`
	NATSUser    string `name:"nats-user" env:"NATS_USER" help:"NATS user name; the password comes from NATS_PASSWORD."`
	NATSTLSCA   string `name:"nats-tls-ca" env:"NATS_TLS_CA" type:"path" help:"CA certificate to verify the NATS server."`
	NATSTLSCert string `name:"nats-tls-cert" env:"NATS_TLS_CERT" type:"path" help:"Client certificate for mutual TLS."`
	NATSTLSKey  string `name:"nats-tls-key" env:"NATS_TLS_KEY" type:"path" help:"Client key for mutual TLS."`
}

func (f *natsFlags) conn(e *env, name, fallbackURL string) queue.ConnConfig {
	url := f.NATSURL
	if url == "" {
		url = fallbackURL
	}
	return queue.ConnConfig{
		URL: url, Name: name, CredsFile: f.NATSCreds, NKeyFile: f.NATSNKey,
		User: f.NATSUser, Password: e.getenv("NATS_PASSWORD"), Token: e.getenv("NATS_TOKEN"),
		TLSCA: f.NATSTLSCA, TLSCert: f.NATSTLSCert, TLSKey: f.NATSTLSKey,
	}
}

// defaultNATSListen is where the embedded server of run listens by default.
var defaultNATSListen = net.JoinHostPort(queue.DefaultEmbeddedHost, strconv.Itoa(queue.DefaultEmbeddedPort))

// defaultNATSURL is where the commands other than run look for NATS: the embedded server of a
// daemon running on this machine.
var defaultNATSURL = "nats://" + defaultNATSListen

// topologyFlags name the streams and the consumer.
type topologyFlags struct {
	Stream           string `name:"stream" env:"WORKER_STREAM" default:"${default_stream}" help:"Work stream (default ${default})."`
	Subject          string `name:"subject" env:"WORKER_SUBJECT" default:"${default_subject}" help:"Live lane's subject, for updates as they happen; the stream also takes SUBJECT.> (default ${default})."`
	BackfillSubject  string `name:"backfill-subject" env:"WORKER_BACKFILL_SUBJECT" default:"${default_backfill_subject}" help:"Backfill lane's subject, for bulk loads that get the budget live updates leave; the stream also takes BACKFILL-SUBJECT.> (default ${default})."`
	DLQStream        string `name:"dlq-stream" env:"WORKER_DLQ_STREAM" default:"${default_dlq_stream}" help:"Dead-letter stream (default ${default})."`
	DLQSubject       string `name:"dlq-subject" env:"WORKER_DLQ_SUBJECT" default:"${default_dlq_subject}" help:"Dead-letter subject (default ${default})."`
	Consumer         string `name:"consumer" env:"WORKER_CONSUMER" default:"${default_consumer}" help:"Durable consumer of the live lane, shared by every replica (default ${default})."`
	BackfillConsumer string `name:"backfill-consumer" env:"WORKER_BACKFILL_CONSUMER" help:"Durable consumer of the backfill lane (default ${default_backfill_consumer})."`
	AttemptsBucket   string `name:"attempts-bucket" env:"WORKER_ATTEMPTS_BUCKET" default:"${default_attempts_bucket}" help:"KV bucket counting attempts across restarts (default ${default})."`
	PriorityGroup    string `name:"priority-group" env:"WORKER_PRIORITY_GROUP" default:"${default_priority_group}" help:"The lanes' consumers' pinned priority group: one replica pulling in it is active, the others standbys (default ${default})."`
	RolesBucket      string `name:"roles-bucket" env:"WORKER_ROLES_BUCKET" default:"${default_roles_bucket}" help:"KV bucket where replicas publish their role, read by status (default ${default})."`
	BulkBucket       string `name:"bulk-bucket" env:"WORKER_BULK_BUCKET" default:"${default_bulk_bucket}" help:"KV bucket of the bulk jobs in flight (bulk mode), read by status (default ${default})."`
}

func (f *topologyFlags) topology() queue.Topology {
	return queue.Topology{
		Stream: f.Stream, Subject: f.Subject, BackfillSubject: f.BackfillSubject, DLQStream: f.DLQStream,
		DLQSubject: f.DLQSubject, Consumer: f.Consumer, BackfillConsumer: f.BackfillConsumer,
		AttemptsBucket: f.AttemptsBucket, PriorityGroup: f.PriorityGroup, RolesBucket: f.RolesBucket,
		BulkBucket: f.BulkBucket,
	}.WithDefaults()
}

// embeddedFlags configure the NATS server started in the process when no URL is given.
type embeddedFlags struct {
	NATSListen string `name:"nats-listen" env:"NATS_LISTEN" default:"${default_nats_listen}" help:"With no --nats-url: where the embedded NATS server listens, so producers on this machine can publish (default ${default})."`
	DataDir    string `name:"data-dir" env:"DATA_DIR" default:"${default_data_dir}" type:"path" help:"With no --nats-url: the embedded server's JetStream store (default ${default})."`
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

// defaultVars are the defaults the flags take from the libraries' exported constants, so that
// each default is written once: a flag says default:"${default_x}" and help "(default ${default})".
func defaultVars() kong.Vars {
	d := func(v interface{ String() string }) string { return v.String() }
	i := strconv.Itoa
	vars := kong.Vars{
		"default_stream":            queue.DefaultStream,
		"default_subject":           queue.DefaultSubject,
		"default_backfill_subject":  queue.DefaultBackfillSubject,
		"default_dlq_stream":        queue.DefaultDLQStream,
		"default_dlq_subject":       queue.DefaultDLQSubject,
		"default_consumer":          queue.DefaultConsumer,
		"default_backfill_consumer": queue.Topology{Consumer: "CONSUMER"}.WithDefaults().BackfillConsumer,
		"default_attempts_bucket":   queue.DefaultAttemptsBucket,
		"default_dedup_window":      d(queue.DefaultDedupWindow),
		"default_ack_wait":          d(queue.DefaultAckWait),
		"default_max_deliver":       i(queue.DefaultMaxDeliver),
		"default_stream_replicas":   i(queue.DefaultStreamReplicas),
		"default_priority_group":    queue.DefaultPriorityGroup,
		"default_roles_bucket":      queue.DefaultRolesBucket,
		"default_pinned_ttl":        d(queue.DefaultPinnedTTL),
		"default_concurrency":       i(worker.DefaultConcurrency),
		"default_max_attempts":      i(worker.DefaultMaxAttempts),
		"default_outage_threshold":  i(worker.DefaultOutageThreshold),
		"default_stranded_every":    d(worker.DefaultStrandedEvery),
		"min_max_ack_pending":       i(worker.MinMaxAckPending),
		"default_shutdown_timeout":  d(worker.DefaultShutdownTimeout),
		"default_kustomer_url":      kustomer.DefaultBaseURL,
		"default_request_timeout":   d(kustomer.DefaultTimeout),
		"default_rate_per_minute":   i(worker.DefaultRatePerMinute),
		"default_nats_listen":       defaultNATSListen,
		"default_nats_url":          defaultNATSURL,
		"default_data_dir":          queue.DefaultDataDir,
	}
	for k, v := range mockVars() {
		vars[k] = v
	}
	for k, v := range bulkVars() {
		vars[k] = v
	}
	return vars
}

// flagNames maps the Go fields of the libraries' configuration to the flags (or environment
// variables) that set them: one table, so that an error of worker.Config.Validate,
// queue.Topology.Validate, queue.StartEmbedded or kustomer.New reads in the names a user typed.
var flagNames = map[string]map[string]string{
	"worker.Config": {
		"Concurrency": "concurrency", "MaxAttempts": "max-attempts", "MaxAckPending": "max-ack-pending",
		"ShutdownTimeout": "shutdown-timeout", "OutageThreshold": "outage-threshold", "StrandedEvery": "stranded-every",
		"Bulk.Size": "bulk-size", "Bulk.Linger": "bulk-linger", "Bulk.Min": "bulk-min", "Bulk.Deadline": "bulk-deadline",
		"Bulk.MaxBytes": "bulk-max-bytes",
	},
	"queue.Topology": {
		"Stream": "stream", "Subject": "subject", "BackfillSubject": "backfill-subject", "DLQStream": "dlq-stream",
		"DLQSubject": "dlq-subject", "DLQMaxAge": "dlq-max-age", "Consumer": "consumer",
		"BackfillConsumer": "backfill-consumer", "AttemptsBucket": "attempts-bucket",
		"DedupWindow": "dedup-window", "AckWait": "ack-wait", "MaxAckPending": "max-ack-pending",
		"MaxDeliver": "max-deliver", "StreamReplicas": "stream-replicas",
		"PriorityGroup": "priority-group", "PinnedTTL": "pinned-ttl", "RolesBucket": "roles-bucket",
		"BulkBucket": "bulk-bucket",
	},
	"queue.EmbeddedConfig": {"Host": "nats-listen", "Port": "nats-listen", "DataDir": "data-dir"},
	"kustomer.Options":     {"BaseURL": "kustomer-url", "Timeout": "request-timeout", "Key": "KUSTOMER_API_KEY or api-key-file"},
	"queue.ConnConfig": {
		"URL": "nats-url", "CredsFile": "nats-creds", "NKeyFile": "nats-nkey", "User": "nats-user",
		"Password": "NATS_PASSWORD", "Token": "NATS_TOKEN", "TLSCA": "nats-tls-ca",
		"TLSCert": "nats-tls-cert", "TLSKey": "nats-tls-key",
	},
}

// settingError turns a library's *ConfigError into a usage error in flag names, such as
// "max-attempts: 0 is below 1". Other errors come back unchanged.
func settingError(err error) error {
	var (
		typ, field, problem string
		we                  *worker.ConfigError
		qe                  *queue.ConfigError
		ke                  kustomer.FieldError
	)
	switch {
	case errors.As(err, &we):
		typ, field, problem = "worker.Config", we.Field, we.Problem
	case errors.As(err, &qe):
		typ, field, problem = "queue."+qe.Type, qe.Field, qe.Problem
	case errors.As(err, &ke): // of kustomer.New: the first problem with its Options
		typ, field, problem = "kustomer.Options", ke.Field, ke.Problem
	default:
		return err
	}
	names := flagNames[typ]
	rename := func(s string) string {
		if n, ok := names[s]; ok {
			return n
		}
		return s
	}
	// Rename whole words only: "MaxAckPending" but not a part of "DLQMaxAge".
	var b strings.Builder
	word := func(r rune) bool { return unicode.IsLetter(r) || unicode.IsDigit(r) }
	for rest := problem; rest != ""; {
		i := strings.IndexFunc(rest, func(r rune) bool { return !word(r) })
		if i < 0 {
			i = len(rest)
		}
		b.WriteString(rename(rest[:i]))
		rest = rest[i:]
		j := strings.IndexFunc(rest, word)
		if j < 0 {
			j = len(rest)
		}
		b.WriteString(rest[:j])
		rest = rest[j:]
	}
	return &usageError{fmt.Errorf("%s: %s", rename(field), b.String())}
}
