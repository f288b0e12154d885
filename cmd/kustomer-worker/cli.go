package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/alecthomas/kong"
)

// env is what a command may use of the process: its streams and environment. Tests pass
// their own.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
	// hardStop ends when a graceful shutdown must be cut short (a second SIGINT or SIGTERM):
	// long-running commands then abandon their waits but still clean up. nil never ends.
	hardStop context.Context
}

// hard returns e.hardStop, or a context that never ends when there is none.
func (e *env) hard() context.Context {
	if e.hardStop == nil {
		return context.Background()
	}
	return e.hardStop
}

// usageError is bad usage or configuration: exit status 2.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return &usageError{fmt.Errorf(format, args...)} }

// exitError is a failure with an exit status of its own: 3 for a run that ended with dead
// letters (enqueue --wait, status --run).
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// globals are flags every command takes.
type globals struct {
	LogLevel    string           `name:"log-level" env:"WORKER_LOG_LEVEL" default:"info" enum:"debug,info,warn,error" help:"Log level: debug, info, warn or error."`
	LogFormat   string           `name:"log-format" env:"WORKER_LOG_FORMAT" default:"text" enum:"text,json" help:"Log format: text or json."`
	VersionFlag kong.VersionFlag `name:"version" help:"Print the version and exit."`
}

func (g *globals) logger(w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(g.LogLevel))
	opts := &slog.HandlerOptions{Level: level}
	if g.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

type cli struct {
	globals
	Run         runCmd         `cmd:"" help:"Apply update messages from NATS to Kustomer (the daemon)."`
	Enqueue     enqueueCmd     `cmd:"" help:"Publish update messages from a JSON Lines file, or one body for a list of ids: a backfill."`
	Status      statusCmd      `cmd:"" help:"Show the backlog, messages in progress and dead letters; --watch for throughput and time left."`
	DLQ         dlqCmd         `cmd:"" name:"dlq" help:"List, show, replay and purge dead letters."`
	Runs        runsCmd        `cmd:"" help:"List recent runs (backfills): applied, dead-lettered, pending, state."`
	Demo        demoCmd        `cmd:"" help:"Run everything on this machine against a fake Kustomer, with a generated backfill: start here."`
	Mock        mockCmd        `cmd:"" help:"Serve a fake Kustomer API for trying the worker without an account."`
	Healthcheck healthcheckCmd `cmd:"" help:"Ask a running daemon's /healthz or /readyz: exit 0 when it answers 200 (container healthchecks)."`
	Help        helpCmd        `cmd:"" help:"Show the usage of kustomer-worker or of one command."`
	Version     versionCmd     `cmd:"" help:"Print the version."`
}

// run parses args and runs the chosen command.
func run(ctx context.Context, args []string, e *env) error {
	var c cli
	warned := map[string]bool{} // deprecation warnings given, one a name
	parser, err := kong.New(&c,
		kong.Name("kustomer-worker"),
		kong.Description("Applies Kustomer conversation updates from NATS JetStream, paced to the API's rate budget, with retries and a dead-letter stream."),
		kong.UsageOnError(),
		kong.Writers(e.stdout, e.stderr),
		kong.Vars{"version": buildVersion()},
		defaultVars(),
		kong.Exit(func(int) { panic(exitNow{}) }),
		kong.Resolvers(envResolver(e.getenv, e.stderr, warned)),
		kong.BindTo(ctx, (*context.Context)(nil)),
		kong.Bind(e, &c.globals),
		kong.ConfigureHelp(kong.HelpOptions{Compact: true}),
	)
	if err != nil {
		return err
	}
	if len(args) == 0 {
		kctx, err := kong.Trace(parser, nil)
		if err != nil {
			return err
		}
		parser.Stdout = e.stderr
		if err := kctx.PrintUsage(false); err != nil {
			return err
		}
		return usagef("no command given: see the usage above, or kustomer-worker help COMMAND")
	}
	kctx, err := parseArgs(parser, args)
	if err != nil {
		if errors.Is(err, errExitNow) {
			return nil
		}
		return &usageError{err}
	}
	if err := applyDeprecatedFlags(kctx, e.stderr, warned); err != nil {
		return err
	}
	return kctx.Run()
}

