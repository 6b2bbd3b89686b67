#!/usr/bin/env bash
# Proves that what users build carries no fault points, while the tests
# still get them. The agent's fault points (agent/src/fault.rs) are compiled
# in only with tend-agent's `fault-points` feature, which tests/Cargo.toml
# turns on through a dev-dependency: cargo unifies it into builds that build
# tests (`cargo test`, `cargo build --all-targets`) and into no other. This
# check fails, with the reason, when
#   - the feature resolution of `cargo build --release` (the README's and
#     up.sh's build) enables the feature;
#   - target/debug/tend-agent from `cargo build --workspace --bins` holds the
#     marker below;
#   - the agent the tests run (`cargo build --workspace --all-targets`) does
#     not hold it: then the marker no longer tells anything and this check
#     must be updated.
# It ends with the tests' build again, so target/debug/tend-agent is the
# armed agent a later `cargo test` expects (cargo only relinks it: both
# builds stay cached). The Debian package is checked by deploy/checks/deb.sh.
#
#   deploy/checks/fault-points.sh
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"

fail() {
    echo "fault-points check FAILED: $*" >&2
    exit 1
}

command -v strings >/dev/null 2>&1 || fail "strings (binutils) not found: cannot inspect the agent binary"

# The variable that arms the fault points: the agent names it only in code
# the feature compiles in (agent/src/fault.rs).
marker=TEND_AGENT_FAULTS
agent=target/debug/tend-agent
locked=()
if [[ -f Cargo.lock ]]; then locked=(--locked); fi

# count_marker: how many strings of the agent binary name the marker.
count_marker() {
    [[ -x $agent ]] || fail "$agent was not built"
    strings -a "$agent" | grep -c "$marker" || true
}

# 1. Feature resolution: with dev-dependencies (tests built) the feature is
#    on, without them (what `cargo build [--release]` resolves) it is off.
features() { # EDGE-KINDS
    cargo tree "${locked[@]}" --workspace -e "$1" -e features -i tend-agent \
        || fail "cargo tree -e $1 failed"
}
with_tests=$(features normal,build,dev)
grep -q 'tend-agent feature "fault-points"' <<<"$with_tests" \
    || fail "tend-agent's fault-points feature is not enabled in builds with tests; the fault suite would run an agent without fault points:"$'\n'"$with_tests"
without_tests=$(features normal,build)
if grep -q 'tend-agent feature "fault-points"' <<<"$without_tests"; then
    fail "cargo build --release would build tend-agent with its fault points; something depends on it with the feature outside [dev-dependencies]:"$'\n'"$without_tests"
fi

# 2. The binaries: the tests' agent names the marker, the users' does not.
cargo build "${locked[@]}" -q --workspace --all-targets || fail "cargo build --workspace --all-targets failed"
armed=$(count_marker)
[[ $armed -gt 0 ]] \
    || fail "the tests' $agent has no string naming $marker: the marker no longer shows fault points (see agent/src/fault.rs) and this check proves nothing"
cargo build "${locked[@]}" -q --workspace --bins || fail "cargo build --workspace --bins failed"
clean=$(count_marker)
# Put the tests' agent back before judging, so a failure leaves it in place.
cargo build "${locked[@]}" -q --workspace --all-targets || fail "cargo build --workspace --all-targets failed"
[[ $clean -eq 0 ]] \
    || fail "cargo build --workspace --bins made a tend-agent with fault points (strings naming $marker: $clean)"

echo "fault-points: cargo build [--release] resolves tend-agent without fault-points; $agent names $marker in $clean strings from cargo build --workspace --bins, $armed from the tests' build"
