package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"unicode"

	"github.com/alecthomas/kong"
	"github.com/nats-io/nkeys"

	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/worker"
)

// natsFlags say how to reach NATS; every command that talks to NATS embeds them. The password
// and token come only from the environment (NATS_PASSWORD, NATS_TOKEN) or the password from a
// file (--nats-password-file): flags show in ps. For run with its embedded server they are
// also the one set of credentials that server accepts (embedded).
type natsFlags struct {
	NATSURL      string `name:"nats-url" env:"NATS_URL" help:"NATS server URL(s), comma-separated. For run, empty starts an embedded server; other commands default to ${default_nats_url}, the embedded server of a running daemon."`
	NATSCreds    string `name:"nats-creds" env:"NATS_CREDS" type:"path" help:"NATS user credentials file (JWT and nkey seed)."`
	NATSNKey     string `name:"nats-nkey" env:"NATS_NKEY" type:"path" help:"NATS nkey seed file."`
	NATSUser     string `name:"nats-user" env:"NATS_USER" help:"NATS user name; the password comes from NATS_PASSWORD or nats-password-file."`
	NATSPassFile string `name:"nats-password-file" env:"NATS_PASSWORD_FILE" type:"path" help:"File holding the NATS password of nats-user (a Docker or Kubernetes secret), instead of NATS_PASSWORD."`
	NATSTLSCA    string `name:"nats-tls-ca" env:"NATS_TLS_CA,NATS_CA" type:"path" help:"CA certificate to verify the NATS server."`
	NATSTLSCert  string `name:"nats-tls-cert" env:"NATS_TLS_CERT,NATS_CERT" type:"path" help:"Client certificate for mutual TLS."`
	NATSTLSKey   string `name:"nats-tls-key" env:"NATS_TLS_KEY,NATS_KEY" type:"path" help:"Client key for mutual TLS."`
}

func (f *natsFlags) conn(e *env, name, fallbackURL string) (queue.ConnConfig, error) {
	url := f.NATSURL
	if url == "" {
		url = fallbackURL
	}
	password, err := f.password(e)
	if err != nil {
		return queue.ConnConfig{}, err
	}
	return queue.ConnConfig{
		URL: url, Name: name, CredsFile: f.NATSCreds, NKeyFile: f.NATSNKey,
		User: f.NATSUser, Password: password, Token: e.getenv("NATS_TOKEN"),
		TLSCA: f.NATSTLSCA, TLSCert: f.NATSTLSCert, TLSKey: f.NATSTLSKey,
	}, nil
}

// password is NATS_PASSWORD, or the content of --nats-password-file without its trailing
// line break.
func (f *natsFlags) password(e *env) (string, error) {
	env := e.getenv("NATS_PASSWORD")
	switch {
	case f.NATSPassFile == "":
		return env, nil
	case env != "":
		return "", usagef("NATS_PASSWORD and nats-password-file: give one, not both")
	}
	b, err := os.ReadFile(f.NATSPassFile)
	if err != nil {
		return "", usagef("nats-password-file: %v", err)
	}
	p := strings.TrimRight(string(b), "\r\n")
	if p == "" {
		return "", usagef("nats-password-file: %s is empty", f.NATSPassFile)
	}
	return p, nil
}

// embeddedAuth gives the embedded server of run the credentials of f: the one user (with its
// password), nkey (the public key of --nats-nkey's seed) or token it accepts, the same that
// the daemon and the other commands connect with.
func (f *natsFlags) embeddedAuth(e *env, ec *queue.EmbeddedConfig) error {
	if f.NATSCreds != "" {
		return usagef("nats-creds: a JWT credentials file needs a NATS server run with an operator; the embedded server takes nats-user with NATS_PASSWORD, nats-nkey or NATS_TOKEN")
	}
	password, err := f.password(e)
	if err != nil {
		return err
	}
	ec.User, ec.Password, ec.Token = f.NATSUser, password, e.getenv("NATS_TOKEN")
	if f.NATSNKey != "" {
		seed, err := os.ReadFile(f.NATSNKey)
		if err != nil {
			return usagef("nats-nkey: %v", err)
		}
		kp, err := nkeys.ParseDecoratedNKey(seed)
		if err != nil {
			return usagef("nats-nkey: %s holds no nkey seed: %v", f.NATSNKey, err)
		}
		pub, err := kp.PublicKey()
		kp.Wipe()
		if err != nil {
			return usagef("nats-nkey: %v", err)
		}
		ec.NKey = pub
	}
	return nil
}

// defaultNATSListen is where the embedded server of run listens by default.
var defaultNATSListen = net.JoinHostPort(queue.DefaultEmbeddedHost, strconv.Itoa(queue.DefaultEmbeddedPort))

// defaultNATSURL is where the commands other than run look for NATS: the embedded server of a
// daemon running on this machine.
var defaultNATSURL = "nats://" + defaultNATSListen

// streamFlags name the work stream and its lanes' subjects: what producers publish to.
type streamFlags struct {
	Stream          string `name:"stream" env:"WORKER_STREAM" default:"${default_stream}" help:"Work stream."`
	Subject         string `name:"subject" env:"WORKER_SUBJECT" default:"${default_subject}" help:"Live lane's subject, for updates as they happen; the stream also takes SUBJECT.>."`
	BackfillSubject string `name:"backfill-subject" env:"WORKER_BACKFILL_SUBJECT" default:"${default_backfill_subject}" help:"Backfill lane's subject, for bulk loads that get the budget live updates leave; the stream also takes BACKFILL-SUBJECT.>."`
}

