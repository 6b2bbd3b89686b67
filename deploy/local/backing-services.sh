#!/usr/bin/env bash
# Make sure the backing services tend needs run on this machine:
#   PostgreSQL 127.0.0.1:5432 (user postgres, no password over TCP),
#   Redis      127.0.0.1:6379,
#   RabbitMQ   127.0.0.1:5672 (guest/guest).
# A service that already answers is left alone (never stopped or restarted:
# other tests share it). A missing one is installed from Debian's packages
# (apt-get) and started; the script then waits (bounded) until each answers
# and exits non-zero with a clear message if one cannot be brought up.
# Idempotent; prints one line per service when all is well.
#
# Env: TEND_BACKING_TIMEOUT_S (default 60) bounds each wait.
set -euo pipefail

TIMEOUT_S="${TEND_BACKING_TIMEOUT_S:-60}"
PG_HOST=127.0.0.1 PG_PORT=5432
REDIS_HOST=127.0.0.1 REDIS_PORT=6379
AMQP_HOST=127.0.0.1 AMQP_PORT=5672

SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
fi

die() { echo "backing-services: ERROR: $*" >&2; exit 1; }
note() { echo "backing-services: $*" >&2; }

# --- generic helpers ---------------------------------------------------------

# tcp_open HOST PORT: true if something accepts a TCP connection.
tcp_open() {
    timeout 3 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

# wait_until DESCRIPTION SECONDS CMD...: poll CMD every second until it
# succeeds; false after SECONDS.
wait_until() {
    local what="$1" secs="$2"; shift 2
    local deadline=$((SECONDS + secs))
    until "$@"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            note "gave up waiting ${secs}s for ${what}"
            return 1
        fi
        sleep 1
    done
}

APT_UPDATED=0
APT_LOG="$(mktemp -t tend-apt.XXXXXX)"
trap 'rm -f "$APT_LOG"' EXIT

# apt_install PKG...: install Debian packages (apt-get update once per run).
apt_install() {
    command -v apt-get >/dev/null 2>&1 \
        || die "$* missing and apt-get is not available: install them by hand"
    if [ "$APT_UPDATED" = 0 ]; then
        note "apt-get update"
        $SUDO apt-get update >>"$APT_LOG" 2>&1 \
            || { tail -n 30 "$APT_LOG" >&2; die "apt-get update failed"; }
        APT_UPDATED=1
    fi
    note "installing $*"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@" >>"$APT_LOG" 2>&1 \
        || { tail -n 30 "$APT_LOG" >&2; die "apt-get install $* failed"; }
}

# --- PostgreSQL --------------------------------------------------------------

pg_answers() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 3 >/dev/null 2>&1; }

pg_login_ok() {
    PGCONNECT_TIMEOUT=5 psql -X -w -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres \
        -tAc 'select 1' 2>/dev/null | grep -qx 1
}

# Prints "VERSION NAME STATUS" of the cluster to use: the one on port 5432
# (newest version if several), created if there is none at all.
pg_pick_cluster() {
    local line
    line="$(pg_lsclusters --no-header 2>/dev/null \
        | awk -v p="$PG_PORT" '$3 == p { print $1, $2, $4 }' | sort -V | tail -n 1)"
    if [ -z "$line" ]; then
        local ver
        ver="$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null \
            | sort -V | tail -n 1)"
        [ -n "$ver" ] || die "postgresql is installed but no server version found in /usr/lib/postgresql"
        note "no PostgreSQL cluster on port $PG_PORT: creating $ver/main"
        $SUDO pg_createcluster --port "$PG_PORT" "$ver" main >/dev/null \
            || die "pg_createcluster $ver main failed"
        line="$ver main down"
    fi
    echo "$line"
}

