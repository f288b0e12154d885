package bulk

import (
	"fmt"
	"time"

	"github.com/kustomer-worker/kustomer-worker/kustomer"
)

// Defaults of Config, written once: the command line shows and uses these too.
const (
	DefaultSize     = kustomer.MaxBulkItems // items in a full job
	DefaultLinger   = 250 * time.Millisecond
	DefaultMin      = 10
	DefaultDeadline = 10 * time.Minute
	// DefaultMaxBytes bounds a job's request: 100 bodies of up to 400 KiB would be 40 MB.
	DefaultMaxBytes = 4 << 20
	// DefaultJobsHeld is how many full jobs' worth of messages the pool holds in bulk mode
	// by default: MaxAckPending defaults to DefaultJobsHeld × Size. Jobs in flight bound the
	// pace: at 1,000 requests a minute and about 2 units a job, the budget allows 8 jobs a
	// second, so jobs of D seconds need 8 × D of them in flight. 40 keeps up with jobs of up
	// to about 4 s (BenchmarkRun: 1.02 × the time the budget allows with 2 s jobs, 2.41 × with
	// 10); longer jobs need a larger --max-ack-pending (issue 25, docs/RUNS.md).
	DefaultJobsHeld = 40
	// MinDeadline is the least Deadline Validate accepts: a job needs a few reads.
	MinDeadline = 5 * time.Second
)

// Config turns on bulk mode and tunes it. In bulk mode partial updates (not replace) of
// distinct conversations go to Kustomer in bulk jobs of up to Size items, one unit of the org
// budget a submit, taken from the heads of the conversations' queues.
type Config struct {
	// Enabled turns bulk mode on. Default false.
	Enabled bool
	// Size is the most items in one job, 1 to 100. Default DefaultSize (100).
	Size int
	// Linger is how long the first item waits for the job to fill. Then the job goes out if
	// it has Min items; with fewer, they go as single PUTs. While items still arrive (none
	// more than Linger/5 apart), a job waits on for them, up to 4 × Linger. Default
	// DefaultLinger (250ms).
	Linger time.Duration
	// Min is the fewest items worth a job (a submit and at least one read): with fewer after
	// Linger, they go as single PUTs. Default DefaultMin (10).
	Min int
	// Deadline is how long a job may take from its submit; then its unsettled items go as
	// single PUTs, and the conversations' newer updates wait until the job is complete or
	// twice Deadline passed. Default DefaultDeadline (10m).
	Deadline time.Duration
	// MaxBytes is the most bytes of update bodies in one job: a job goes out before an update
	// that would pass it (an update larger alone goes in a job of its own). A job Kustomer
	// refuses as too large (413) is split in two. Default DefaultMaxBytes (4 MiB).
	MaxBytes int
}

// WithDefaults returns b with every zero field set to its default.
func (b Config) WithDefaults() Config {
	if b.Size == 0 {
		b.Size = DefaultSize
	}
	if b.Linger == 0 {
		b.Linger = DefaultLinger
	}
	if b.Min == 0 {
		b.Min = DefaultMin
	}
	if b.Deadline == 0 {
		b.Deadline = DefaultDeadline
	}
	if b.MaxBytes == 0 {
		b.MaxBytes = DefaultMaxBytes
	}
	return b
}

// Validate returns a *ConfigError for the first field that cannot work.
func (b Config) Validate() error {
	if !b.Enabled {
		return nil
	}
	bad := func(field, format string, args ...any) error {
		return &ConfigError{Field: field, Problem: fmt.Sprintf(format, args...)}
	}
	switch {
	case b.Size < 1 || b.Size > kustomer.MaxBulkItems:
		return bad("Size", "%d is not from 1 to %d", b.Size, kustomer.MaxBulkItems)
	case b.Linger < 0:
		return bad("Linger", "%s is negative", b.Linger)
	case b.Min < 1 || b.Min > b.Size:
		return bad("Min", "%d is not from 1 to the job size %d", b.Min, b.Size)
	case b.Deadline < MinDeadline:
		return bad("Deadline", "%s is under %s", b.Deadline, MinDeadline)
	case b.MaxBytes < 1:
		return bad("MaxBytes", "%d is not positive", b.MaxBytes)
	}
	return nil
}

// ConfigError names the Config field that cannot work and why.
type ConfigError struct {
	Field   string // the Go field name, such as "Size"
	Problem string
}

func (e *ConfigError) Error() string { return "bulk: Config." + e.Field + ": " + e.Problem }
