package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kustomer-worker/kustomer-worker/internal/testwait"
)

// startMock runs the mock command with args and env until the test ends, and returns its URL.
func startMock(t *testing.T, args []string, environ map[string]string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out := &testwait.Buffer{}
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, append([]string{"mock", "--addr", "127.0.0.1:0"}, args...),
			&env{stdout: out, stderr: &testwait.Buffer{}, getenv: func(k string) string { return environ[k] }})
	}()
	t.Cleanup(func() {
		cancel()
		if err := testwait.Recv(t, "the mock to stop", 10*time.Second, done); err != nil {
			t.Errorf("mock: %v", err)
		}
	})
	url := regexp.MustCompile(`http://[0-9.:]+`)
	testwait.Until(t, "the mock's URL", 10*time.Second, func() bool { return url.MatchString(out.String()) })
	return url.FindString(out.String())
}

// put sends one update to the mock and returns the answer's headers.
func put(t *testing.T, base string) http.Header {
	t.Helper()
	req, err := http.NewRequest(http.MethodPut, base+"/v1/conversations/5f3c9a1b2c3d4e5f6a7b8c9d", strings.NewReader(`{"priority":3}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer test-key")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("PUT: %s; want 200", resp.Status)
	}
	return resp.Header
}

func TestMockReadingsOfTheBudget(t *testing.T) {
	t.Parallel()
	t.Run("--reset-absent leaves the reset out and keeps what is left", func(t *testing.T) {
		h := put(t, startMock(t, []string{"--budget", "10", "--window", "5s", "--reset-absent"}, nil))
		if h.Get("X-Ratelimit-Reset") != "" || h.Get("X-Ratelimit-Remaining") != "9" {
			t.Errorf("reset %q, remaining %q; want none and 9", h.Get("X-Ratelimit-Reset"), h.Get("X-Ratelimit-Remaining"))
		}
	})
	t.Run("MOCK_RATE_HEADERS_ABSENT leaves every rate-limit header out", func(t *testing.T) {
		h := put(t, startMock(t, []string{"--budget", "10"}, map[string]string{"MOCK_RATE_HEADERS_ABSENT": "true"}))
		for _, k := range []string{"X-Ratelimit-Limit", "X-Ratelimit-Remaining", "X-Ratelimit-Reset"} {
			if v := h.Get(k); v != "" {
				t.Errorf("%s: %q; want none", k, v)
			}
		}
	})
	t.Run("--reset-round-down with --reset-delta on a fixed window rounds down", func(t *testing.T) {
		h := put(t, startMock(t, []string{"--budget", "10", "--window", "5s", "--reset-delta", "--reset-round-down",
			"--window-start", "start", "--window-offset", "4500ms"}, nil))
		// The window ends 4.5 s after the fake's start, a moment ago: 4 s rounded down
		// (3 s if the request took over half a second).
		if got := h.Get("X-Ratelimit-Reset"); got != "4" && got != "3" {
			t.Errorf("reset %q; want 4 (seconds from now, rounded down)", got)
		}
	})
	t.Run("--other clients spend from the budget inside the fake", func(t *testing.T) {
		base := startMock(t, nil, map[string]string{"MOCK_BUDGET": "100", "MOCK_WINDOW": "1s", "MOCK_OTHERS": "0.5,0.2:bursts"})
		var st struct {
			Others struct{ Requests int } `json:"others"`
		}
		testwait.Until(t, "the other clients to send", 10*time.Second, func() bool {
			resp, err := http.Get(base + "/_mock/stats")
			if err != nil {
				return false
			}
			defer resp.Body.Close()
			return json.NewDecoder(resp.Body).Decode(&st) == nil && st.Others.Requests >= 70
		})
	})
}

func TestMockRefusesBadReadings(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"--window-start", "noon"},
		{"--window", "5s", "--window-offset", "5s"},
		{"--other", "1.5"},
		{"--other", "0.3:sometimes"},
		{"--other", "0.3:steady:2m:1m"},
		{"--other", "0.3:steady:soon"},
	} {
		err := run(context.Background(), append([]string{"mock", "--addr", "127.0.0.1:0"}, args...),
			&env{stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}, getenv: func(string) string { return "" }})
		var ue *usageError
		if !errors.As(err, &ue) {
			t.Errorf("%v: err = %v; want a usage error", args, err)
		}
	}
}
