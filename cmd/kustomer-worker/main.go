// Command kustomer-worker applies "update this conversation" messages from NATS JetStream to
// the Kustomer API, and carries the commands to feed, watch and repair it.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/kustomer-worker/kustomer-worker/kustomer"
)

// version is set at build time with -ldflags "-X main.version=..."; buildVersion reads the
// module's build information when it is not.
var version = "dev"

func main() {
	kustomer.Version = buildVersion() // the User-Agent; set once here, not per run: tests run in parallel
	soft, hard, stop := signalContexts(os.Stderr)
	defer stop()
	err := run(soft, os.Args[1:], &env{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv, hardStop: hard})
	os.Exit(exitCode(err, os.Stderr))
}

// signalContexts returns soft, canceled by the first SIGINT or SIGTERM, which starts a
// graceful shutdown, and hard, canceled by the second, which cuts the shutdown's waits short:
// requests in flight are abandoned and their messages handed back, but the NATS connection is
// still drained and the embedded server still stopped cleanly, within a few seconds. A third
// signal exits at once. Nothing is lost either way: unacknowledged messages are redelivered.
func signalContexts(w io.Writer) (soft, hard context.Context, stop func()) {
	soft, cancelSoft := context.WithCancelCause(context.Background())
	hard, cancelHard := context.WithCancelCause(context.Background())
	sigs := make(chan os.Signal, 3)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		for n := 1; ; n++ {
			var sig os.Signal
			select {
			case sig = <-sigs:
			case <-done:
				return
			}
			switch n {
			case 1:
				cancelSoft(fmt.Errorf("received %s", sig))
			case 2:
				fmt.Fprintf(w, "received %s again: cutting the shutdown short; requests in flight are abandoned and redelivered later (a third signal exits at once)\n", sig)
				cancelHard(fmt.Errorf("received %s twice", sig))
			default:
				fmt.Fprintf(w, "received %s a third time: exiting at once; unacknowledged messages will be redelivered\n", sig)
				os.Exit(1)
			}
		}
	}()
	return soft, hard, func() {
		signal.Stop(sigs)
		close(done)
		cancelSoft(nil)
		cancelHard(nil)
	}
}

// exitCode prints err and maps it to the process's exit status: 0 for success, 2 for bad
// usage or configuration, 3 for a run that ended with dead letters, 1 for everything else.
func exitCode(err error, w io.Writer) int {
	if err == nil {
		return 0
	}
	fmt.Fprintln(w, "kustomer-worker:", err)
	var ue *usageError
	if errors.As(err, &ue) {
		return 2
	}
	var xe *exitError
	if errors.As(err, &xe) {
		return xe.code
	}
	return 1
}