// dlqStreamFlags name the dead-letter stream.
type dlqStreamFlags struct {
	DLQStream  string `name:"dlq-stream" env:"WORKER_DLQ_STREAM" default:"${default_dlq_stream}" help:"Dead-letter stream."`
	DLQSubject string `name:"dlq-subject" env:"WORKER_DLQ_SUBJECT" default:"${default_dlq_subject}" help:"Dead-letter subject."`
}

// consumerFlags name the consumers and the buckets the replicas share, which status reads.
type consumerFlags struct {
	Consumer         string `name:"consumer" env:"WORKER_CONSUMER" default:"${default_consumer}" help:"Durable consumer of the live lane, shared by every replica."`
	BackfillConsumer string `name:"backfill-consumer" env:"WORKER_BACKFILL_CONSUMER" help:"Durable consumer of the backfill lane (default ${default_backfill_consumer})."`
	PriorityGroup    string `name:"priority-group" env:"WORKER_PRIORITY_GROUP" default:"${default_priority_group}" help:"The lanes' consumers' pinned priority group: one replica pulling in it is active, the others standbys."`
	RolesBucket      string `name:"roles-bucket" env:"WORKER_ROLES_BUCKET" default:"${default_roles_bucket}" help:"KV bucket where replicas publish their role, read by status."`
	BulkBucket       string `name:"bulk-bucket" env:"WORKER_BULK_BUCKET" default:"${default_bulk_bucket}" help:"KV bucket of the bulk jobs in flight (bulk mode), read by status."`
}

// topologyFlags name everything the daemon uses: streams, consumers and buckets.
type topologyFlags struct {
	streamFlags
	dlqStreamFlags
	consumerFlags
	AttemptsBucket string `name:"attempts-bucket" env:"WORKER_ATTEMPTS_BUCKET" default:"${default_attempts_bucket}" help:"KV bucket counting attempts across restarts."`
}

// topology is the queue.Topology the flags give, the others at their defaults.
func (f *streamFlags) topology() queue.Topology {
	return f.apply(queue.Topology{}).WithDefaults()
}

func (f *streamFlags) apply(t queue.Topology) queue.Topology {
	t.Stream, t.Subject, t.BackfillSubject = f.Stream, f.Subject, f.BackfillSubject
	return t
}

func (f *dlqStreamFlags) apply(t queue.Topology) queue.Topology {
	t.DLQStream, t.DLQSubject = f.DLQStream, f.DLQSubject
	return t
}

func (f *consumerFlags) apply(t queue.Topology) queue.Topology {
	t.Consumer, t.BackfillConsumer, t.PriorityGroup = f.Consumer, f.BackfillConsumer, f.PriorityGroup
	t.RolesBucket, t.BulkBucket = f.RolesBucket, f.BulkBucket
	return t
}

// deadLetterFlags are what the dlq commands need: the work stream, to replay to, and the
// dead-letter stream.
type deadLetterFlags struct {
	streamFlags
	dlqStreamFlags
}

func (f *deadLetterFlags) topology() queue.Topology {
	return f.dlqStreamFlags.apply(f.streamFlags.apply(queue.Topology{})).WithDefaults()
}

// observedFlags are what status reads: streams, consumers and the replicas' buckets.
type observedFlags struct {
	streamFlags
	dlqStreamFlags
	consumerFlags
}

func (f *observedFlags) topology() queue.Topology {
	return f.consumerFlags.apply(f.dlqStreamFlags.apply(f.streamFlags.apply(queue.Topology{}))).WithDefaults()
}

func (f *topologyFlags) topology() queue.Topology {
	t := f.consumerFlags.apply(f.dlqStreamFlags.apply(f.streamFlags.apply(queue.Topology{})))
	t.AttemptsBucket = f.AttemptsBucket
	return t.WithDefaults()
}

// embeddedFlags configure the NATS server started in the process when no URL is given.
type embeddedFlags struct {
	NATSListen string `name:"nats-listen" env:"NATS_LISTEN" default:"${default_nats_listen}" help:"With no --nats-url: where the embedded NATS server listens, so producers on this machine can publish. Beyond loopback it needs credentials (nats-user with NATS_PASSWORD or nats-password-file, nats-nkey, or NATS_TOKEN), which it then requires of every client."`
	DataDir    string `name:"data-dir" env:"WORKER_DATA_DIR" default:"${default_data_dir}" type:"path" help:"With no --nats-url: the embedded server's JetStream store."`
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
// each default is written once: a flag says default:"${default_x}", and --help prints it once.
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
		"default_outage_spread":     i(worker.DefaultOutageSpread),
		"default_stranded_every":    d(worker.DefaultStrandedEvery),
		"min_max_ack_pending":       i(worker.MinMaxAckPending),
		"held_per_worker":           i(worker.HeldPerWorker),
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
		"ShutdownTimeout": "shutdown-timeout", "OutageThreshold": "outage-threshold", "OutageSpread": "outage-spread", "StrandedEvery": "stranded-every",
		"Bulk.Size": "bulk-size", "Bulk.Linger": "bulk-linger", "Bulk.Min": "bulk-min-size", "Bulk.Deadline": "bulk-deadline",
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
	"queue.EmbeddedConfig": {"Host": "nats-listen", "Port": "nats-listen", "DataDir": "data-dir",
		"User": "nats-user", "Password": "NATS_PASSWORD", "NKey": "nats-nkey", "Token": "NATS_TOKEN"},
	"kustomer.Options": {"BaseURL": "kustomer-url", "Timeout": "request-timeout", "Key": "KUSTOMER_API_KEY or api-key-file", "AllowInsecure": "--kustomer-allow-insecure"},
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
