package kustomer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeKey writes content to path and sets its modification time, so tests do not depend on the
// file system's timestamp resolution.
func writeKey(tb testing.TB, path, content string, mtime time.Time) {
	tb.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		tb.Fatal(err)
	}
	if err := os.Chtimes(path, mtime, mtime); err != nil {
		tb.Fatal(err)
	}
}

// keyFileAt returns a KeyFile for path whose clock the caller moves with the returned function.
func keyFileAt(tb testing.TB, path string) (*KeyFile, func(time.Duration)) {
	tb.Helper()
	kf := NewKeyFile(path)
	clock := time.Unix(1_800_000_000, 0)
	kf.now = func() time.Time { return clock }
	return kf, func(d time.Duration) { clock = clock.Add(d) }
}

// mustKey returns the key or fails the test.
func mustKey(tb testing.TB, ks KeySource) string {
	tb.Helper()
	k, err := ks.Key(context.Background())
	if err != nil {
		tb.Fatalf("Key: %v", err)
	}
	return k
}

func TestStaticKeyIsNeverPrinted(t *testing.T) {
	k := StaticKey(testKey)
	if got := mustKey(t, k); got != testKey {
		t.Errorf("Key = %q, want the key itself", got)
	}
	var logs bytes.Buffer
	slog.New(slog.NewJSONHandler(&logs, nil)).Info("x", "key", k, "group", slog.GroupValue(slog.Any("key", k)))
	slog.New(slog.NewTextHandler(&logs, nil)).Info("x", "key", k)
	js, err := json.Marshal(map[string]any{"key": k})
	if err != nil {
		t.Fatal(err)
	}
	texts := []string{logs.String(), string(js), k.String(), k.GoString()}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%10.3s"} {
		texts = append(texts, fmt.Sprintf(verb, k), fmt.Sprintf(verb, struct{ K StaticKey }{k}), fmt.Sprintf(verb, []StaticKey{k}))
	}
	for _, s := range texts {
		if strings.Contains(s, testKey) || strings.Contains(strings.ToLower(s), fmt.Sprintf("%x", testKey)) {
			t.Errorf("the key leaked into %q", s)
		}
	}
}

func TestStaticKeyRejectsEmpty(t *testing.T) {
	if _, err := StaticKey("").Key(t.Context()); err == nil {
		t.Error("an empty StaticKey gave no error")
	}
}

func TestKeyFile(t *testing.T) {
	mtime := time.Unix(1_700_000_000, 0)

	t.Run("trims whitespace", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "key")
		writeKey(t, path, "\n  abc-123\t\r\n", mtime)
		kf, _ := keyFileAt(t, path)
		if got := mustKey(t, kf); got != "abc-123" {
			t.Errorf("Key = %q, want %q", got, "abc-123")
		}
	})

	t.Run("picks up a rewritten key after a second", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "key")
		writeKey(t, path, "old-key", mtime)
		kf, advance := keyFileAt(t, path)
		mustKey(t, kf)

		writeKey(t, path, "new-key-longer", mtime.Add(time.Second))
		advance(999 * time.Millisecond)
		if got := mustKey(t, kf); got != "old-key" {
			t.Errorf("within a second Key = %q, want the cached %q (no stat)", got, "old-key")
		}
		advance(time.Millisecond)
		if got := mustKey(t, kf); got != "new-key-longer" {
			t.Errorf("after a second Key = %q, want %q", got, "new-key-longer")
		}
	})

	t.Run("picks up a same-size key with a new mtime", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "key")
		writeKey(t, path, "key-aaaa", mtime)
		kf, advance := keyFileAt(t, path)
		mustKey(t, kf)
		writeKey(t, path, "key-bbbb", mtime.Add(time.Second))
		advance(time.Second)
		if got := mustKey(t, kf); got != "key-bbbb" {
			t.Errorf("Key = %q, want %q", got, "key-bbbb")
		}
	})

	t.Run("picks up a file replaced by rename with the same size and mtime", func(t *testing.T) {
		dir := t.TempDir()
		path := filepath.Join(dir, "key")
		writeKey(t, path, "key-aaaa", mtime)
		kf, advance := keyFileAt(t, path)
		mustKey(t, kf)
		next := filepath.Join(dir, "key.next")
		writeKey(t, next, "key-bbbb", mtime)
		if err := os.Rename(next, path); err != nil {
			t.Fatal(err)
		}
		advance(time.Second)
		if got := mustKey(t, kf); got != "key-bbbb" {
			t.Errorf("Key = %q, want %q", got, "key-bbbb")
		}
	})

	t.Run("missing file is an error until it appears", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "key")
		kf, advance := keyFileAt(t, path)
		if _, err := kf.Key(t.Context()); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("Key error = %v, want os.ErrNotExist", err)
		}
		writeKey(t, path, "late-key", mtime)
		advance(time.Second)
		if got := mustKey(t, kf); got != "late-key" {
			t.Errorf("Key = %q, want %q", got, "late-key")
		}
	})

	t.Run("empty file is an error", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "key")
		writeKey(t, path, " \n\t", mtime)
		kf, _ := keyFileAt(t, path)
		if k, err := kf.Key(t.Context()); err == nil {
			t.Errorf("Key = %q, want an error for an empty file", k)
		}
	})

	t.Run("key emptied later is an error", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "key")
		writeKey(t, path, "some-key", mtime)
		kf, advance := keyFileAt(t, path)
		mustKey(t, kf)
		writeKey(t, path, "", mtime.Add(time.Second))
		advance(time.Second)
		if k, err := kf.Key(t.Context()); err == nil {
			t.Errorf("Key = %q, want an error for an emptied file", k)
		}
	})

	t.Run("canceled context", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "key")
		writeKey(t, path, "some-key", mtime)
		kf, _ := keyFileAt(t, path)
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if _, err := kf.Key(ctx); !errors.Is(err, context.Canceled) {
			t.Errorf("Key error = %v, want context.Canceled", err)
		}
	})

	t.Run("never prints the key", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "key")
		writeKey(t, path, testKey, mtime)
		kf, _ := keyFileAt(t, path)
		mustKey(t, kf)
		var logs bytes.Buffer
		slog.New(slog.NewJSONHandler(&logs, nil)).Info("x", "keys", kf)
		texts := []string{logs.String(), kf.String(), kf.GoString()}
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%x", "%d"} {
			texts = append(texts, fmt.Sprintf(verb, kf), fmt.Sprintf(verb, *kf))
		}
		for _, s := range texts {
			if strings.Contains(s, testKey) {
				t.Errorf("the key leaked into %q", s)
			}
		}
		if !strings.Contains(logs.String(), path) {
			t.Errorf("logs = %s, want the file's path", logs.String())
		}
	})
}
