# shellcheck shell=bash
# shellcheck disable=SC2034  # variables set here are read by the sourcing scripts
# Shared helpers of deploy/bench/*.sh: a scratch tend stack on loopback
# (its own database, instance prefix, ports and JWT secret), started from
# the release binaries, and its cleanup.
#
# Source it, then call bench_init NAME. Cleanup runs at exit (normal, error
# or Ctrl-C): it stops only the processes this run started (by pid, after
# checking the pid still runs the program it started), drops the scratch
# database, deletes the Redis keys "<instance>:*" and the RabbitMQ exchange
# "<instance>.sync" (the sync server's queue is exclusive and auto-delete:
# it goes with the process). PostgreSQL, Redis and RabbitMQ themselves are
# shared with other work and are never stopped, restarted or flushed.
#
# Knobs common to every script (environment):
#   BENCH_NO_BUILD=1      use target/release (or $CARGO_TARGET_DIR/release) as
#                         it is (skip cargo build)
#   BENCH_KEEP=1          keep the run directory (logs, tokens) even on success
#   BENCH_SERVER_CPUS     taskset CPU list for the measured servers (default:
#   BENCH_WRK_CPUS        none) and for wrk; see heartbeat.sh for why the
#                         default leaves everything unpinned on 2 cores
#   TEND_BENCH_PG         admin URL of PostgreSQL   (postgres://postgres@127.0.0.1:5432/postgres)
#   TEND_BENCH_REDIS      redis://127.0.0.1:6379
#   TEND_BENCH_AMQP       amqp://guest:guest@127.0.0.1:5672/%2f

BENCH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# cargo builds into CARGO_TARGET_DIR when it is set.
BENCH_BIN="${CARGO_TARGET_DIR:-$BENCH_ROOT/target}/release"
BENCH_OUT="$BENCH_ROOT/target/bench"
BENCH_PG_ADMIN="${TEND_BENCH_PG:-postgres://postgres@127.0.0.1:5432/postgres}"
BENCH_REDIS="${TEND_BENCH_REDIS:-redis://127.0.0.1:6379}"
BENCH_AMQP="${TEND_BENCH_AMQP:-amqp://guest:guest@127.0.0.1:5672/%2f}"
BENCH_ADMIN_USER="bench"
BENCH_READY_TIMEOUT_S=60
CLK_TCK="$(getconf CLK_TCK)"

# Processes this run started: pid -> the path of the binary it runs.
declare -A BENCH_PIDS=()
BENCH_NAME="" BENCH_TAG="" BENCH_RUN="" BENCH_DB="" BENCH_INSTANCE=""
BENCH_DB_CREATED=0 BENCH_FAILED=1
PLATFORM_URL="" SYNC_URL="" MONITOR_URL="" SYNC_PID="" PLATFORM_PID="" MONITOR_PID=""

log() { printf '%s [%s] %s\n' "$(date +%H:%M:%S)" "$BENCH_NAME" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# pin CPUS: the taskset prefix for CPU list CPUS (nothing when empty).
pin() {
    if [ -n "$1" ]; then printf 'taskset\n-c\n%s\n' "$1"; fi
}

need() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || die "$c is required"
    done
}

# ensure_wrk: installs Debian's wrk when missing (needs root or sudo).
ensure_wrk() {
    command -v wrk >/dev/null 2>&1 && return 0
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "wrk is missing: apt-get install -y wrk"
        sudo=sudo
    fi
    log "wrk is missing: apt-get install -y wrk"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y wrk >/dev/null 2>&1 \
        || { $sudo apt-get update >/dev/null 2>&1 \
             && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y wrk >/dev/null 2>&1; } \
        || die "installing wrk failed (apt-get install -y wrk)"
}

