# The kustomer-worker image: a static binary, CA certificates for HTTPS to Kustomer, a non-root
# user, nothing else.
#
# It is built from a binary compiled on the host, so no registry is needed: the build context
# is a directory that scripts/build-images.sh fills with
#   kustomer-worker        CGO_ENABLED=0 go build ./cmd/kustomer-worker
#   ca-certificates.crt    the host's CA bundle (/etc/ssl/certs/ca-certificates.crt)
#   rootfs/tmp/            an empty directory of mode 1777: the commands' scratch space
#                          (enqueue spools its input there)
# Build it with:  scripts/build-images.sh
# With a registry at hand, Dockerfile.multistage builds the same image from source.
FROM scratch
ARG VERSION=dev
ARG REVISION=unknown
ARG SOURCE=https://github.com/kustomer-worker/kustomer-worker
LABEL org.opencontainers.image.title="kustomer-worker" \
      org.opencontainers.image.description="Applies Kustomer conversation updates from NATS JetStream" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.version="${VERSION}"

COPY rootfs/ /
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY kustomer-worker /usr/local/bin/kustomer-worker

# In a container the metrics and health endpoints must listen beyond loopback; logs are JSON
# for log collectors. Both can be overridden at run time.
ENV WORKER_HTTP_ADDR=0.0.0.0:9464 \
    WORKER_LOG_FORMAT=json

# 65532 is the conventional "nonroot" user of distroless images.
USER 65532:65532
EXPOSE 9464
# No shell in the image: the binary checks itself. For `run`; a container of another command
# (mock, enqueue) overrides or ignores it (docker-compose.yml gives the mock its own).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s CMD ["/usr/local/bin/kustomer-worker", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/kustomer-worker"]
CMD ["run"]
