#!/usr/bin/env bash
# Stop what deploy/local/up.sh started: the demo agent's supervisor (which
# stops the agent) and tend-platform, tend-sync, tend-monitor. Only the
# processes named in .tend-local/*.pid are signalled, and only when the pid
# still runs the expected program (a stale pid file is just removed).
# SIGTERM first; SIGKILL after 30 s. PostgreSQL, Redis and RabbitMQ are left
# running, and .tend-local/ (logs, secrets, device) is kept for the next up.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
RUN="$ROOT/.tend-local"
GRACE_S=30

if [ ! -d "$RUN" ]; then
    echo "down.sh: nothing to stop ($RUN does not exist)"
    exit 0
fi

# alive PID: the process exists and is not a zombie.
alive() {
    kill -0 "$1" 2>/dev/null || return 1
    [ "$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null)" != "Z" ]
}

# stop NAME PATTERN: stop the pid in $RUN/NAME.pid if its command line
# contains PATTERN.
stop() {
    local name="$1" pattern="$2" pidfile="$RUN/$1.pid" pid cmdline deadline
    [ -f "$pidfile" ] || return 0
    pid="$(tr -dc '0-9' <"$pidfile")"
    if [ -z "$pid" ] || ! alive "$pid"; then
        echo "$name: not running (stale pid file removed)"
        rm -f "$pidfile"
        return 0
    fi
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
    if [[ "$cmdline" != *"$pattern"* ]]; then
        echo "$name: pid $pid now runs something else ($cmdline); left alone, pid file removed"
        rm -f "$pidfile"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + GRACE_S))
    while alive "$pid"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "$name: pid $pid still running ${GRACE_S}s after SIGTERM: SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
            sleep 1
            break
        fi
        sleep 0.2
    done
    rm -f "$pidfile"
    echo "$name: stopped (pid $pid)"
}

# The agent first (it talks to tend-sync), then the services.
stop agent "deploy/demo/supervise.sh"
stop tend-sync "$ROOT/target/release/tend-sync"
stop tend-platform "$ROOT/target/release/tend-platform"
stop tend-monitor "$ROOT/target/release/tend-monitor"
