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
