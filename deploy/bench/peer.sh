#!/usr/bin/env bash
# LAN peer recovery (seed 000) on a private LAN of network namespaces inside
# this machine (tests/src/lan.rs): the release tend-agent, the real cloud
# services, real multicast. Prints, and writes to
# target/bench/peer-<date>.md:
#
#   - the time from a device's first search to a verified image of
#     BENCH_PEER_MB MiB of data (default 64; the .tar.gz is as large, the
#     data being random) restored from one serving peer, one device alone;
#   - the same for four devices restoring at once from that one peer;
#   - the serving agent's VmRSS before and at its peak (sampled every
#     5 ms) while it serves the four.
#
# The run is the ignored test `bench_peer_recovery` of tests/tests/lan,
# built in release mode: `cargo test --release --test lan -- --ignored`.
# Needs root (network namespaces), like the test command; installs iproute2
# when missing; starts PostgreSQL, Redis and RabbitMQ like test.sh. Stops
# by itself (its waits are bounded) and removes the namespaces, the bridge
# and the scratch database it made.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

[ "$(id -u)" -eq 0 ] || { echo "peer.sh: needs root (network namespaces)" >&2; exit 1; }
command -v ip >/dev/null 2>&1 || apt-get install -y -qq iproute2 >/dev/null

export TEND_TEST_DATABASE_URL="${TEND_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export TEND_TEST_REDIS_URL="${TEND_TEST_REDIS_URL:-redis://127.0.0.1:6379}"
export TEND_TEST_AMQP_URL="${TEND_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
export BENCH_PEER_MB="${BENCH_PEER_MB:-64}"
bash deploy/local/backing-services.sh >&2

cargo build --release --workspace --all-targets >&2
OUT="$ROOT/target/bench"
mkdir -p "$OUT"
RAW="$(mktemp -t tend-peer-bench.XXXXXX)"
trap 'rm -f "$RAW"' EXIT
cargo test --release -p tend-tests --test lan -- \
    --ignored --exact bench_peer_recovery --nocapture >"$RAW" 2>&1 || {
    tail -n 60 "$RAW" >&2
    echo "peer.sh: the benchmark failed" >&2
    exit 1
}
REPORT="$OUT/peer-$(date +%Y%m%d-%H%M%S).md"
{
    echo "## LAN peer recovery"
    echo
    echo "**Machine**: $(nproc) CPUs, $(awk '/MemTotal/ { printf "%.0f GB", $2 / 1048576 }' /proc/meminfo) RAM, Linux $(uname -r), $(rustc --version | cut -d' ' -f1-2); tend at $(git rev-parse --short HEAD); release profile."
    echo
    echo "**Command**: \`BENCH_PEER_MB=$BENCH_PEER_MB deploy/bench/peer.sh\`"
    echo
    grep '^BENCH ' "$RAW" | sed 's/^BENCH /- /'
} | tee "$REPORT"
echo "peer.sh: written to $REPORT" >&2