# bench_init NAME: scratch names, run directory, cleanup trap.
bench_init() {
    BENCH_NAME="$1"
    BENCH_TAG="$(date +%H%M%S)$(head -c 3 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    BENCH_DB="tend_bench_$BENCH_TAG"
    BENCH_INSTANCE="bench-$BENCH_TAG"
    mkdir -p "$BENCH_OUT"
    BENCH_RUN="$(mktemp -d "$BENCH_OUT/run-$BENCH_NAME-XXXXXX")"
    chmod 700 "$BENCH_RUN"
    (umask 077
     head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$BENCH_RUN/admin_token_key"
     head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$BENCH_RUN/device_token_key"
     head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$BENCH_RUN/admin_password")
    trap bench_cleanup EXIT
    trap 'log "interrupted"; exit 130' INT TERM
    log "run directory $BENCH_RUN, database $BENCH_DB, instance $BENCH_INSTANCE"
}

ensure_backing() {
    bash "$BENCH_ROOT/deploy/local/backing-services.sh" >&2 \
        || die "backing services are not available"
}

# build_release PKG:BIN...: cargo build --release of these binaries
# (skipped with BENCH_NO_BUILD=1); checks that each exists.
build_release() {
    local spec args=() b
    for spec in "$@"; do args+=(-p "${spec%%:*}" --bin "${spec##*:}"); done
    if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
        log "cargo build --release ${args[*]}"
        (cd "$BENCH_ROOT" && cargo build --release "${args[@]}") >&2 || die "build failed"
    fi
    for spec in "$@"; do
        b="$BENCH_BIN/${spec##*:}"
        [ -x "$b" ] || die "$b is missing (build it, or unset BENCH_NO_BUILD)"
    done
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# alive PID: runs and is not a zombie.
alive() {
    kill -0 "$1" 2>/dev/null || return 1
    [ "$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null)" != Z ]
}

# runs_binary PID PATH: PID still runs the program we started.
# (A binary rebuilt meanwhile shows as "PATH (deleted)": still ours.)
runs_binary() {
    local exe
    exe="$(readlink "/proc/$1/exe" 2>/dev/null)" || return 1
    [ "${exe% (deleted)}" = "$(readlink -f "$2")" ]
}

# token_key_env NAME: the token key of service NAME, as VAR=value (nothing
# for the monitor): each service gets its own key and no other.
token_key_env() {
    case "$1" in
        tend-platform) printf 'TEND_ADMIN_TOKEN_KEY=%s\n' "$(cat "$BENCH_RUN/admin_token_key")" ;;
        tend-sync) printf 'TEND_DEVICE_TOKEN_KEY=%s\n' "$(cat "$BENCH_RUN/device_token_key")" ;;
    esac
}

# start_service NAME BINARY CPUS ENV...: starts BINARY on a fresh loopback
# port with exactly ENV and NAME's token key (plus PATH and HOME), logs to
# $BENCH_RUN/NAME.log, waits for /readyz (or /healthz for bare_actix). Sets
# STARTED_PID, STARTED_URL and STARTED_METRICS_URL (where /metrics is: a port
# of its own for tend-platform and tend-sync, the one port of tend-monitor).
# Retries on other ports if a chosen one was taken meanwhile.
start_service() {
    local name="$1" binary="$2" cpus="$3"; shift 3
    local attempt port metrics_port pid url metrics_url ready deadline prefix=() key=() metrics_env=()
    mapfile -t prefix < <(pin "$cpus")
    mapfile -t key < <(token_key_env "$name")
    for attempt in 1 2 3; do
        port="$(free_port)"
        url="http://127.0.0.1:$port"
        metrics_url="$url"
        if [ "$name" = bare_actix ]; then
            ready="$url/healthz"
            env -i PATH="$PATH" HOME="${HOME:-/}" "${prefix[@]}" "$binary" "127.0.0.1:$port" \
                </dev/null >>"$BENCH_RUN/$name.log" 2>&1 &
        else
            ready="$url/readyz"
            metrics_env=()
            # The monitor's one port is its metrics port.
            if [ "$name" != tend-monitor ]; then
                metrics_port="$(free_port)"
                metrics_url="http://127.0.0.1:$metrics_port"
                metrics_env=(TEND_METRICS_LISTEN="127.0.0.1:$metrics_port")
            fi
            env -i PATH="$PATH" HOME="${HOME:-/}" "$@" "${key[@]}" TEND_LISTEN="127.0.0.1:$port" \
                "${metrics_env[@]}" "${prefix[@]}" "$binary" </dev/null >>"$BENCH_RUN/$name.log" 2>&1 &
        fi
        pid=$!
        BENCH_PIDS[$pid]="$binary"
        deadline=$((SECONDS + BENCH_READY_TIMEOUT_S))
        while ! curl -fs -o /dev/null --max-time 2 "$ready"; do
            if ! alive "$pid"; then break; fi
            [ "$SECONDS" -lt "$deadline" ] || { tail -n 20 "$BENCH_RUN/$name.log" >&2; die "$name not ready within ${BENCH_READY_TIMEOUT_S}s"; }
            sleep 0.2
        done
        if alive "$pid"; then
            STARTED_PID="$pid" STARTED_URL="$url" STARTED_METRICS_URL="$metrics_url"
            log "$name ready on $url (pid $pid${cpus:+, CPUs $cpus})"
            return 0
        fi
        unset "BENCH_PIDS[$pid]"
        if ! grep -qi 'listen\|address already in use' "$BENCH_RUN/$name.log"; then break; fi
        log "$name could not bind port $port (attempt $attempt); trying another"
    done
    tail -n 20 "$BENCH_RUN/$name.log" >&2
    die "$name exited during startup (log: $BENCH_RUN/$name.log)"
}