# Debian's default pg_hba.conf asks for a password over TCP; the services
# connect as postgres@127.0.0.1 without one. Only called when that login fails
# on a cluster this script installed or started.
pg_trust_local_tcp() {
    local ver="$1" name="$2" hba
    hba="/etc/postgresql/$ver/$name/pg_hba.conf"
    [ -f "$hba" ] || die "postgresql: cannot log in as postgres@$PG_HOST and $hba does not exist"
    note "postgresql: password-less login as postgres@$PG_HOST failed; setting 'trust' for 127.0.0.1/32 and ::1/128 in $hba"
    $SUDO cp -p "$hba" "$hba.tend-backup.$(date +%Y%m%d%H%M%S)"
    $SUDO sed -E -i \
        -e 's#^([[:space:]]*host[[:space:]]+all[[:space:]]+all[[:space:]]+(127\.0\.0\.1/32|::1/128)[[:space:]]+)[^[:space:]]+(.*)$#\1trust#' \
        "$hba"
    if ! grep -Eq '^[[:space:]]*host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$hba"; then
        # No such line to switch: prepend ours (the first matching line wins).
        local tmp
        tmp="$(mktemp)"
        { echo "host all all 127.0.0.1/32 trust  # added by tend deploy/local/backing-services.sh"
          echo "host all all ::1/128 trust       # added by tend deploy/local/backing-services.sh"
          cat "$hba"; } >"$tmp"
        $SUDO cp "$tmp" "$hba"
        rm -f "$tmp"
    fi
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" reload \
        || die "postgresql: reloading cluster $ver/$name failed"
    sleep 1
}

ensure_postgres() {
    if command -v pg_isready >/dev/null 2>&1 && pg_answers; then
        pg_login_ok || note "WARNING: postgresql answers on $PG_HOST:$PG_PORT but 'psql -h $PG_HOST -U postgres' without a password fails; tend's default URLs need it (e.g. 'trust' for 127.0.0.1/32 in pg_hba.conf). Not changed automatically on a server that was already running."
        echo "postgresql: running"
        return
    fi
    if ! command -v pg_isready >/dev/null 2>&1 && tcp_open "$PG_HOST" "$PG_PORT"; then
        # A server answers but this machine has no client tools: add only those.
        apt_install postgresql-client
        wait_until "postgresql" "$TIMEOUT_S" pg_answers || die "postgresql: port $PG_PORT is open but the server does not answer pg_isready"
        pg_login_ok || die "postgresql: cannot log in as postgres@$PG_HOST without a password"
        echo "postgresql: running"
        return
    fi
    local action="started"
    if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! command -v pg_isready >/dev/null 2>&1 \
        || [ -z "$(ls /usr/lib/postgresql 2>/dev/null)" ]; then
        apt_install postgresql
        action="installed and started"
    fi
    local cluster ver name status
    cluster="$(pg_pick_cluster)"
    read -r ver name status <<<"$cluster"
    if ! pg_answers; then
        if [ "$status" = "online" ] || [ "$status" = "online,recovery" ]; then
            note "postgresql: cluster $ver/$name is already starting; waiting"
        else
            $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start \
                || die "postgresql: 'pg_ctlcluster $ver $name start' failed (see /var/log/postgresql/postgresql-$ver-$name.log)"
        fi
    fi
    wait_until "postgresql" "$TIMEOUT_S" pg_answers \
        || die "postgresql: cluster $ver/$name does not answer on $PG_HOST:$PG_PORT after ${TIMEOUT_S}s (see /var/log/postgresql/postgresql-$ver-$name.log)"
    if ! pg_login_ok; then
        pg_trust_local_tcp "$ver" "$name"
        pg_login_ok || die "postgresql: still cannot log in as postgres@$PG_HOST without a password"
    fi
    echo "postgresql: $action"
}

# --- Redis -------------------------------------------------------------------

