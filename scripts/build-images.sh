#!/bin/sh
# Builds the kustomer-worker image and a NATS server image without a registry: both binaries
# are compiled on this machine (static, CGO_ENABLED=0) and copied into FROM scratch images.
#
# Usage: scripts/build-images.sh
#
# Environment (all optional):
#   IMAGE_TAG     tag of both images (default latest)
#   WORKER_IMAGE  worker image name (default kustomer-worker:$IMAGE_TAG)
#   NATS_IMAGE    NATS image name (default kustomer-worker-nats:$IMAGE_TAG)
#   VERSION       version stamped into the worker and its image label (default: git describe, else dev)
#   REVISION      VCS revision of the image label (default: git rev-parse HEAD)
#   CA_BUNDLE     CA certificates copied into the worker image
#                 (default /etc/ssl/certs/ca-certificates.crt)
#   BUILD_DIR     where the binaries and build contexts go (default build/images);
#                 it is emptied first
#   SKIP_NATS=1   build the worker image only
#
# The images are what docker-compose.yml runs when WORKER_IMAGE and NATS_IMAGE name them.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

tag=${IMAGE_TAG:-latest}
worker_image=${WORKER_IMAGE:-kustomer-worker:$tag}
nats_image=${NATS_IMAGE:-kustomer-worker-nats:$tag}
ca_bundle=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
build_dir=${BUILD_DIR:-$root/build/images}
version=${VERSION:-$(git describe --always --dirty 2>/dev/null || echo dev)}
revision=${REVISION:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}

if ! command -v docker >/dev/null 2>&1; then
	echo "build-images: docker is not installed" >&2
	exit 1
fi
if [ ! -r "$ca_bundle" ]; then
	echo "build-images: no CA bundle at $ca_bundle (install ca-certificates or set CA_BUNDLE)" >&2
	exit 1
fi

rm -rf "$build_dir/worker" "$build_dir/nats"
mkdir -p "$build_dir/worker/rootfs/tmp" "$build_dir/nats/data"
chmod 1777 "$build_dir/worker/rootfs/tmp"

echo "build-images: compiling kustomer-worker $version" >&2
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=$version" \
	-o "$build_dir/worker/kustomer-worker" ./cmd/kustomer-worker
cp "$ca_bundle" "$build_dir/worker/ca-certificates.crt"

echo "build-images: building $worker_image" >&2
docker build --quiet --file Dockerfile --tag "$worker_image" \
	--build-arg "VERSION=$version" --build-arg "REVISION=$revision" "$build_dir/worker"

if [ "${SKIP_NATS:-}" != 1 ]; then
	# The module version is the one go.mod pins, so the image matches the embedded server.
	echo "build-images: compiling nats-server" >&2
	CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" \
		-o "$build_dir/nats/nats-server" github.com/nats-io/nats-server/v2
	echo "build-images: building $nats_image" >&2
	docker build --quiet --file Dockerfile.nats --tag "$nats_image" "$build_dir/nats"
fi

echo "build-images: done" >&2
