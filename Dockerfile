# syntax=docker/dockerfile:1
#
# One image for every cloud service of tend: tend-platform, tend-sync,
# tend-monitor and the admin CLI tendctl, all in /usr/local/bin. The
# Kubernetes manifests (deploy/k8s) pick the binary with `command:`; the
# default CMD only prints help.
#
#   docker build -t tend:dev .
#   docker run --rm tend:dev tend-platform --version
#
# The device agent is not in this image: devices get it as a Debian package
# (deploy/debian/build-deb.sh).

ARG RUST_VERSION=1.95

############################################################################
# Builder
############################################################################
FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src

# The binaries that go into the image (binary names, not package names, so
# this list does not care which crate holds which binary).
ARG BINS="tend-platform tend-sync tend-monitor tendctl"

# 1. Dependencies only. Copy the manifests of every workspace member (cargo
#    refuses to load a workspace with a member missing), give each member
#    stub sources, fetch and compile the dependency graph. This layer is
#    rebuilt only when a Cargo.toml or Cargo.lock changes, not on every
#    source edit. The stubs are removed at the end of the same step: a crate
#    without a lib.rs of its own would otherwise gain an empty library.
COPY Cargo.toml Cargo.lock ./
COPY proto/Cargo.toml             proto/
COPY services/core/Cargo.toml     services/core/
COPY services/platform/Cargo.toml services/platform/
COPY services/sync/Cargo.toml     services/sync/
COPY services/monitor/Cargo.toml  services/monitor/
COPY agent/Cargo.toml             agent/
COPY cli/Cargo.toml               cli/
COPY tests/Cargo.toml             tests/
RUN set -eux; \
    members="proto services/core services/platform services/sync services/monitor agent cli tests"; \
    for d in $members; do \
        mkdir -p "$d/src"; \
        : > "$d/src/lib.rs"; \
        echo 'fn main() {}' > "$d/src/main.rs"; \
    done; \
    cargo fetch --locked; \
    cargo build --release --locked $(printf -- '--bin %s ' $BINS); \
    for d in $members; do rm -rf "$d/src"; done

# 2. The real sources. COPY keeps the files' original modification times,
#    which can be older than the stub build's outputs: cargo would then
#    believe the workspace crates are up to date and ship the stubs. Touch
#    them so they are rebuilt (the dependencies stay cached).
#    The release profile keeps line tables for backtraces; `strip
#    --strip-debug` drops the debug sections but keeps the symbol table, so a
#    panic's backtrace still names the functions while the image stays small.
COPY proto    proto
COPY services services
# tend-core compiles in the files that publish example values, to refuse a
# token key taken from them (services/core/src/token_key.rs).
COPY README.md ./
COPY deploy/k8s/base/secret.example.yaml         deploy/k8s/base/
COPY deploy/k8s/overlays/dev/kustomization.yaml  deploy/k8s/overlays/dev/
COPY deploy/k8s/overlays/prod/kustomization.yaml deploy/k8s/overlays/prod/
COPY agent    agent
COPY cli      cli
COPY tests    tests
RUN set -eux; \
    find proto services agent cli tests -name '*.rs' -exec touch {} +; \
    cargo build --release --locked $(printf -- '--bin %s ' $BINS); \
    mkdir -p /out; \
    for b in $BINS; do cp "target/release/$b" /out/; done; \
    strip --strip-debug /out/*

############################################################################
# Runtime
############################################################################
# debian:bookworm-slim rather than distroless: the binaries link glibc and
# libgcc_s of the same Debian release as the builder, and the Kubernetes
# preStop hook uses `sleep` from coreutils.
FROM debian:bookworm-slim AS runtime

ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="tend" \
      org.opencontainers.image.description="tend cloud services: tend-platform (admin API), tend-sync (device API), tend-monitor (relay and watchdog) and tendctl" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"

# ca-certificates: TLS to managed PostgreSQL, Redis, RabbitMQ and S3.
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates; \
    rm -rf /var/lib/apt/lists/*; \
    groupadd --gid 65532 tend; \
    useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin tend

COPY --from=builder /out/ /usr/local/bin/

# Numeric, so Kubernetes' runAsNonRoot can check it without reading
# /etc/passwd.
USER 65532:65532

ENV TEND_LOG_FORMAT=json

# tend-platform :8080 (admin API), tend-sync :8081 (device API),
# tend-monitor :8082 (health and metrics); /metrics of tend-platform on
# :9080 and of tend-sync on :9081, for the monitoring system only.
EXPOSE 8080 8081 8082 9080 9081

# No ENTRYPOINT: the orchestrator names the binary. The services are PID 1
# and handle SIGTERM themselves (they drain, then exit 0); they start no
# children, so no init process is needed to reap zombies.
CMD ["tend-platform", "--help"]
