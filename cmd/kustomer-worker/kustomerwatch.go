package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"sync"
	"syscall"

	"github.com/kustomer-worker/kustomer-worker/kustomer"
	"github.com/kustomer-worker/kustomer-worker/queue"
	"github.com/kustomer-worker/kustomer-worker/worker"
)

// watchedClient names an unreachable Kustomer once, with the base URL and a hint, instead of
// leaving it to the pool's per-message retry lines; and once more when Kustomer answers
// again. It does not probe at start: a probe would spend budget.
type watchedClient struct {
	next    kustomerAPI
	baseURL string // credentials removed
	log     *slog.Logger

	mu   sync.Mutex
	down bool // guarded by mu: the last request did not reach Kustomer, and that was said
}

// kustomerAPI is what the pool asks of Kustomer: updates, and reads for the outage breaker's
// probes.
type kustomerAPI interface {
	worker.Updater
	worker.Reader
}

func newWatchedClient(next kustomerAPI, baseURL string, log *slog.Logger) *watchedClient {
	return &watchedClient{next: next, baseURL: queue.RedactURLs(baseURL), log: log}
}

func (w *watchedClient) UpdateConversation(ctx context.Context, u kustomer.Update) (*kustomer.Result, error) {
	res, err := w.next.UpdateConversation(ctx, u)
	w.watch(ctx, err)
	return res, err
}

// GetConversation is the outage breaker's probe: watched like an update.
func (w *watchedClient) GetConversation(ctx context.Context, id string) (*kustomer.Result, error) {
	res, err := w.next.GetConversation(ctx, id)
	w.watch(ctx, err)
	return res, err
}

// watch says, once, that Kustomer is unreachable or answers again, from a request's error.
func (w *watchedClient) watch(ctx context.Context, err error) {
	var apiErr *kustomer.APIError
	switch {
	case err == nil || (errors.As(err, &apiErr) && apiErr.Status != 0):
		w.answered()
	case ctx.Err() != nil, errors.Is(err, kustomer.ErrInvalid):
	default:
		if cause, hint := unreachable(err); cause != "" {
			w.unreachable(err, cause, hint)
		}
	}
}

func (w *watchedClient) answered() {
	w.mu.Lock()
	was := w.down
	w.down = false
	w.mu.Unlock()
	if was {
		w.log.Info("Kustomer answers again", "kustomer_url", w.baseURL)
	}
}

func (w *watchedClient) unreachable(err error, cause, hint string) {
	w.mu.Lock()
	was := w.down
	w.down = true
	w.mu.Unlock()
	if !was {
		w.log.Error("cannot reach Kustomer: "+cause+": "+hint, "kustomer_url", w.baseURL, "error", err)
	}
}

// unreachable names why a request did not reach Kustomer, with a hint, or returns "" for a
// failure that says nothing about the URL (a dropped connection, one timeout).
func unreachable(err error) (cause, hint string) {
	var (
		dns    *net.DNSError
		op     *net.OpError
		verify *tls.CertificateVerificationError
		unk    x509.UnknownAuthorityError
		host   x509.HostnameError
		rec    tls.RecordHeaderError
	)
	switch {
	case errors.As(err, &dns):
		return "host not found", "is the host in --kustomer-url right?"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused", "is --kustomer-url right?"
	case errors.As(err, &verify), errors.As(err, &unk), errors.As(err, &host), errors.As(err, &rec):
		return "TLS failure", "does --kustomer-url point at Kustomer's HTTPS API?"
	case errors.As(err, &op) && op.Op == "dial":
		return "cannot connect", "is --kustomer-url right, and is the network path to it open?"
	}
	return "", ""
}
