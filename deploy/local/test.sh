#!/usr/bin/env bash
# THE test command of tend: makes sure PostgreSQL, Redis and RabbitMQ run
# (deploy/local/backing-services.sh), builds every target of the workspace so
# compile errors show up first, runs `cargo test --workspace`, then the
# checks in deploy/checks/.
# Exit code: 0 when everything passed, otherwise the failing step's code.
# Tests read TEND_TEST_DATABASE_URL / TEND_TEST_REDIS_URL / TEND_TEST_AMQP_URL
# (defaults below, kept when already set); each test creates its own database.
# Extra arguments are passed to `cargo test` (e.g. a test name filter).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

export TEND_TEST_DATABASE_URL="${TEND_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export TEND_TEST_REDIS_URL="${TEND_TEST_REDIS_URL:-redis://127.0.0.1:6379}"
export TEND_TEST_AMQP_URL="${TEND_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"

LOCKED=()
if [ -f Cargo.lock ]; then LOCKED=(--locked); fi

step() { echo; echo "==> $*"; }

step "backing services"
bash "$ROOT/deploy/local/backing-services.sh"

# The LAN tests (tests/tests/lan) build a private network of namespaces:
# they need root, iproute2's `ip` and nftables' `nft`. The hawkBit DDI tests
# (tests/src/swu.rs) run SWUpdate's suricatta client and build signed .swu
# images with openssl and cpio. The TLS tests (tests/tests/e2e/tls.rs) make
# their certificates with openssl and start PostgreSQL (initdb, pg_ctl),
# redis-server (checked with redis-cli) and RabbitMQ (with its own epmd)
# servers of their own from the packages backing-services.sh installs.
# Tests fail with what is missing rather than skip themselves.
step "LAN, DDI client and TLS test tools"
need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v swupdate >/dev/null 2>&1 || need+=(swupdate)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v cpio >/dev/null 2>&1 || need+=(cpio)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
command -v runuser >/dev/null 2>&1 || need+=(util-linux)
if [ "${#need[@]}" -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "installing ${need[*]} (Debian packages)"
    $SUDO apt-get update -qq >/dev/null
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# rauc-hawkbit's DDIClient (tests/tests/e2e/rauc_hawkbit.rs) runs from its
# own venv. --no-deps: the package's declared dependencies include gbulb and
# PyGObject (its D-Bus service), which the DDI client does not use and which
# do not build without GObject's headers; aiohttp, which it does use, is
# installed with its own dependencies.
RAUC_HAWKBIT_VERSION="0.2.0"
AIOHTTP_VERSION="3.14.5"
RAUC_VENV="$ROOT/target/rauc-hawkbit-venv"
if ! compgen -G "$RAUC_VENV/lib/python3*/site-packages/rauc_hawkbit-$RAUC_HAWKBIT_VERSION.dist-info" >/dev/null \
    || ! compgen -G "$RAUC_VENV/lib/python3*/site-packages/aiohttp-$AIOHTTP_VERSION.dist-info" >/dev/null; then
    echo "installing rauc-hawkbit $RAUC_HAWKBIT_VERSION and aiohttp $AIOHTTP_VERSION into $RAUC_VENV"
    python3 -m venv "$RAUC_VENV"
    "$RAUC_VENV/bin/pip" install -q "aiohttp==$AIOHTTP_VERSION"
    "$RAUC_VENV/bin/pip" install -q --no-deps "rauc-hawkbit==$RAUC_HAWKBIT_VERSION"
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "warning: not root: the LAN peer-recovery tests create network namespaces and will" >&2
    echo "fail; run this command as root (sudo -E bash deploy/local/test.sh)" >&2
fi

step "cargo build --workspace --all-targets ${LOCKED[*]}"
rc=0
cargo build --workspace --all-targets "${LOCKED[@]}" || rc=$?
if [ "$rc" -ne 0 ]; then
    echo
    echo "test.sh: FAILED: build failed (exit $rc)" >&2
    exit "$rc"
fi

step "cargo test --workspace ${LOCKED[*]} $*"
cargo test --workspace "${LOCKED[@]}" "$@" || rc=$?
if [ "$rc" -ne 0 ]; then
    echo
    echo "test.sh: FAILED: cargo test exited with $rc" >&2
    exit "$rc"
fi

# The checks that are not Rust tests: the live API fuzzed from its OpenAPI
# document, the Kubernetes manifests rendered and validated, the agent's
# Debian package built and inspected, and a user's build proved free of the
# fault points the tests just used. fault-points goes last: it ends with the
# tests' build, so a rerun of the tests finds their agent as they left it.
for check in openapi k8s deb fault-points; do
    step "deploy/checks/$check.sh"
    bash "$ROOT/deploy/checks/$check.sh" || rc=$?
    if [ "$rc" -ne 0 ]; then
        echo
        echo "test.sh: FAILED: deploy/checks/$check.sh exited with $rc" >&2
        exit "$rc"
    fi
done
echo
echo "test.sh: OK: build, all tests and checks passed"