psql_admin() { psql -X -w -q -v ON_ERROR_STOP=1 -tA "$BENCH_PG_ADMIN" "$@"; }

create_db() {
    psql_admin -c "CREATE DATABASE $BENCH_DB" >/dev/null || die "cannot create database $BENCH_DB"
    BENCH_DB_CREATED=1
}

db_url() { printf '%s/%s' "${BENCH_PG_ADMIN%/*}" "$BENCH_DB"; }

# service_env HEARTBEAT_S: the environment of tend's three services (their
# token keys are added by start_service, each to its own service).
service_env() {
    printf '%s\n' \
        "TEND_DATABASE_URL=$(db_url)" \
        "TEND_REDIS_URL=$BENCH_REDIS" \
        "TEND_AMQP_URL=$BENCH_AMQP" \
        "TEND_INSTANCE=$BENCH_INSTANCE" \
        "TEND_BOOTSTRAP_ADMIN=$BENCH_ADMIN_USER:$(cat "$BENCH_RUN/admin_password")" \
        "TEND_HEARTBEAT_S=$1" \
        "TEND_SHUTDOWN_GRACE_S=3" \
        "TEND_LOG=${TEND_LOG:-warn}"
    if [ -n "${BENCH_PRESENCE_REFRESH:-}" ]; then
        echo "TEND_PRESENCE_REFRESH_S=$BENCH_PRESENCE_REFRESH"
    fi
}

# start_platform ENV...: tend-platform with ENV and its instruction-signing
# key (made in the run directory; agents pin BENCH_SIGNING_PUBLIC_KEY).
start_platform() {
    BENCH_SIGNING_PUBLIC_KEY="$("$BENCH_BIN/tend-platform" signing-key --create "$BENCH_RUN/signing-key.pem" 2>/dev/null)" \
        || die "cannot make the instruction-signing key $BENCH_RUN/signing-key.pem"
    start_service tend-platform "$BENCH_BIN/tend-platform" "" "$@" \
        "TEND_SIGNING_KEY_FILE=$BENCH_RUN/signing-key.pem"
    PLATFORM_PID="$STARTED_PID" PLATFORM_URL="$STARTED_URL" PLATFORM_METRICS_URL="$STARTED_METRICS_URL"
}

# start_stack HEARTBEAT_S: scratch database and the three services (the
# platform first: it migrates and creates the admin). tend-sync runs on
# BENCH_SERVER_CPUS like bare_actix; the platform and the monitor float.
start_stack() {
    local env=()
    mapfile -t env < <(service_env "$1")
    create_db
    start_platform "${env[@]}"
    start_service tend-monitor "$BENCH_BIN/tend-monitor" "" "${env[@]}"
    MONITOR_PID="$STARTED_PID" MONITOR_URL="$STARTED_URL"
    start_service tend-sync "$BENCH_BIN/tend-sync" "${BENCH_SERVER_CPUS:-}" "${env[@]}"
    SYNC_PID="$STARTED_PID" SYNC_URL="$STARTED_URL" SYNC_METRICS_URL="$STARTED_METRICS_URL"
}

# provision COUNT FILE [SECRETS_FILE]: devices and their tokens ("id token
# boot_id" lines), and their secrets ("id secret") if asked.
provision() {
    local extra=()
    if [ -n "${3:-}" ]; then extra=(--secrets-out "$3"); fi
    python3 "$BENCH_ROOT/deploy/bench/provision.py" \
        --platform "$PLATFORM_URL" --sync "$SYNC_URL" \
        --admin "$BENCH_ADMIN_USER:$(cat "$BENCH_RUN/admin_password")" \
        --count "$1" --prefix "$BENCH_INSTANCE" --out "$2" "${extra[@]}" >&2 \
        || die "provisioning failed"
}

