// Package bench holds the end-to-end benchmarks of kustomer-worker: throughput against a
// plain consumer loop, use of a rate budget (alone and shared), memory of the worker process
// over small and large backlogs, enqueue speed, publish-to-request latency, and live latency
// during a backfill with the two lanes against one lane, throughput over a slow link to NATS
// against a direct one (and the set-up before the pool starts, Ensure and BindLanes, over it), bulk mode, and a backfill run followed to its end (BenchmarkRun).
// Each runs the real worker against an
// embedded NATS server and the fake Kustomer API of package kustomertest, and compares it with
// a baseline run in the same process.
//
// Run every benchmark at full size (about 10 minutes; docs/BENCHMARKS.md has the figures):
//
//	go test -run='^$' -bench=. -benchtime=1x -timeout=60m ./bench/
//
// Each benchmark repeats its whole experiment -bench.reps times (default 3), interleaved with
// its baseline, and reports medians, so that a noisy machine shows in the repetitions logged
// (-v) rather than in the figures. -short shrinks every size, and the repetitions to one, so
// that each benchmark finishes in seconds, as in CI:
//
//	go test -run='^$' -bench=. -benchtime=1x -short ./bench/
//
// Sizes can be set one by one with the -bench.* flags (go test ./bench/ -args -help lists
// them). The package has no API: it exists for its benchmarks.
package bench
