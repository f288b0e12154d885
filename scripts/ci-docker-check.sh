#!/bin/sh
# Fails, with the reason, unless this machine can run the container tests of integration_test:
# a Docker engine that answers, docker compose (plugin or standalone docker-compose), and
# testcontainers' Ryuk turned off (its image cannot be pulled without a registry).
#
# Usage, from CI before the tests:
#   export TESTCONTAINERS_RYUK_DISABLED=true KW_REQUIRE_DOCKER=1
#   scripts/ci-docker-check.sh
set -eu

fail() {
	echo "ci-docker-check: FAIL: $*" >&2
	exit 1
}

command -v docker >/dev/null 2>&1 || fail "the docker command is not installed"

# docker info blocks for a long time when the daemon hangs: bound it.
if command -v timeout >/dev/null 2>&1; then
	info() { timeout 30 docker info --format '{{.ServerVersion}}' 2>&1; }
else
	info() { docker info --format '{{.ServerVersion}}' 2>&1; }
fi
if ! version=$(info); then
	fail "Docker does not answer (docker info failed): $version
The end-to-end tests in integration_test need a running Docker engine; start it (e.g. systemctl start docker) and run again."
fi
echo "ci-docker-check: Docker engine $version answers" >&2

if docker compose version >/dev/null 2>&1; then
	echo "ci-docker-check: using docker compose ($(docker compose version --short 2>/dev/null || echo plugin))" >&2
elif command -v docker-compose >/dev/null 2>&1 && docker-compose version >/dev/null 2>&1; then
	echo "ci-docker-check: using docker-compose ($(docker-compose version --short 2>/dev/null || echo standalone))" >&2
else
	fail "neither the docker compose plugin nor docker-compose is installed; the compose test needs one"
fi

if [ "${TESTCONTAINERS_RYUK_DISABLED:-}" != true ]; then
	fail "TESTCONTAINERS_RYUK_DISABLED must be exported as \"true\": testcontainers would otherwise pull its Ryuk image, and no registry is reachable"
fi
