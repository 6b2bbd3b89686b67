#!/usr/bin/env bash
# Fuzzes the live admin API from its own OpenAPI document with schemathesis
# and fails if any request gets a server error (5xx): bad input must always
# be a 4xx. Bounded: a fixed number of examples per operation and a time
# limit. Starts its own tend-platform on a free port against a scratch
# database, and removes both afterwards.
# Usage: deploy/checks/openapi.sh [MAX_EXAMPLES]   (default 25 per operation)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
MAX_EXAMPLES="${1:-25}"
SCHEMATHESIS_VERSION="4.32.5"
VENV="$ROOT/target/schemathesis-venv"
PG_ADMIN_URL="${TEND_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
DB="tend_openapi_$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
DB_URL="${PG_ADMIN_URL%/*}/$DB"
WORK="$(mktemp -d)"
PID=""

cleanup() {
    if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
        kill -TERM "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
    fi
    psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

if [ ! -x "$VENV/bin/schemathesis" ] \
    || ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    echo "openapi: installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
fi

cargo build -q -p tend-platform
psql "$PG_ADMIN_URL" -qc "CREATE DATABASE $DB" >/dev/null

: >"$WORK/platform.log"   # exists before the background start opens it
PASSWORD="openapi-check-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
target/debug/tend-platform signing-key --create "$WORK/signing-key.pem" >/dev/null 2>&1 \
    || { echo "openapi: cannot make an instruction-signing key" >&2; exit 1; }
env -i PATH="$PATH" \
    TEND_LISTEN=127.0.0.1:0 \
    TEND_METRICS_LISTEN=127.0.0.1:0 \
    TEND_DATABASE_URL="$DB_URL" \
    TEND_ADMIN_TOKEN_KEY="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" \
    TEND_BOOTSTRAP_ADMIN="fuzz:$PASSWORD" \
    TEND_SIGNING_KEY_FILE="$WORK/signing-key.pem" \
    TEND_ARTIFACT_STORE="file://$WORK/artifacts" \
    TEND_LOG=warn,tend_platform=info,tend_core::service=info \
    target/debug/tend-platform >"$WORK/platform.log" 2>&1 &
PID=$!

PORT=""
for _ in $(seq 1 120); do
    PORT="$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$WORK/platform.log" 2>/dev/null | head -n 1 || true)"
    [ -n "$PORT" ] && break
    kill -0 "$PID" 2>/dev/null || { cat "$WORK/platform.log" >&2; echo "openapi: tend-platform exited" >&2; exit 1; }
    sleep 0.25
done
[ -n "$PORT" ] || { cat "$WORK/platform.log" >&2; echo "openapi: tend-platform did not start" >&2; exit 1; }
BASE="http://127.0.0.1:$PORT"

TOKEN="$(curl -sf "$BASE/api/v1/auth/login" -H 'content-type: application/json' \
    -d "{\"username\":\"fuzz\",\"password\":\"$PASSWORD\"}" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')"
# Some data for the generated requests to find.
curl -sf "$BASE/api/v1/devices" -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' \
    -d '{"name":"fuzz-target","device_type":"kiosk"}' >/dev/null

echo "openapi: fuzzing $BASE/api/v1/openapi.json, $MAX_EXAMPLES examples per operation"
status=0
# From the scratch directory: schemathesis keeps its state in ./.schemathesis.
(cd "$WORK" && timeout 600 "$VENV/bin/schemathesis" run "$BASE/api/v1/openapi.json" \
    --url "$BASE" \
    --checks not_a_server_error \
    --max-examples "$MAX_EXAMPLES" \
    --generation-deterministic \
    --request-timeout 10 \
    --header "Authorization: Bearer $TOKEN" \
    --no-color >"$WORK/schemathesis.log" 2>&1) || status=$?
tail -n 25 "$WORK/schemathesis.log"
if [ "$status" -ne 0 ]; then
    echo "openapi: FAILED (schemathesis exit $status); tend-platform log:" >&2
    grep -iE "error|panic" "$WORK/platform.log" | tail -n 20 >&2 || true
    exit 1
fi
if grep -qE "internal error|panicked" "$WORK/platform.log"; then
    echo "openapi: FAILED: the platform logged a server error" >&2
    exit 1
fi
echo "openapi: ok (no server error)"
