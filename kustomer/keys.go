package kustomer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/kustomer-worker/kustomer-worker/internal/logtext"
)

// redacted stands in for the API key wherever a value would otherwise be printed.
const redacted = logtext.Redacted

// KeySource yields the API key for each request, so a rotated key file is picked up without a
// restart. Implementations must be safe for concurrent use and must never put the key into an
// error.
type KeySource interface {
	Key(ctx context.Context) (string, error)
}

// StaticKey is an API key fixed for the life of the process. Printing it with fmt (any verb),
// slog, or encoding it as text or JSON yields "[redacted]", never the key.
type StaticKey string

// Key returns the key, or an error when it is empty.
func (k StaticKey) Key(context.Context) (string, error) {
	if k == "" {
		return "", errors.New("kustomer: the API key is empty")
	}
	return string(k), nil
}

// String redacts the key.
func (k StaticKey) String() string { return redacted }

// GoString redacts the key.
func (k StaticKey) GoString() string { return "kustomer.StaticKey(" + redacted + ")" }

// LogValue redacts the key.
func (k StaticKey) LogValue() slog.Value { return slog.StringValue(redacted) }

// Format redacts the key for every verb, including %d and %x, which would otherwise bypass String.
func (k StaticKey) Format(f fmt.State, verb rune) { formatRedacted(f, verb, k.String(), k.GoString()) }

// MarshalText redacts the key, so encoding a config that holds it cannot leak it.
func (k StaticKey) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// KeyFile is a KeySource that reads the API key from a file and picks up a rewritten or replaced
// file without a restart. It stats the file at most once per second and reads it again only when
// its identity, modification time or size changed. Leading and trailing whitespace is trimmed; a
// missing, unreadable or empty file is an error. Safe for concurrent use.
type KeyFile struct {
	path  string
	now   func() time.Time // the clock; tests replace it
	state *keyFileState    // behind a pointer, so that KeyFile can be printed by value
}

// keyFileState is what KeyFile last saw.
type keyFileState struct {
	mu      sync.Mutex
	checked time.Time   // when the file was last stat'ed; zero before the first call
	info    os.FileInfo // the file as it was when key and err were read
	key     string
	err     error
}

// keyFileCheckEvery is how often KeyFile looks at the file.
const keyFileCheckEvery = time.Second

// NewKeyFile returns a KeySource reading the key from path. It does not touch the file until the
// first call to Key.
func NewKeyFile(path string) *KeyFile {
	return &KeyFile{path: path, now: time.Now, state: &keyFileState{}}
}

// Key returns the key in the file as of the last check, looking at the file again if a second has
// passed since.
func (f *KeyFile) Key(ctx context.Context) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	st := f.state
	st.mu.Lock()
	defer st.mu.Unlock()

	now := f.now()
	if since := now.Sub(st.checked); !st.checked.IsZero() && since >= 0 && since < keyFileCheckEvery {
		return st.key, st.err
	}
	st.checked = now

	info, err := os.Stat(f.path)
	if err != nil {
		st.info, st.key, st.err = nil, "", fmt.Errorf("kustomer: API key file: %w", err)
		return "", st.err
	}
	if st.info != nil && os.SameFile(st.info, info) && info.ModTime().Equal(st.info.ModTime()) && info.Size() == st.info.Size() {
		return st.key, st.err
	}
	st.info = info
	st.key, st.err = readKeyFile(f.path)
	if st.err != nil {
		st.info = nil // look again in a second even if the file looks the same (say, after a chmod)
	}
	return st.key, st.err
}

// readKeyFile reads and trims the key in path.
func readKeyFile(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("kustomer: API key file: %w", err)
	}
	key := strings.TrimSpace(string(data))
	if key == "" {
		return "", fmt.Errorf("kustomer: API key file %s is empty", path)
	}
	return key, nil
}

// String names the file, never the key. The formatting methods take a value so that printing a
// dereferenced KeyFile cannot reach its fields either.
func (f KeyFile) String() string { return "kustomer.KeyFile(" + f.path + ")" }

// GoString names the file, never the key.
func (f KeyFile) GoString() string { return fmt.Sprintf("kustomer.NewKeyFile(%q)", f.path) }

// LogValue names the file, never the key.
func (f KeyFile) LogValue() slog.Value { return slog.GroupValue(slog.String("file", f.path)) }

// Format names the file for every verb, never the key.
func (f KeyFile) Format(s fmt.State, verb rune) { formatRedacted(s, verb, f.String(), f.GoString()) }

// formatRedacted writes gostring for %#v and str for every other verb, so that no verb reaches
// the fields behind them.
func formatRedacted(f fmt.State, verb rune, str, gostring string) {
	if verb == 'v' && f.Flag('#') {
		_, _ = fmt.Fprint(f, gostring)
		return
	}
	_, _ = fmt.Fprint(f, str)
}
