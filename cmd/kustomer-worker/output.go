package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"golang.org/x/term"
)

// writeJSON writes v as one line of JSON.
func writeJSON(w io.Writer, v any) error {
	return json.NewEncoder(w).Encode(v)
}

// isTerminal reports whether w is a terminal, for progress bars and redrawing in place.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '\n' || r == '\r' || r == '\t' {
			return ' '
		}
		return r
	}, s)
}

// plural is "1 dead letter", "2 dead letters".
func plural[N int | int64](n N, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

func statusText(status int) string {
	if status == 0 {
		return "without status"
	}
	return strconv.Itoa(status)
}

// readInput reads a file, or stdin for "-".
func readInput(e *env, path string) ([]byte, error) {
	if path == "-" {
		if e.stdin == nil {
			return nil, nil
		}
		return io.ReadAll(e.stdin)
	}
	return os.ReadFile(path)
}