redis_answers() {
    [ "$(timeout 5 redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]
}

ensure_redis() {
    if command -v redis-cli >/dev/null 2>&1 && redis_answers; then
        echo "redis: running"
        return
    fi
    if ! command -v redis-cli >/dev/null 2>&1 && tcp_open "$REDIS_HOST" "$REDIS_PORT"; then
        apt_install redis-tools
        wait_until "redis" "$TIMEOUT_S" redis_answers || die "redis: port $REDIS_PORT is open but PING gets no PONG"
        echo "redis: running"
        return
    fi
    local action="started"
    if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
        apt_install redis-server
        action="installed and started"
        # The package's own init script may have started it already.
        if redis_answers; then echo "redis: installed (running)"; return; fi
    fi
    # "-::1" (optional IPv6 loopback) needs Redis >= 6.2, and a daemonized
    # redis-server reports bind errors only in its log: if it does not answer
    # soon, try once more bound to IPv4 loopback only.
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" \
        --save "" --appendonly no >/dev/null \
        || die "redis: 'redis-server --daemonize yes …' failed"
    if ! wait_until "redis" 5 redis_answers 2>/dev/null; then
        redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" \
            --save "" --appendonly no >/dev/null \
            || die "redis: 'redis-server --daemonize yes …' failed"
    fi
    wait_until "redis" "$TIMEOUT_S" redis_answers \
        || die "redis: does not answer PING on $REDIS_HOST:$REDIS_PORT after ${TIMEOUT_S}s"
    echo "redis: $action"
}

# --- RabbitMQ ----------------------------------------------------------------

# The broker answers the AMQP 0-9-1 protocol header with a Connection.Start
# method frame (frame type 1): a real protocol check, unlike a bare TCP connect.
amqp_answers() {
    local first
    first="$(timeout 5 bash -c "exec 3<>/dev/tcp/$AMQP_HOST/$AMQP_PORT \
        && printf 'AMQP\x00\x00\x09\x01' >&3 && head -c 1 <&3 | od -An -tx1" 2>/dev/null \
        | tr -d ' \n')" || return 1
    [ "$first" = "01" ]
}

rabbit_node_running() {
    command -v rabbitmq-diagnostics >/dev/null 2>&1 \
        && timeout 15 rabbitmq-diagnostics -q ping >/dev/null 2>&1
}

ensure_rabbitmq() {
    if amqp_answers; then
        echo "rabbitmq: running"
        return
    fi
    local action="started"
    if ! command -v rabbitmq-server >/dev/null 2>&1; then
        apt_install rabbitmq-server
        action="installed and started"
        if amqp_answers; then echo "rabbitmq: installed (running)"; return; fi
    fi
    # A node that is still booting answers ping (or at least has a process):
    # starting a second one would fail, so just wait for it.
    if rabbit_node_running || pgrep -u rabbitmq -f 'beam.*rabbit' >/dev/null 2>&1; then
        note "rabbitmq: a node is already booting; waiting"
    else
        $SUDO rabbitmq-server -detached \
            || die "rabbitmq: 'rabbitmq-server -detached' failed (see /var/log/rabbitmq/)"
    fi
    if command -v rabbitmqctl >/dev/null 2>&1; then
        # Bounded: await_startup waits forever for a node that never boots.
        timeout "$((TIMEOUT_S + 30))" $SUDO rabbitmqctl await_startup >/dev/null 2>&1 || true
    fi
    wait_until "rabbitmq" "$TIMEOUT_S" amqp_answers \
        || die "rabbitmq: does not answer AMQP on $AMQP_HOST:$AMQP_PORT after ${TIMEOUT_S}s (see /var/log/rabbitmq/)"
    echo "rabbitmq: $action"
}

# The fault suite (tests/tests/faults) runs private Redis servers, which it
# kills and restarts without touching the shared one: it needs the binary
# even where the shared Redis runs elsewhere.
ensure_redis_server_binary() {
    command -v redis-server >/dev/null 2>&1 || apt_install redis-server
    command -v redis-server >/dev/null 2>&1 || die "redis-server: not on PATH after installing it"
    echo "redis-server: $(command -v redis-server) (for the fault suite's private instances)"
}

ensure_postgres
ensure_redis
ensure_rabbitmq
ensure_redis_server_binary
