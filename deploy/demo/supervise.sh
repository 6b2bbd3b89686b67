#!/usr/bin/env bash
# A tiny process supervisor for the local demo (deploy/local/up.sh starts the
# demo tend-agent under it). Runs COMMAND, and whenever it exits (for
# instance after the fake reboot's SIGTERM) starts it again after 1 second.
# On SIGTERM or SIGINT it forwards SIGTERM to the running command, waits for
# it (at most TEND_SUPERVISE_GRACE_S seconds, default 15, then SIGKILL), and
# exits 0. It only ever signals the child it started itself.
# Usage: supervise.sh COMMAND [ARG...]
set -euo pipefail

if [ "$#" -lt 1 ]; then
    echo "usage: $0 COMMAND [ARG...]" >&2
    exit 2
fi
grace="${TEND_SUPERVISE_GRACE_S:-15}"

log() { echo "supervise[$$]: $(date -u +%Y-%m-%dT%H:%M:%SZ) $*" >&2; }

child=""
stopping=0
# shellcheck disable=SC2317  # invoked by the trap
on_signal() {
    stopping=1
    if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null || true; fi
}
trap on_signal TERM INT

# Wait until the child has really exited (a trapped signal interrupts `wait`).
# Sets rc to its exit status. Runs in this shell (not in $(...)), so the trap
# and `wait` both work.
rc=0
reap() {
    local deadline=""
    rc=0
    while kill -0 "$child" 2>/dev/null; do
        if [ "$stopping" = 1 ]; then
            [ -n "$deadline" ] || deadline=$((SECONDS + grace))
            if [ "$SECONDS" -ge "$deadline" ]; then
                log "pid $child ignored SIGTERM for ${grace}s: SIGKILL"
                kill -KILL "$child" 2>/dev/null || true
            fi
            sleep 0.2
        else
            wait "$child" 2>/dev/null && rc=0 || rc=$?
        fi
    done
    wait "$child" 2>/dev/null && rc=0 || rc=$?
}

while [ "$stopping" = 0 ]; do
    "$@" &
    child=$!
    log "started pid $child: $*"
    reap
    log "pid $child exited with status $rc"
    child=""
    [ "$stopping" = 0 ] || break
    sleep 1 &
    wait $! 2>/dev/null || true
done
log "stopping"
exit 0
