package logtext_test

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/kustomer-worker/kustomer-worker/internal/logtext"
)

func TestTruncate(t *testing.T) {
	cases := []struct {
		name, s string
		n       int
		mark    string
		want    string
	}{
		{"a short string is kept whole", "héllo", 6, "…", "héllo"},
		{"a long one is cut with the mark inside the limit", "abcdefgh", 6, "…", "abc…"},
		{"a plain prefix without a mark", "abcdefgh", 3, "", "abc"},
		{"a two-byte character is not split", "aé", 2, "", "a"},
		{"a four-byte character is not split", "x😀y", 4, "", "x"},
		{"a limit below the mark gives the mark alone", "abcdef", 2, "…", "…"},
		{"zero gives nothing", "abc", 0, "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			if got := logtext.Truncate(c.s, c.n, c.mark); got != c.want {
				t.Errorf("Truncate(%q, %d, %q) = %q; want %q", c.s, c.n, c.mark, got, c.want)
			}
		})
	}
}

func FuzzTruncate(f *testing.F) {
	f.Add("héllo wörld 😀", 7)
	f.Fuzz(func(t *testing.T, s string, n int) {
		if n < 0 || n > 1<<16 || !utf8.ValidString(s) {
			t.Skip()
		}
		got := logtext.Truncate(s, n, "…")
		if !utf8.ValidString(got) {
			t.Fatalf("Truncate(%q, %d) = %q: not valid UTF-8", s, n, got)
		}
		if len(s) <= n && got != s {
			t.Fatalf("Truncate(%q, %d) = %q: cut a string that fit", s, n, got)
		}
		if len(s) > n {
			if n >= len("…") && len(got) > n {
				t.Fatalf("Truncate(%q, %d) = %q: %d bytes", s, n, got, len(got))
			}
			if !strings.HasPrefix(s, strings.TrimSuffix(got, "…")) {
				t.Fatalf("Truncate(%q, %d) = %q: not a prefix", s, n, got)
			}
		}
	})
}
