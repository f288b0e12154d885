package main

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestHealthcheck(t *testing.T) {
	t.Parallel()
	ready := false
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/healthz":
			w.Write([]byte("ok"))
		case r.URL.Path == "/readyz" && ready:
			w.Write([]byte("active"))
		default:
			http.Error(w, "connecting to NATS", http.StatusServiceUnavailable)
		}
	}))
	t.Cleanup(srv.Close)
	addr := strings.TrimPrefix(srv.URL, "http://")
	t.Run("a live daemon passes", func(t *testing.T) {
		if _, _, err := runArgs(t, nil, "healthcheck", "--http-addr", addr); err != nil {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("a daemon not ready fails --ready with the reason", func(t *testing.T) {
		_, _, err := runArgs(t, map[string]string{"WORKER_HTTP_ADDR": addr}, "healthcheck", "--ready")
		if err == nil || !strings.Contains(err.Error(), "connecting to NATS") {
			t.Errorf("err = %v; want the reason", err)
		}
		var ue *usageError
		if errors.As(err, &ue) {
			t.Errorf("err = %v is a usage error (exit 2); want exit 1", err)
		}
	})
	t.Run("nothing listening fails", func(t *testing.T) {
		if _, _, err := runArgs(t, nil, "healthcheck", "--url", "http://127.0.0.1:1/healthz", "--timeout", "2s"); err == nil {
			t.Error("err = nil; want a failure")
		}
	})
}