# metric URL NAME: the value of an unlabelled Prometheus series (0 if absent)
# at URL/metrics; URL is a metrics URL ($SYNC_METRICS_URL, $MONITOR_URL).
metric() {
    curl -fs --max-time 5 "$1/metrics" \
        | awk -v n="$2" '$1 == n { v = $2 } END { printf "%d\n", (v == "" ? 0 : v) }'
}

# status_kb PID FIELD: a /proc/PID/status field in kB (VmRSS, VmHWM).
status_kb() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }

# cpu_ticks PID: utime + stime of the process (all its threads), in ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }

# thread_ns PID: "tid nanoseconds-on-CPU" of each live thread
# (/proc/PID/task/TID/schedstat, exact, unlike clock ticks).
thread_ns() {
    local f
    for f in /proc/"$1"/task/*/schedstat; do
        [ -r "$f" ] || continue
        printf '%s %s\n' "$(basename "$(dirname "$f")")" "$(cut -d' ' -f1 "$f")"
    done
}

# fd_count PID: open file descriptors (sockets included).
fd_count() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }

now_s() { date +%s.%N; }

# calc EXPR: floating-point arithmetic.
calc() { python3 -c "print($1)"; }

# machine_md: a markdown paragraph describing this machine and build.
machine_md() {
    local cpu rev dirty=""
    cpu="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    rev="$(git -C "$BENCH_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    if [ -n "$(git -C "$BENCH_ROOT" status --porcelain --untracked-files=no -- services proto 2>/dev/null)" ]; then
        dirty=" plus uncommitted changes in services/ or proto/"
    fi
    if [ "${BENCH_NO_BUILD:-0}" = 1 ]; then
        dirty+="; binaries not rebuilt (BENCH_NO_BUILD=1), tend-sync built $(date -u -r "$BENCH_BIN/tend-sync" +%Y-%m-%dT%H:%MZ)"
    fi
    printf '**Machine**: %s CPUs (%s), %s GB RAM, Linux %s, %s; tend at %s%s; release profile.\n' \
        "$(nproc)" "$cpu" "$(awk '/^MemTotal/ { printf "%d", $2 / 1048576 + 0.5 }' /proc/meminfo)" \
        "$(uname -r | cut -d- -f1)" "$(rustc --version 2>/dev/null | cut -d' ' -f1-2)" "$rev" "$dirty"
}

# machine_busy_cores SECONDS: CPU in use on the whole machine (in cores).
machine_busy_cores() {
    local a b
    a="$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat)"
    sleep "$1"
    b="$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat)"
    calc "round(($b - $a) / $CLK_TCK / $1, 2)"
}

# machine_ticks: CPU ticks used on the whole machine so far (all cores).
machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }

# wait_quiet: waits, bounded, until other work on the machine (a build, a
# test run) nearly stops; sets BACKGROUND_CORES to what was left. The
# calling script sets QUIET_WAIT_S (the bound) and QUIET_CORES (the CPU
# other work may still use).
wait_quiet() {
    local deadline=$((SECONDS + QUIET_WAIT_S))
    while :; do
        BACKGROUND_CORES="$(machine_busy_cores 3)"
        [ "$(calc "int($BACKGROUND_CORES <= $QUIET_CORES)")" = 0 ] || break
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "WARNING: the machine is still busy ($BACKGROUND_CORES cores in use by other work) after ${QUIET_WAIT_S}s: measuring anyway"
            break
        fi
        log "waiting for other work to calm down ($BACKGROUND_CORES cores busy)"
    done
}

# start_artifact_stack STORE: start_stack (30 s heartbeats) with the
# artifact store in directory STORE (platform and sync must name the same
# store).
start_artifact_stack() {
    local env=()
    mapfile -t env < <(service_env 30)
    env+=("TEND_ARTIFACT_STORE=file://$1")
    create_db
    start_platform "${env[@]}"
    start_service tend-monitor "$BENCH_BIN/tend-monitor" "" "${env[@]}"
    MONITOR_PID="$STARTED_PID" MONITOR_URL="$STARTED_URL"
    start_service tend-sync "$BENCH_BIN/tend-sync" "" "${env[@]}"
    SYNC_PID="$STARTED_PID" SYNC_URL="$STARTED_URL" SYNC_METRICS_URL="$STARTED_METRICS_URL"
}

# admin_login: the admin's access token into $BENCH_RUN/admin.header. The
# admin's credentials and token go to curl through files (-d @, -H @),
# never on a command line that `ps` shows. Tokens live 15 minutes: log in
# again before a step that comes later than that.
admin_login() {
    (umask 077
     jq -n --arg u "$BENCH_ADMIN_USER" --arg p "$(cat "$BENCH_RUN/admin_password")" \
         '{username: $u, password: $p}' >"$BENCH_RUN/login.json")
    local token
    token="$(curl -fsS --max-time 30 -H 'Content-Type: application/json' \
        -d @"$BENCH_RUN/login.json" "$PLATFORM_URL/api/v1/auth/login" | jq -r .access_token)" \
        || die "admin login failed"
    (umask 077; printf 'Authorization: Bearer %s\n' "$token" >"$BENCH_RUN/admin.header")
}

# api METHOD PATH [CURL ARGS...]: a platform call as the admin (after
# admin_login); the body of the answer on stdout, and a non-zero exit on an
# HTTP error. A later --max-time in ARGS overrides the 30 s.
api() {
    local method="$1" path="$2"; shift 2
    curl -fsS --max-time 30 -X "$method" -H @"$BENCH_RUN/admin.header" "$@" "$PLATFORM_URL$path"
}

# stop_pid PID: SIGTERM, up to 15 s, then SIGKILL; only if it still runs
# the binary this run started.
stop_pid() {
    local pid="$1" binary="${BENCH_PIDS[$1]}" deadline
    if alive "$pid" && runs_binary "$pid" "$binary"; then
        kill -TERM "$pid" 2>/dev/null || true
        deadline=$((SECONDS + 15))
        while alive "$pid" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
        if alive "$pid"; then
            log "pid $pid ($(basename "$binary")) still running 15 s after SIGTERM: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
    unset "BENCH_PIDS[$pid]"
}

bench_cleanup() {
    local rc=$? pid keys
    trap - EXIT INT TERM
    set +e
    for pid in "${!BENCH_PIDS[@]}"; do stop_pid "$pid"; done
    if [ "$BENCH_DB_CREATED" = 1 ]; then
        psql_admin -c "DROP DATABASE IF EXISTS $BENCH_DB WITH (FORCE)" >/dev/null \
            || log "WARNING: could not drop database $BENCH_DB"
    fi
    if [ -n "$BENCH_INSTANCE" ]; then
        keys="$(redis-cli -u "$BENCH_REDIS" --scan --pattern "$BENCH_INSTANCE:*" 2>/dev/null | wc -l)"
        if [ "$keys" -gt 0 ]; then
            redis-cli -u "$BENCH_REDIS" --scan --pattern "$BENCH_INSTANCE:*" \
                | xargs -r -n 200 redis-cli -u "$BENCH_REDIS" UNLINK >/dev/null \
                || log "WARNING: could not delete Redis keys $BENCH_INSTANCE:*"
        fi
        delete_exchange "$BENCH_INSTANCE.sync"
    fi
    if [ "$rc" = 0 ] && [ "$BENCH_FAILED" = 0 ] && [ "${BENCH_KEEP:-0}" != 1 ]; then
        rm -rf "$BENCH_RUN"
    elif [ -n "$BENCH_RUN" ]; then
        log "logs kept in $BENCH_RUN"
    fi
    exit "$rc"
}

# delete_exchange NAME: through rabbitmqctl (the broker's management plugin,
# which rabbitmqadmin needs, is not enabled here). Needs the Erlang cookie,
# i.e. root or the rabbitmq user; otherwise it says what to delete by hand.
delete_exchange() {
    local out
    if command -v rabbitmqctl >/dev/null 2>&1; then
        out="$(timeout 60 rabbitmqctl -q eval \
            "rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"$1\">>), false, <<\"tend-bench\">>)." 2>&1)"
        case "$out" in
            ok|*not_found*) return 0 ;;
        esac
    fi
    log "NOTE: could not delete the RabbitMQ exchange '$1' (${out:-no rabbitmqctl}); delete it by hand, e.g. rabbitmqadmin delete exchange name='$1'"
}
