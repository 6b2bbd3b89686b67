#!/usr/bin/env bash
# Artifact benchmark of tend: downloads from tend-sync side by side with
# nginx serving the same file, tend-sync's memory per download, a large
# upload through the platform and update checks for a fleet. One run on
# this machine, loopback only:
#
#   1. backing services (deploy/local/backing-services.sh), Debian's wrk and
#      nginx (installed if missing), release build of tend-platform,
#      tend-sync and tend-monitor;
#   2. a scratch stack (database tend_bench_<tag>, instance bench-<tag>,
#      fresh loopback ports) whose artifact store is a directory of the run
#      (TEND_ARTIFACT_STORE=file://<run>/store);
#   3. one BENCH_ARTIFACT_MB artifact (component "app" 2.0.0 for device
#      type "bench", random bytes) created, uploaded with curl and released
#      through the platform's API; nginx (its own config file, its own
#      loopback port, not the system's site) serves the very file the
#      platform stored, <store>/<artifact_id>.<upload_uuid>;
#   4. BENCH_DEVICES devices and a device token each (provision.py);
#   5. update checks (wrk with update_check.lua, body
#      {"components":{"app":"1.0.0"}}): first one pass over the fleet, in
#      which every check queues the device's upgrade, then
#      BENCH_CHECK_S seconds of steady checks, each finding that upgrade
#      open; SQL per steady check from pg_stat_database of the scratch
#      database;
#   6. tend-sync's memory during BENCH_SLOW_DOWNLOADS concurrent downloads
#      held mid-body by slow readers (slow_readers.py: one device each,
#      BENCH_SLOW_RATE_KB KiB/s per connection, BENCH_SLOW_S seconds);
#   7. download throughput at each of BENCH_CONCURRENCY concurrent
#      devices: curl processes, one device token each, each downloading
#      the whole artifact (several times at low concurrency, so every point
#      moves at least BENCH_MIN_MB), tend-sync and nginx alternately,
#      BENCH_TRIALS times; the best of each and the ratio tend/nginx;
#   8. a BENCH_UPLOAD_MB upload (a sparse file) through the platform with
#      its memory sampled every 0.2 s, then the artifact deleted;
#   9. a markdown summary on stdout and in target/bench/artifacts-<date>.md.
#
# Why these tools: curl for downloads because each process sends its own
# device's Authorization header and downloads whole files as a device
# does, the same command against both servers; wrk (with a Lua script)
# for update checks because they are small requests where the client's
# cost matters; a Python asyncio client for the slow readers because 1,000
# curl processes would cost the shared machine more than the server does.
#
# Cleanup (always, see lib.sh): stops only the processes it started (nginx
# included), deletes the artifact store and the generated files, drops the
# scratch database, deletes the Redis keys bench-<tag>:* and the RabbitMQ
# exchange bench-<tag>.sync. Every step is bounded in time; about 3 minutes
# plus the build at the default sizes (and up to BENCH_QUIET_WAIT_S first). Device tokens live 15
# minutes: the steps that use them run first, the large upload last.
#
# Settings (environment):
#   BENCH_ARTIFACT_MB=256   the downloaded artifact (MiB)
#   BENCH_DEVICES=10000     the fleet of the update checks; the downloads
#                           use its first devices (at least the largest of
#                           BENCH_CONCURRENCY and BENCH_SLOW_DOWNLOADS)
#   BENCH_CONCURRENCY="1 10 100"  concurrent devices downloading
#   BENCH_MIN_MB=2048       bytes each point moves at least (MiB): one
#                           256 MiB download takes a tenth of a second on
#                           loopback, too short to time alone
#   BENCH_TRIALS=2          rounds of the download points, alternating which
#                           server goes first; the best of each counts
#   BENCH_SLOW_DOWNLOADS=1000  concurrent downloads for the memory figure
#                           (below TEND_DOWNLOADS_MAX, 1024 by default)
#   BENCH_SLOW_RATE_KB=64   read rate of each slow download (KiB/s)
#   BENCH_SLOW_S=15         how long they are held mid-body
#   BENCH_UPLOAD_MB=2048    the uploaded artifact (MiB)
#   BENCH_CHECK_S=20        steady update checks, seconds
#   BENCH_CHECK_CONNS=64    wrk connections for the update checks
#   BENCH_THREADS=2         wrk threads: one per core
#   BENCH_QUIET_WAIT_S=60   before measuring, wait up to this long for other
#   BENCH_QUIET_CORES=0.3   work on the machine to use at most this much CPU
#   BENCH_NO_BUILD=1        measure target/release as it is
#   BENCH_KEEP=1            keep the run directory (logs), not the big files
set -euo pipefail

