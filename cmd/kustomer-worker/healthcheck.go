package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// healthcheckCmd asks a running daemon whether it is alive or ready, for container
// healthchecks: the image has no shell, curl or wget.
type healthcheckCmd struct {
	HTTPAddr string        `name:"http-addr" env:"WORKER_HTTP_ADDR" default:"127.0.0.1:9464" help:"The daemon's --http-addr; a host of 0.0.0.0 or :: is asked on the loopback."`
	Ready    bool          `name:"ready" help:"Ask /readyz (connected to NATS and bound to its consumers) instead of /healthz (the process runs)."`
	URL      string        `name:"url" help:"Ask this URL instead, e.g. the fake Kustomer's http://127.0.0.1:8080/_mock/stats."`
	Timeout  time.Duration `name:"timeout" default:"3s" help:"How long to wait for the answer."`
}

func (c *healthcheckCmd) Help() string {
	return `Exits 0 when the endpoint answers 200, 1 otherwise (with the reason on stderr).

Examples:
  # In a container (compose healthcheck, Kubernetes exec probe):
  kustomer-worker healthcheck
  kustomer-worker healthcheck --ready
  # The fake Kustomer of 'kustomer-worker mock':
  kustomer-worker healthcheck --url http://127.0.0.1:8080/_mock/stats`
}

func (c *healthcheckCmd) Run(ctx context.Context, e *env) error {
	url := c.URL
	if url == "" {
		host, port, err := net.SplitHostPort(c.HTTPAddr)
		if err != nil {
			return usagef("http-addr: %v", err)
		}
		if host == "" || host == "0.0.0.0" || host == "::" {
			host = "127.0.0.1"
		}
		path := "/healthz"
		if c.Ready {
			path = "/readyz"
		}
		url = "http://" + net.JoinHostPort(host, port) + path
	}
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return usagef("url: %v", err)
	}
	resp, err := (&http.Client{}).Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck %s: %w", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	fmt.Fprintf(e.stdout, "%s: %s\n", url, strings.TrimSpace(string(body)))
	return nil
}
