#!/usr/bin/env bash
# The fault suite as a soak: tests/tests/faults/suite.rs for MINUTES
# (default 30) instead of the 150 seconds of the test command, every fault
# kind over and over with commands streaming. Prints the table of
# RELIABILITY.md and writes it to target/reliability/soak-<date>.md.
#
#   deploy/local/soak.sh [MINUTES]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
MINUTES="${1:-30}"
case "$MINUTES" in
    '' | *[!0-9]*) echo "usage: $0 [MINUTES]" >&2; exit 2 ;;
esac

export TEND_TEST_DATABASE_URL="${TEND_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export TEND_TEST_REDIS_URL="${TEND_TEST_REDIS_URL:-redis://127.0.0.1:6379}"
export TEND_TEST_AMQP_URL="${TEND_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
LOCKED=()
if [ -f Cargo.lock ]; then LOCKED=(--locked); fi

bash "$ROOT/deploy/local/backing-services.sh"
# The whole workspace with its tests: building the tests turns on the agent
# binary's fault points (the tests crate's dev-dependency on it); a plain
# `cargo build` would leave them out.
cargo build --workspace --all-targets "${LOCKED[@]}"
mkdir -p target/reliability
report="target/reliability/soak-$(date -u +%Y%m%dT%H%M%SZ).md"
TEND_FAULT_SECONDS=$((MINUTES * 60)) TEND_FAULT_REPORT="$ROOT/$report" \
    cargo test "${LOCKED[@]}" -p tend-tests --test faults \
    no_command_is_lost_or_run_twice_under_faults -- --nocapture
echo "soak.sh: the table is in $report"