# shellcheck source=deploy/bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ARTIFACT_MB="${BENCH_ARTIFACT_MB:-256}"
DEVICES="${BENCH_DEVICES:-10000}"
read -r -a CONCURRENCY <<<"${BENCH_CONCURRENCY:-1 10 100}"
MIN_MB="${BENCH_MIN_MB:-2048}"
TRIALS="${BENCH_TRIALS:-2}"
SLOW="${BENCH_SLOW_DOWNLOADS:-1000}"
SLOW_RATE_KB="${BENCH_SLOW_RATE_KB:-64}"
SLOW_S="${BENCH_SLOW_S:-15}"
UPLOAD_MB="${BENCH_UPLOAD_MB:-2048}"
CHECK_S="${BENCH_CHECK_S:-20}"
CHECK_CONNS="${BENCH_CHECK_CONNS:-64}"
THREADS="${BENCH_THREADS:-2}"
QUIET_WAIT_S="${BENCH_QUIET_WAIT_S:-60}"
QUIET_CORES="${BENCH_QUIET_CORES:-0.3}"
LUA="$BENCH_ROOT/deploy/bench/update_check.lua"
# Bounds of the steps that have no duration of their own: the first pass
# of update checks, one download (256 MiB at 100 at once on a busy machine
# takes seconds, not minutes), an upload.
PASS_MAX_S=300
DOWNLOAD_MAX_S=300
UPLOAD_MAX_S=600
# PostgreSQL reports an idle backend's statistics up to 10 s late (15+):
# wait this long before reading the counters after a window.
PG_STATS_DELAY_S=11

case "${1:-}" in
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    "") ;;
    *) echo "usage: $0 [--help]   (settings come from the environment)" >&2; exit 2 ;;
esac

most=$SLOW
for c in "${CONCURRENCY[@]}"; do [ "$c" -le "$most" ] || most=$c; done
[ "$CHECK_CONNS" -ge "$THREADS" ] || { echo "BENCH_CHECK_CONNS must be at least BENCH_THREADS" >&2; exit 2; }
[ "$DEVICES" -ge "$most" ] || { echo "BENCH_DEVICES=$DEVICES: at least $most devices are needed" >&2; exit 2; }

bench_init artifacts
STORE="$BENCH_RUN/store"
DATA="$BENCH_RUN/data"

# The artifacts are gigabytes: delete them whatever happens, even when the
# run directory is kept for its logs, then lib.sh's cleanup.
artifacts_cleanup() {
    local rc=$?
    # Without this, set -e would end the handler at `(exit 1)` after a
    # failure, before lib.sh's cleanup stops anything.
    set +e
    rm -rf "$STORE" "$DATA"
    (exit "$rc")
    bench_cleanup
}
trap artifacts_cleanup EXIT

need curl python3 psql redis-cli cargo jq truncate
ensure_wrk

# ensure_nginx: installs Debian's nginx when missing (needs root or sudo).
# Only the binary is used: it runs with this script's config file.
ensure_nginx() {
    command -v nginx >/dev/null 2>&1 && return 0
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "nginx is missing: apt-get install -y nginx"
        sudo=sudo
    fi
    log "nginx is missing: apt-get install -y nginx"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y nginx >/dev/null 2>&1 \
        || { $sudo apt-get update >/dev/null 2>&1 \
             && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y nginx >/dev/null 2>&1; } \
        || die "installing nginx failed (apt-get install -y nginx)"
}
export PATH="$PATH:/usr/sbin:/sbin"
ensure_nginx
ensure_backing
build_release tend-platform:tend-platform tend-sync:tend-sync tend-monitor:tend-monitor

WRK="$(command -v wrk)"
CURL="$(command -v curl)"
NGINX="$(command -v nginx)"
PYTHON="$(command -v python3)"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" -gt $((SLOW * 2 + 200)) ] \
    || die "open-file limit $(ulimit -n) is too low for BENCH_SLOW_DOWNLOADS=$SLOW"
mkdir -p "$STORE" "$DATA"

# --- helpers -------------------------------------------------------------------

