#!/usr/bin/env bash
# The project's test command: formatting, vet, every test with the race detector (the
# container tests skip with a message where Docker does not answer, unless
# KW_REQUIRE_DOCKER=1), the alerting rules' unit tests, a short fuzz run and every benchmark
# once at a tiny size.
set -euo pipefail
cd "$(dirname "$0")/.."

# testcontainers-go must not try to pull its reaper image: no registry here.
export TESTCONTAINERS_RYUK_DISABLED=true

echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change:"; echo "$unformatted"; exit 1
fi

echo "== go vet"
go vet ./...

echo "== go test -race"
go test -race -count=1 -timeout 45m ./...

echo "== alerting rules (promtool)"
if command -v promtool >/dev/null; then
  promtool check rules deploy/prometheus/rules.yml
  (cd deploy/prometheus && promtool test rules rules_test.yml)
elif [ "${CI:-}" = true ]; then
  echo "promtool is missing (Debian package prometheus)"; exit 1
else
  echo "SKIPPED: promtool is missing; apt-get install prometheus (CI fails here instead)"
fi

echo "== fuzz (short)"
go test -run='^$' -fuzz=FuzzDecode -fuzztime="${FUZZTIME:-10s}" ./kustomer/

if [ -d bench ]; then
  echo "== benchmarks, once each at a tiny size"
  go test -run='^$' -bench=. -benchtime=1x -short -timeout 15m ./bench/
fi
