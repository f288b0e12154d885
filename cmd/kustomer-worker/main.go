// Command kustomer-worker applies "update this conversation" messages from NATS JetStream to
// the Kustomer API, and carries the commands to feed, watch and repair it.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/kustomer-worker/kustomer-worker/kustomer"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	kustomer.Version = version // the User-Agent; set once here, not per run: tests run in parallel
	ctx, stop := signalContext()
	defer stop()
	err := run(ctx, os.Args[1:], &env{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv})
	os.Exit(exitCode(err, os.Stderr))
}

// signalContext is canceled by the first SIGINT or SIGTERM, which starts a graceful shutdown;
// a second one exits at once. Nothing is lost either way: unacknowledged messages are
// redelivered.
func signalContext() (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		sig := <-sigs
		cancel(fmt.Errorf("received %s", sig))
		sig = <-sigs
		fmt.Fprintf(os.Stderr, "received %s again: exiting at once; unacknowledged messages will be redelivered\n", sig)
		os.Exit(1)
	}()
	return ctx, func() { signal.Stop(sigs); cancel(nil) }
}

// exitCode prints err and maps it to the process's exit status: 0 for success, 2 for bad
// usage or configuration, 1 for everything else.
func exitCode(err error, w *os.File) int {
	if err == nil {
		return 0
	}
	fmt.Fprintln(w, "kustomer-worker:", err)
	var ue *usageError
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}