# start_nginx FILE_DIR: Debian's nginx with a config of its own on a free
# loopback port, serving FILE_DIR; sets NGINX_PID and NGINX_URL. As many
# workers as cores, like actix-web; sendfile, as any nginx serving files.
start_nginx() {
    local dir="$BENCH_RUN/nginx" port pid deadline user=""
    mkdir -p "$dir/tmp"
    port="$(free_port)"
    # Workers read the store as this script's user (as root, nginx would
    # otherwise switch to nobody, who cannot enter the run directory).
    if [ "$(id -u)" = 0 ]; then user="user root root;"; fi
    cat >"$dir/nginx.conf" <<EOF
# deploy/bench/artifacts.sh: the comparison file server.
daemon off;
master_process on;
worker_processes auto;
$user
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 10000;
    default_type application/octet-stream;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    server {
        listen 127.0.0.1:$port;
        root $1;
        location / { }
    }
}
EOF
    "$NGINX" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" </dev/null >>"$dir/stdout.log" 2>&1 &
    pid=$!
    BENCH_PIDS[$pid]="$NGINX"
    deadline=$((SECONDS + 20))
    until curl -fs -o /dev/null --max-time 2 -r 0-0 "http://127.0.0.1:$port/$OBJECT"; do
        alive "$pid" || { cat "$dir/error.log" >&2; die "nginx exited during startup"; }
        [ "$SECONDS" -lt "$deadline" ] || die "nginx not serving within 20 s"
        sleep 0.2
    done
    NGINX_PID="$pid" NGINX_URL="http://127.0.0.1:$port/$OBJECT"
    log "nginx $("$NGINX" -v 2>&1 | cut -d/ -f2) ready on 127.0.0.1:$port (pid $pid)"
}

# server_ticks NAME: CPU ticks of the server's processes (nginx: master and
# workers).
server_ticks() {
    local p t=0
    if [ "$1" = nginx ]; then
        for p in "$NGINX_PID" $(pgrep -P "$NGINX_PID"); do t=$((t + $(cpu_ticks "$p"))); done
        echo "$t"
    else
        cpu_ticks "$SYNC_PID"
    fi
}

# pg_counters: "commits rollbacks inserted" of the scratch database.
pg_counters() {
    psql_admin -F ' ' -c "SELECT xact_commit, xact_rollback, tup_inserted
        FROM pg_stat_database WHERE datname = '$BENCH_DB'"
}

# PostgreSQL's log, if this user can read it: each failed INSERT is logged
# there as an ERROR with its statement.
PG_LOG="$(find /var/log/postgresql -maxdepth 1 -name 'postgresql-*.log' -printf '%T@ %p\n' 2>/dev/null \
    | sort -rn | head -n 1 | cut -d' ' -f2- || true)"
[ -n "$PG_LOG" ] && [ -r "$PG_LOG" ] || PG_LOG=""
pg_log_size() { if [ -n "$PG_LOG" ]; then stat -c %s "$PG_LOG"; else echo 0; fi; }
# pg_log_errors FROM: lines of this database's unique violations logged
# since byte FROM.
pg_log_errors() {
    if [ -z "$PG_LOG" ]; then echo "n/a"; return; fi
    tail -c +"$(($1 + 1))" "$PG_LOG" | grep -c "@$BENCH_DB ERROR: *duplicate key value violates unique constraint" || true
}

# --- stack, artifact, nginx, fleet -----------------------------------------------
start_artifact_stack "$STORE"
admin_login

SIZE=$((ARTIFACT_MB * 1048576))
log "writing a ${ARTIFACT_MB} MiB artifact of random bytes"
head -c "$SIZE" /dev/urandom >"$DATA/app.bin"
ART="$(api POST /api/v1/artifacts -H 'Content-Type: application/json' \
    -d '{"component":"app","version":"2.0.0","device_types":["bench"],"filename":"app-2.0.0.bin"}')" \
    || die "creating the artifact failed"
ART_ID="$(jq -r .id <<<"$ART")"
t0="$(now_s)"
ART="$(curl -fsS --max-time "$UPLOAD_MAX_S" -X PUT -H @"$BENCH_RUN/admin.header" -H 'Expect:' \
    -H 'Content-Type: application/octet-stream' -T "$DATA/app.bin" \
    "$PLATFORM_URL/api/v1/artifacts/$ART_ID/content")" || die "uploading the artifact failed"
t1="$(now_s)"
SMALL_UPLOAD_MIBS="$(calc "round($SIZE / 1048576 / ($t1 - $t0))")"
SHA256="$(jq -r .sha256 <<<"$ART")"
[ "$(jq -r .size <<<"$ART")" = "$SIZE" ] || die "the platform stored $(jq -r .size <<<"$ART") bytes, not $SIZE"
api PATCH "/api/v1/artifacts/$ART_ID" -H 'Content-Type: application/json' -d '{"released":true}' >/dev/null \
    || die "releasing the artifact failed"
rm -f "$DATA/app.bin"
mapfile -t objects < <(cd "$STORE" && ls -1 -- "$ART_ID".* 2>/dev/null)
[ "${#objects[@]}" = 1 ] || die "expected one object $ART_ID.* in $STORE, found ${#objects[@]}"
OBJECT="${objects[0]}"
[ "$(stat -c %s "$STORE/$OBJECT")" = "$SIZE" ] || die "$STORE/$OBJECT is not $SIZE bytes"
log "artifact $ART_ID uploaded ($SMALL_UPLOAD_MIBS MiB/s) and released; stored as $OBJECT"
SYNC_DOWNLOAD_URL="$SYNC_URL/device/v1/artifacts/$ART_ID"
start_nginx "$STORE"