// applyDeprecatedFlags carries each old flag name given on the command line (a hidden flag
// tagged deprecated:"NEW") over to its new name, with a one-line warning.
func applyDeprecatedFlags(kctx *kong.Context, w io.Writer, warned map[string]bool) error {
	byName := map[string]*kong.Flag{}
	for _, f := range kctx.Flags() {
		byName[f.Name] = f
	}
	for _, p := range kctx.Path {
		if p.Flag == nil {
			continue
		}
		newName := p.Flag.Tag.Get("deprecated")
		if newName == "" {
			continue
		}
		to, ok := byName[newName]
		if !ok {
			return fmt.Errorf("flag --%s: deprecated for --%s, which this command lacks", p.Flag.Name, newName)
		}
		to.Target.Set(p.Flag.Target)
		if !warned["--"+p.Flag.Name] {
			warned["--"+p.Flag.Name] = true
			fmt.Fprintf(w, "kustomer-worker: --%s is deprecated: use --%s\n", p.Flag.Name, newName)
		}
	}
	return nil
}

type exitNow struct{}

var errExitNow = errors.New("exit")

// parseArgs turns kong's exit on --help/--version into a return.
func parseArgs(p *kong.Kong, args []string) (kctx *kong.Context, err error) {
	defer func() {
		if r := recover(); r != nil {
			if _, ok := r.(exitNow); ok {
				kctx, err = nil, errExitNow
				return
			}
			panic(r)
		}
	}()
	return p.Parse(args)
}

// deprecatedEnv maps environment variables still read to the names that replaced them. The
// old name is read only when the new one is unset, with a one-line warning.
var deprecatedEnv = map[string]string{
	"LOG_LEVEL":               "WORKER_LOG_LEVEL",
	"LOG_FORMAT":              "WORKER_LOG_FORMAT",
	"DATA_DIR":                "WORKER_DATA_DIR",
	"ENQUEUE_RUN_ID":          "WORKER_RUN_ID",
	"KUSTOMER_BASE_URL":       "KUSTOMER_URL",
	"KUSTOMER_BULK":           "WORKER_BULK",
	"KUSTOMER_BULK_SIZE":      "WORKER_BULK_SIZE",
	"KUSTOMER_BULK_LINGER":    "WORKER_BULK_LINGER",
	"KUSTOMER_BULK_MIN":       "WORKER_BULK_MIN_SIZE",
	"KUSTOMER_BULK_MAX_BYTES": "WORKER_BULK_MAX_BYTES",
	"KUSTOMER_BULK_DEADLINE":  "WORKER_BULK_DEADLINE",
}

// envResolver reads each flag's `env` tag from getenv instead of the process environment, so
// tests need no os.Setenv; then the deprecated names of deprecatedEnv, warning on w once each.
func envResolver(getenv func(string) string, w io.Writer, warned map[string]bool) kong.Resolver {
	return kong.ResolverFunc(func(kctx *kong.Context, parent *kong.Path, flag *kong.Flag) (any, error) {
		for _, name := range flag.Envs {
			if v := getenv(name); v != "" {
				return strings.TrimSpace(v), nil
			}
		}
		for _, name := range flag.Envs {
			for old, repl := range deprecatedEnv {
				if repl != name {
					continue
				}
				if v := getenv(old); v != "" {
					if !warned[old] {
						warned[old] = true
						fmt.Fprintf(w, "kustomer-worker: environment variable %s is deprecated: use %s\n", old, name)
					}
					return strings.TrimSpace(v), nil
				}
			}
		}
		return nil, nil
	})
}
