# syntax=docker/dockerfile:1

# sluice container image.
#
#   docker build --build-arg VERSION=$(git describe --tags --always) -t sluice .
#   docker run --rm -v $PWD/configs/sluice.yaml:/etc/sluice/sluice.yaml:ro -p 9108:9108 sluice
#
# The configuration is expected at /etc/sluice/sluice.yaml (a ConfigMap in
# Kubernetes); secrets come from the environment (${PG_DSN}, ${KAFKA_PASSWORD})
# or from *_file keys pointing at mounted Secret files. Any key can be
# overridden with SLUICE_<PATH> variables. Set observability.listen to ":9108"
# (not 127.0.0.1) so that Prometheus and the kubelet can reach the endpoints.

# ---- build ------------------------------------------------------------------
# The build stage runs on the builder's own platform and cross-compiles, so a
# multi-platform build (docker buildx --platform linux/amd64,linux/arm64) needs
# no emulation.
FROM --platform=$BUILDPLATFORM golang:1.26 AS build

WORKDIR /src

# Modules first: this layer is rebuilt only when go.mod or go.sum change.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download

COPY . .

ARG VERSION=dev
ARG TARGETOS
ARG TARGETARCH
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/sluice ./cmd/sluice

# ---- runtime ----------------------------------------------------------------
# distroless/static: CA certificates, tzdata and /etc/passwd with a nonroot
# user (65532), and nothing else: no shell, no package manager.
FROM gcr.io/distroless/static-debian12:nonroot

ARG VERSION=dev
LABEL org.opencontainers.image.title="sluice" \
      org.opencontainers.image.description="Kafka-to-PostgreSQL stream processor with backpressure, dead-lettering and a circuit breaker" \
      org.opencontainers.image.source="https://github.com/sluicehq/sluice" \
      org.opencontainers.image.version="${VERSION}"

COPY --from=build /out/sluice /sluice

USER nonroot:nonroot

# observability.listen: the HTTP endpoints on port 9108
#   GET /metrics  Prometheus metrics (sluice_* and the Kafka client's)
#   GET /healthz  liveness: 200 "ok" while the process serves
#   GET /readyz   readiness: 200 "ready", or 503 with the reason (e.g. the
#                 circuit breaker is open or the sink failed fatally)
#   GET /status   the pipeline's state as JSON, for people and scripts
EXPOSE 9108

# No HEALTHCHECK: distroless has no shell, curl or wget to run one. Health is
# left to Kubernetes probes, an httpGet livenessProbe on /healthz and an
# httpGet readinessProbe on /readyz (port 9108), as in deploy/.

# sluice handles SIGTERM itself (drain, commit, leave the group, exit 0; a
# second signal exits at once). Give it terminationGracePeriodSeconds longer
# than shutdown_timeout.
ENTRYPOINT ["/sluice"]
CMD ["run", "-c", "/etc/sluice/sluice.yaml"]
