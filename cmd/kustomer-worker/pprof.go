package main

import (
	"net/http"
	"net/http/pprof"
	"runtime"
)

// Sampling of the block and mutex profiles while --pprof is on: one blocking event per 10 µs
// spent blocked, one contended lock in 100. Cheap enough for a live daemon, enough to see
// where it waits.
const (
	pprofBlockRate     = 10_000 // nanoseconds
	pprofMutexFraction = 100
)

// servePProf serves Go's profiles under /debug/pprof/ on mux (--pprof).
func servePProf(mux *http.ServeMux) {
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
}

// startProfiling turns on the block and mutex profiles, which are off by default (--pprof).
// Call it once the embedded NATS server runs, if there is one: starting, the server sets the
// block profile's rate to its own option, off.
func startProfiling() {
	runtime.SetBlockProfileRate(pprofBlockRate)
	runtime.SetMutexProfileFraction(pprofMutexFraction)
}
