package main

import (
	"context"
	"io"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kustomer-worker/kustomer-worker/internal/logflood"
)

// floodSafeLogger is the daemon's logger: lines of one kind beyond a burst per interval are
// held back and summarized (see logflood), and counted in
// kustomer_worker_log_lines_held_back_total by kind. The caller calls flushEvery.
func (g *globals) floodSafeLogger(w io.Writer, reg prometheus.Registerer) (*slog.Logger, *logflood.Handler) {
	held := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "kustomer_worker", Name: "log_lines_held_back_total",
		Help: "Log lines not written in full because many of their kind came at once, by kind (level, message, class, status).",
	}, []string{"kind"})
	reg.MustRegister(held)
	h := logflood.New(g.logger(w).Handler(), logflood.Options{
		Suppressed: func(kind string) { held.WithLabelValues(kind).Inc() },
	})
	return slog.New(h), h
}

// flushEvery writes the flood summary of each interval, and a last one when ctx ends.
func flushEvery(ctx context.Context, h *logflood.Handler) {
	t := time.NewTicker(logflood.DefaultInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			_ = h.Flush(context.Background(), true)
			return
		case <-t.C:
			_ = h.Flush(ctx, false)
		}
	}
}