TOKENS="$BENCH_RUN/tokens"
provision "$DEVICES" "$TOKENS"
TOKENS_AT=$SECONDS

# Every download, from either server, is checked whole once: same bytes.
got="$(curl -fsS --max-time "$DOWNLOAD_MAX_S" "$NGINX_URL" | sha256sum | cut -d' ' -f1)" \
    || die "downloading from nginx failed"
[ "$got" = "$SHA256" ] || die "nginx served other bytes (sha256 $got, not $SHA256)"

wait_quiet
log "CPU in use before measuring (other work and the idle stack): $BACKGROUND_CORES cores"

# --- update checks ---------------------------------------------------------------
declare -A R=()
# parse_wrk FILE: the BENCH_RESULT line of a wrk run into R.
parse_wrk() {
    local line kv
    line="$(grep '^BENCH_RESULT ' "$1")" || { cat "$1" >&2; die "no result from wrk"; }
    R=()
    for kv in ${line#BENCH_RESULT }; do R[${kv%%=*}]="${kv#*=}"; done
    R[errors]=$((R[err_connect] + R[err_read] + R[err_write] + R[err_status] + R[err_timeout]))
}

log "update checks: one pass over $DEVICES devices (each queues an upgrade), $CHECK_CONNS connections"
PASS_DIR="$BENCH_RUN/pass"
mkdir -p "$PASS_DIR"
t0="$(now_s)"
BENCH_TOKENS="$TOKENS" BENCH_ONE_PASS=1 BENCH_THREADS="$THREADS" BENCH_DONE_DIR="$PASS_DIR" \
    "$WRK" -t"$THREADS" -c"$CHECK_CONNS" -d"${PASS_MAX_S}s" --timeout 10s -s "$LUA" "$SYNC_URL" \
    >"$BENCH_RUN/wrk-pass.txt" 2>&1 &
wpid=$!
BENCH_PIDS[$wpid]="$WRK"
while [ "$(find "$PASS_DIR" -name 'thread-*' | wc -l)" -lt "$THREADS" ] && alive "$wpid"; do
    sleep 0.05
done
t1="$(now_s)"
kill -INT "$wpid" 2>/dev/null || true
wait "$wpid" || true
unset "BENCH_PIDS[$wpid]"
[ "$(find "$PASS_DIR" -name 'thread-*' | wc -l)" = "$THREADS" ] \
    || { cat "$BENCH_RUN/wrk-pass.txt" >&2; die "the first pass of update checks did not finish (wrk ended early, or ${PASS_MAX_S}s passed)"; }
parse_wrk "$BENCH_RUN/wrk-pass.txt"
PASS_S="$(calc "round($t1 - $t0, 2)")"
PASS_RPS="$(calc "round($DEVICES / ($t1 - $t0))")"
PASS_ERR="${R[errors]}"
OPEN_UPGRADES="$(psql -X -w -q -tA "$(db_url)" -c "SELECT count(DISTINCT device_id) FROM commands
    WHERE kind = 'upgrade' AND artifact_id = '$ART_ID' AND status IN ('queued', 'delivered', 'in_progress')")"
log "first pass: $DEVICES checks in ${PASS_S}s ($PASS_RPS/s), $PASS_ERR errors; $OPEN_UPGRADES devices with an open upgrade"
[ "$OPEN_UPGRADES" = "$DEVICES" ] || die "$OPEN_UPGRADES of $DEVICES devices have an open upgrade after the first pass"

log "update checks: steady state, ${CHECK_S}s at $CHECK_CONNS connections"
sleep "$PG_STATS_DELAY_S"
read -r pg_c0 pg_r0 pg_i0 <<<"$(pg_counters)"
log0="$(pg_log_size)"
BENCH_TOKENS="$TOKENS" BENCH_THREADS="$THREADS" \
    "$WRK" -t"$THREADS" -c"$CHECK_CONNS" -d"${CHECK_S}s" --timeout 10s --latency -s "$LUA" "$SYNC_URL" \
    >"$BENCH_RUN/wrk-steady.txt" 2>&1 &
wpid=$!
BENCH_PIDS[$wpid]="$WRK"
s0="$(cpu_ticks "$SYNC_PID")"; m0="$(machine_ticks)"; ts0="$(now_s)"
wait "$wpid" || { cat "$BENCH_RUN/wrk-steady.txt" >&2; die "wrk failed"; }
s1="$(cpu_ticks "$SYNC_PID")"; m1="$(machine_ticks)"; ts1="$(now_s)"
unset "BENCH_PIDS[$wpid]"
parse_wrk "$BENCH_RUN/wrk-steady.txt"
STEADY_N="${R[requests]}"
STEADY_RPS="$(calc "round(${R[requests]} * 1e6 / ${R[duration_us]})")"
STEADY_P50="$(calc "'%.2f' % (${R[p50_us]} / 1000)")"
STEADY_P99="$(calc "'%.2f' % (${R[p99_us]} / 1000)")"
STEADY_ERR="${R[errors]}"
STEADY_CORES="$(calc "round(($s1 - $s0) / $CLK_TCK / ($ts1 - $ts0), 2)")"
STEADY_MACHINE="$(calc "round(($m1 - $m0) / $CLK_TCK / ($ts1 - $ts0), 2)")"
sleep "$PG_STATS_DELAY_S"
read -r pg_c1 pg_r1 pg_i1 <<<"$(pg_counters)"
PG_ERRORS="$(pg_log_errors "$log0")"
per_check() { calc "'%.2f' % (($1) / $STEADY_N)"; }
STEADY_COMMITS="$(per_check "$pg_c1 - $pg_c0")"
STEADY_ROLLBACKS="$(per_check "$pg_r1 - $pg_r0")"
STEADY_INSERTS="$(per_check "$pg_i1 - $pg_i0")"
log "steady: $STEADY_RPS checks/s, p50 $STEADY_P50 ms, p99 $STEADY_P99 ms, $STEADY_ERR errors; per check $STEADY_COMMITS commits, $STEADY_ROLLBACKS rollbacks, $STEADY_INSERTS rows inserted"

# A device's own download from tend-sync, checked whole.
head_token="$(head -n 1 "$TOKENS" | cut -d' ' -f2)"
(umask 077; printf 'header = "Authorization: Bearer %s"\n' "$head_token" >"$BENCH_RUN/check.curl")
got="$(curl -fsS --max-time "$DOWNLOAD_MAX_S" -K "$BENCH_RUN/check.curl" "$SYNC_DOWNLOAD_URL" \
    | sha256sum | cut -d' ' -f1)" || die "downloading from tend-sync failed"
[ "$got" = "$SHA256" ] || die "tend-sync served other bytes (sha256 $got, not $SHA256)"

# --- memory per download -----------------------------------------------------------
log "memory: $SLOW downloads held mid-body at $SLOW_RATE_KB KiB/s each for ${SLOW_S}s"
sleep 2
SLOW_RSS0="$(status_kb "$SYNC_PID" VmRSS)"
SLOW_THREADS0="$(status_kb "$SYNC_PID" Threads)"
SLOW_FD0="$(fd_count "$SYNC_PID")"
refused0="$(metric "$SYNC_METRICS_URL" tend_sync_downloads_refused_total)"
rm -f "$BENCH_RUN/slow.ready"
"$PYTHON" "$BENCH_ROOT/deploy/bench/slow_readers.py" --url "$SYNC_DOWNLOAD_URL" --tokens "$TOKENS" \
    --count "$SLOW" --rate-kb "$SLOW_RATE_KB" --hold-s "$SLOW_S" --ready-file "$BENCH_RUN/slow.ready" \
    --timeout-s $((SLOW_S + 120)) >"$BENCH_RUN/slow.json" 2>"$BENCH_RUN/slow.err" &
readers_pid=$!
BENCH_PIDS[$readers_pid]="$PYTHON"
deadline=$((SECONDS + 120))
while [ ! -s "$BENCH_RUN/slow.ready" ] && alive "$readers_pid" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
[ -s "$BENCH_RUN/slow.ready" ] || { cat "$BENCH_RUN/slow.err" >&2; die "the slow downloads did not all start"; }
SLOW_OPEN_AT="$(now_s)"
SLOW_RSS=0 SLOW_FD=0 SLOW_THREADS=0 r=0
# Samples while they are held (the last second left for closing).
while [ "$(calc "int($(now_s) - $SLOW_OPEN_AT < $SLOW_S - 1)")" = 1 ] && alive "$readers_pid"; do
    r="$(status_kb "$SYNC_PID" VmRSS)"; [ "$r" -le "$SLOW_RSS" ] || SLOW_RSS="$r"
    f="$(fd_count "$SYNC_PID")"; [ "$f" -le "$SLOW_FD" ] || SLOW_FD="$f"
    # Threads too: tokio's blocking pool, which reads the files, grows
    # with the downloads (its threads' stacks are part of the RSS).
    f="$(status_kb "$SYNC_PID" Threads)"; [ "$f" -le "$SLOW_THREADS" ] || SLOW_THREADS="$f"
    sleep 1
done
SLOW_RSS_LAST="$r"
wait "$readers_pid" || { cat "$BENCH_RUN/slow.err" >&2; die "slow_readers.py failed"; }
unset "BENCH_PIDS[$readers_pid]"
SLOW_OK="$(jq -r .ok "$BENCH_RUN/slow.json")"
SLOW_FAILED="$(jq -r '.failed + .broken' "$BENCH_RUN/slow.json")"
SLOW_OPEN_S="$(jq -r .open_s "$BENCH_RUN/slow.json")"
SLOW_REFUSED=$(( $(metric "$SYNC_METRICS_URL" tend_sync_downloads_refused_total) - refused0 ))
sleep 3
SLOW_RSS_AFTER="$(status_kb "$SYNC_PID" VmRSS)"
[ "$SLOW_OK" -gt 0 ] || die "no slow download got its first bytes: $(cat "$BENCH_RUN/slow.json")"
SLOW_PER_KB="$(calc "round(($SLOW_RSS - $SLOW_RSS0) / $SLOW_OK, 1)")"
log "memory: VmRSS $SLOW_RSS0 kB idle, $SLOW_RSS kB with $SLOW_OK downloads open ($SLOW_FD fds, $SLOW_THREADS threads): $SLOW_PER_KB kB per download; $SLOW_FAILED failed, $SLOW_REFUSED refused"

# --- download throughput -------------------------------------------------------------
# download_point SERVER C: C curl processes, one device each, each
# downloading the whole artifact ROUNDS times over one keep-alive
# connection. Sets P[mibs] (all bytes / wall time), P[cores] (the server's
# CPU), P[machine] (the whole machine's: servers, curl, kernel and any other
# work, out of 2), P[bad] (transfers that were not 200 with every byte).
declare -A P=()
POINT=0
download_point() {
    local server="$1" c="$2" rounds url i r t0 t1 c0 c1 m0 m1 pids=() out bad
    rounds=$(( (MIN_MB + c * ARTIFACT_MB - 1) / (c * ARTIFACT_MB) ))
    url="$SYNC_DOWNLOAD_URL"; [ "$server" = nginx ] && url="$NGINX_URL"
    POINT=$((POINT + 1))
    out="$BENCH_RUN/dl-$POINT"
    mkdir -p "$out"
    # One curl config per device: its token stays off the command line.
    i=0
    while read -r _ token _ && [ "$i" -lt "$c" ]; do
        i=$((i + 1))
        { printf 'header = "Authorization: Bearer %s"\n' "$token"
          printf 'write-out = "%%{http_code} %%{size_download}\\n"\n'
          for ((r = 0; r < rounds; r++)); do printf 'url = "%s"\noutput = "/dev/null"\n' "$url"; done
        } >"$out/$i.curl"
    done <"$TOKENS"
    c0="$(server_ticks "$server")"; m0="$(machine_ticks)"; t0="$(now_s)"
    for ((i = 1; i <= c; i++)); do
        "$CURL" -sS --max-time "$DOWNLOAD_MAX_S" -K "$out/$i.curl" >"$out/$i.out" 2>"$out/$i.err" &
        pids+=("$!")
        BENCH_PIDS[$!]="$CURL"
    done
    for i in "${pids[@]}"; do wait "$i" || true; unset "BENCH_PIDS[$i]"; done
    t1="$(now_s)"; c1="$(server_ticks "$server")"; m1="$(machine_ticks)"
    bad="$(cat "$out"/*.out | awk -v s="$SIZE" '$1 != 200 || $2 != s { n++ } END { print n + 0 }')"
    bad=$((bad + c * rounds - $(cat "$out"/*.out | wc -l)))
    P=([mibs]="$(calc "round($c * $rounds * $SIZE / 1048576 / ($t1 - $t0))")"
       [cores]="$(calc "round(($c1 - $c0) / $CLK_TCK / ($t1 - $t0), 2)")"
       [machine]="$(calc "round(($m1 - $m0) / $CLK_TCK / ($t1 - $t0), 2)")"
       [rounds]="$rounds" [secs]="$(calc "round($t1 - $t0, 1)")" [bad]="$bad")
    log "$server, $c at once × $rounds: ${P[mibs]} MiB/s in ${P[secs]}s, server ${P[cores]} cores (machine ${P[machine]}), $bad bad transfers"
    rm -rf "$out"
}

declare -A BEST=() CORES=() BAD=() ROUNDS=()
TRIAL_ROWS=""
for ((trial = 1; trial <= TRIALS; trial++)); do
    order=(tend-sync nginx)
    [ $((trial % 2)) = 1 ] || order=(nginx tend-sync)
    for c in "${CONCURRENCY[@]}"; do
        for server in "${order[@]}"; do
            download_point "$server" "$c"
            k="$server/$c"
            TRIAL_ROWS+="
| $trial | $c | $server | ${P[mibs]} | ${P[cores]} | ${P[machine]} |"
            BAD[$k]=$(( ${BAD[$k]:-0} + P[bad] ))
            ROUNDS[$c]="${P[rounds]}"
            if [ "${P[mibs]}" -gt "${BEST[$k]:-0}" ]; then BEST[$k]="${P[mibs]}"; CORES[$k]="${P[cores]}"; fi
        done
    done
done
DL_AGE_S=$((SECONDS - TOKENS_AT))

# --- a large upload ----------------------------------------------------------------
log "upload: ${UPLOAD_MB} MiB through the platform"
admin_login
BIG="$(api POST /api/v1/artifacts -H 'Content-Type: application/json' \
    -d '{"component":"os","version":"2.0.0","device_types":["bench"],"filename":"os-2.0.0.img"}')" \
    || die "creating the large artifact failed"
BIG_ID="$(jq -r .id <<<"$BIG")"
BIG_SIZE=$((UPLOAD_MB * 1048576))
# Sparse: no disk or page cache spent on the source; the platform still
# reads, hashes and writes every byte.
truncate -s "$BIG_SIZE" "$DATA/os.img"
sleep 1
UP_RSS0="$(status_kb "$PLATFORM_PID" VmRSS)"
# Resets VmHWM, so that it is this upload's peak (root only).
echo 5 >"/proc/$PLATFORM_PID/clear_refs" 2>/dev/null || true
t0="$(now_s)"
"$CURL" -sS --max-time "$UPLOAD_MAX_S" -X PUT -H @"$BENCH_RUN/admin.header" -H 'Expect:' \
    -H 'Content-Type: application/octet-stream' -T "$DATA/os.img" -o "$BENCH_RUN/upload.json" \
    -w '%{http_code}' "$PLATFORM_URL/api/v1/artifacts/$BIG_ID/content" >"$BENCH_RUN/upload.code" 2>"$BENCH_RUN/upload.err" &
upid=$!
BENCH_PIDS[$upid]="$CURL"
UP_RSS=0
while alive "$upid"; do
    r="$(status_kb "$PLATFORM_PID" VmRSS)"; [ "$r" -le "$UP_RSS" ] || UP_RSS="$r"
    sleep 0.2
done
wait "$upid" || true
unset "BENCH_PIDS[$upid]"
t1="$(now_s)"
UP_HWM="$(status_kb "$PLATFORM_PID" VmHWM)"
[ "$(cat "$BENCH_RUN/upload.code")" = 200 ] \
    || die "the upload answered $(cat "$BENCH_RUN/upload.code"): $(cat "$BENCH_RUN/upload.json" "$BENCH_RUN/upload.err")"
[ "$(jq -r .size "$BENCH_RUN/upload.json")" = "$BIG_SIZE" ] || die "the platform stored another size: $(cat "$BENCH_RUN/upload.json")"
rm -f "$DATA/os.img"
UP_PEAK=$UP_RSS; [ "$UP_HWM" -le "$UP_PEAK" ] || UP_PEAK="$UP_HWM"
UP_MIBS="$(calc "round($BIG_SIZE / 1048576 / ($t1 - $t0))")"
UP_GROWTH_MB="$(calc "round(($UP_PEAK - $UP_RSS0) / 1024, 1)")"
api DELETE "/api/v1/artifacts/$BIG_ID" >/dev/null || log "WARNING: could not delete artifact $BIG_ID"
log "upload: $UP_MIBS MiB/s; platform VmRSS $UP_RSS0 kB before, peak $UP_PEAK kB: +$UP_GROWTH_MB MB"

# --- summary -------------------------------------------------------------------------
ratio() { calc "'%.2f' % (${BEST[tend-sync/$1]} / ${BEST[nginx/$1]})"; }
DL_TABLE="| concurrent devices | downloads each | tend-sync MiB/s (its CPU, cores) | nginx MiB/s (its CPU, cores) | ratio | goal ≥ 0.8 | bad transfers |
|---|---|---|---|---|---|---|"
for c in "${CONCURRENCY[@]}"; do
    r="$(ratio "$c")"
    met="no"; [ "$(calc "int($r >= 0.8)")" = 1 ] && met="yes"
    DL_TABLE+="
| $c | ${ROUNDS[$c]} × $ARTIFACT_MB MiB | ${BEST[tend-sync/$c]} (${CORES[tend-sync/$c]}) | ${BEST[nginx/$c]} (${CORES[nginx/$c]}) | **$r** | $met | $((BAD[tend-sync/$c] + BAD[nginx/$c])) |"
done
goal() { if [ "$(calc "int($1)")" = 1 ]; then echo "met"; else echo "**missed**"; fi; }

SUMMARY="$(cat <<EOF
## Artifacts: downloads, upload, update checks

$(machine_md)
A shared 2-core machine: other engineers' builds and tests ran on it too
(CPU in use by other work and the idle stack before measuring: $BACKGROUND_CORES cores).
Servers, clients, PostgreSQL, Redis and RabbitMQ share the same two cores over loopback.

**Command**: \`BENCH_ARTIFACT_MB=$ARTIFACT_MB BENCH_DEVICES=$DEVICES BENCH_SLOW_DOWNLOADS=$SLOW BENCH_UPLOAD_MB=$UPLOAD_MB deploy/bench/artifacts.sh\`
(defaults 256, 10000, 1000 and 2048; the artifact store is a directory, \`TEND_ARTIFACT_STORE=file://…\`).

### Download throughput, tend-sync against nginx

One ${ARTIFACT_MB} MiB artifact, stored once by the platform; nginx $("$NGINX" -v 2>&1 | cut -d/ -f2) (Debian, \`sendfile on\`,
as many workers as cores) serves the very file tend-sync reads, from the same disk (both from the
page cache). curl $(curl --version | head -n 1 | cut -d' ' -f2), one process per device with its own token,
whole downloads over one keep-alive connection, every transfer checked (200, every byte); the
bytes were checked against the artifact's SHA-256 once per server. MiB/s is all bytes over the
wall time of the point; best of $TRIALS alternating trials per server.

$DL_TABLE

Every point (CPU in cores: the server's, and the whole machine's out of 2):

| trial | devices | server | MiB/s | server CPU | machine CPU |
|---|---|---|---|---|---|$TRIAL_ROWS

### tend-sync memory per download

| tend-sync | open downloads | VmRSS |
|---|---|---|
| before | 0 ($SLOW_FD0 fds, $SLOW_THREADS0 threads) | $SLOW_RSS0 kB |
| $SLOW downloads, each reading ${SLOW_RATE_KB} KiB/s, held ${SLOW_S} s mid-body (peak of 1 s samples) | $SLOW_OK ($SLOW_FD fds, $SLOW_THREADS threads; $SLOW_FAILED failed, $SLOW_REFUSED refused) | $SLOW_RSS kB (last sample $SLOW_RSS_LAST kB) |
| 3 s after they were cut | 0 | $SLOW_RSS_AFTER kB |

**Memory per download: $SLOW_PER_KB kB** (goal: under 64 KB, $(goal "$SLOW_PER_KB < 64")). All $SLOW opened in $SLOW_OPEN_S s.

### Upload through the platform

| artifact | upload | platform VmRSS before | peak during (VmRSS every 0.2 s, VmHWM) | growth | goal < 64 MB |
|---|---|---|---|---|---|
| $UPLOAD_MB MiB (sparse file, curl -T) | $UP_MIBS MiB/s | $UP_RSS0 kB | $UP_PEAK kB | **$UP_GROWTH_MB MB** | $(goal "$UP_GROWTH_MB < 64") |

The ${ARTIFACT_MB} MiB artifact itself uploaded at $SMALL_UPLOAD_MIBS MiB/s (random bytes, fsync'd).

### Update checks, $DEVICES devices

wrk with \`deploy/bench/update_check.lua\`, $CHECK_CONNS connections, every request another device,
body \`{"components":{"app":"1.0.0"}}\`, "app" 2.0.0 released for their type.

| phase | checks | checks/s | p50 / p99 ms | errors | per check: commits / rollbacks / rows inserted |
|---|---|---|---|---|---|
| first check of each device (queues its upgrade) | $DEVICES in $PASS_S s | **$PASS_RPS** | n/a | $PASS_ERR | an upgrade and its outbox event queued |
| steady: the upgrade is already open (${CHECK_S} s, tend-sync at $STEADY_CORES cores, machine at $STEADY_MACHINE) | $STEADY_N | **$STEADY_RPS** | $STEADY_P50 / $STEADY_P99 | $STEADY_ERR | $STEADY_COMMITS / $STEADY_ROLLBACKS / $STEADY_INSERTS |

A steady check finds the open upgrade in the read it makes anyway and writes nothing (the
rollbacks and rows inserted above); PostgreSQL logged $PG_ERRORS unique-violation errors for
this database during the steady window.
EOF
)"
REPORT="$BENCH_OUT/artifacts-$(date +%Y%m%d-%H%M%S).md"
printf '%s\n' "$SUMMARY" >"$REPORT"
printf '\n%s\n\n' "$SUMMARY"
log "written to $REPORT (device tokens were $DL_AGE_S s old at the last download)"
BENCH_FAILED=0
