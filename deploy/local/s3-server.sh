#!/usr/bin/env bash
# An S3-protocol server for the tests of tend's artifact store: moto's
# server mode (PyPI `moto[server]`, pinned below), a real HTTP server that
# speaks S3 (signatures, multipart uploads, ranges, presigned URLs) and
# keeps objects in memory. Installed on first use into a venv under
# target/, like deploy/checks/openapi.sh's schemathesis (Debian's pip
# refuses system installs), so a fresh machine and CI get it too.
#
# Usage:
#   deploy/local/s3-server.sh install             install if needed
#   deploy/local/s3-server.sh path                install if needed, print moto_server's path
#   deploy/local/s3-server.sh start PORT [PID]    install if needed, serve on 127.0.0.1:PORT,
#                                                 print the endpoint URL once it answers, and
#                                                 run until killed or, with PID, until that
#                                                 process exits (the tests pass their own pid,
#                                                 so the server never outlives them)
# Clients need credentials of any value (moto accepts all) and, over http,
# AWS_ALLOW_HTTP=true.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
MOTO_VERSION="5.2.5"
VENV="$ROOT/target/s3-server-venv"
BIN="$VENV/bin/moto_server"

die() { echo "s3-server: ERROR: $*" >&2; exit 1; }

# True when the pinned moto is installed (its dist-info names the version).
installed() {
    [ -x "$BIN" ] && compgen -G "$VENV/lib/python3*/site-packages/moto-$MOTO_VERSION.dist-info" >/dev/null
}

install() {
    installed && return 0
    command -v python3 >/dev/null 2>&1 || die "python3 is required (apt-get install python3 python3-venv)"
    mkdir -p "$ROOT/target"
    # Test binaries may ask at the same time: one installs, the others wait.
    exec 9>"$ROOT/target/s3-server-venv.lock"
    flock 9
    if ! installed; then
        echo "s3-server: installing moto[server] $MOTO_VERSION into $VENV" >&2
        python3 -m venv "$VENV" || die "python3 -m venv failed (apt-get install python3-venv)"
        "$VENV/bin/pip" install -q "moto[server]==$MOTO_VERSION" >&2 || die "pip could not install moto[server]==$MOTO_VERSION"
    fi
    flock -u 9
    [ -x "$BIN" ] || die "$BIN is missing after the install"
}

case "${1:-}" in
    install)
        install
        ;;
    path)
        install
        echo "$BIN"
        ;;
    start)
        PORT="${2:-}"
        WATCH="${3:-}"
        [[ "$PORT" =~ ^[0-9]+$ ]] || die "usage: $0 start PORT [PID]"
        install
        "$BIN" -H 127.0.0.1 -p "$PORT" &
        SERVER=$!
        trap 'kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true' EXIT
        trap 'exit 143' TERM INT
        URL="http://127.0.0.1:$PORT"
        # moto takes a second or two to import; 30 s is plenty on a busy machine.
        for _ in $(seq 1 120); do
            kill -0 "$SERVER" 2>/dev/null || die "moto_server exited at startup (port $PORT taken?)"
            if curl -s -o /dev/null "$URL/"; then break; fi
            sleep 0.25
        done
        curl -s -o /dev/null "$URL/" || die "moto_server did not answer on $URL within 30 s"
        echo "$URL"
        if [ -n "$WATCH" ]; then
            while kill -0 "$WATCH" 2>/dev/null && kill -0 "$SERVER" 2>/dev/null; do sleep 1; done
        else
            wait "$SERVER"
        fi
        ;;
    *)
        die "usage: $0 install | path | start PORT [PID]"
        ;;
esac
