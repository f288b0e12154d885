package queue

import "errors"

// ErrNoDeadLetter is returned for a sequence that holds no dead letter.
var ErrNoDeadLetter = errors.New("no dead letter with this sequence")

// ConfigError names the field of a configuration value (Topology, ConnConfig) that cannot
// work and why. Callers that expose the settings under other names (the command line's flags)
// map Field, and the field names in Problem, to theirs.
type ConfigError struct {
	Type    string // the Go type, such as "Topology"
	Field   string // the Go field name, such as "AckWait"
	Problem string // what is wrong, naming other fields by their Go names
}

func (e *ConfigError) Error() string { return "queue: " + e.Type + "." + e.Field + ": " + e.Problem }

// ConnectKind is why a connection to NATS failed.
type ConnectKind int

const (
	ConnectUnreachable ConnectKind = iota // refused, DNS, timeout, no server answering: may heal
	ConnectAuth                           // the server refused the authorization or authentication
	ConnectTLS                            // the TLS handshake or the certificate check failed
	ConnectCredentials                    // a credentials, nkey or certificate file cannot be used
	ConnectNoJetStream                    // connected, but JetStream is not enabled for the account
)

// Permanent reports whether waiting cannot fix a failure of this kind.
func (k ConnectKind) Permanent() bool { return k != ConnectUnreachable }

func (k ConnectKind) String() string {
	switch k {
	case ConnectAuth:
		return "authorization refused"
	case ConnectTLS:
		return "TLS failure"
	case ConnectCredentials:
		return "credentials unusable"
	case ConnectNoJetStream:
		return "JetStream not enabled"
	}
	return "unreachable"
}

// ConnectError is a failure to connect to NATS, with its kind and the server's URL with
// credentials removed.
type ConnectError struct {
	URL  string // redacted by RedactURLs
	Kind ConnectKind
	Err  error
}

func (e *ConnectError) Error() string {
	return "NATS at " + e.URL + ": " + e.Kind.String() + ": " + e.Err.Error()
}

func (e *ConnectError) Unwrap() error { return e.Err }
