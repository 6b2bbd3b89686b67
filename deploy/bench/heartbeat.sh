#!/usr/bin/env bash
# Heartbeat benchmark of tend-sync against a bare actix-web endpoint, in one
# run on this machine, loopback only:
#
#   1. backing services (deploy/local/backing-services.sh), release build of
#      tend-platform, tend-sync, tend-monitor and bare_actix
#      (tests/src/bin/bare_actix.rs);
#   2. a scratch stack: database tend_bench_<tag>, instance bench-<tag>,
#      TEND_HEARTBEAT_S=30, TEND_LOG=warn, fresh loopback ports;
#   3. BENCH_DEVICES devices provisioned through the platform, and a device
#      token for each (provision.py);
#   4. SQL per heartbeat, from PostgreSQL's own counters (pg_stat_database of
#      the scratch database): an idle window first (tend-sync polls the
#      revocation list twice a second and the monitor sweeps: background
#      work to subtract), then a heartbeat-only window of the same length;
#   5. tend-sync's memory per connected device: VmRSS idle, then with
#      BENCH_MEM_CONNS keep-alive connections held open by wrk, each sending
#      one heartbeat every BENCH_MEM_DELAY_MS;
#   6. throughput: wrk with heartbeat.lua (every request a different
#      device, body {"agent_version":"bench","boot_id":"…","uptime_s":1}) at
#      each of BENCH_CONNS connections for BENCH_DURATION_S, tend-sync and
#      bare_actix alternately at each point (so a disturbance from other
#      work on the machine hits both alike); requests/s, p50/p99 and the
#      ratio sync/bare at each server's saturation point (its best rate);
#   7. a markdown summary on stdout and in target/bench/heartbeat-<date>.md.
#
# Cleanup (always, see lib.sh): stops only the processes it started, drops
# the scratch database, deletes the Redis keys bench-<tag>:* and the
# RabbitMQ exchange bench-<tag>.sync. About 3.5 minutes plus the build.
#
# Why these settings (all overridable from the environment):
#   BENCH_DEVICES=300       tokens to rotate over: enough that consecutive
#                           requests are different devices (Redis keys,
#                           token checks), few enough to provision in seconds
#   BENCH_CONNS="32 128 512"  below, around and above saturation on 2 cores:
#                           32 already keeps both cores busy, 512 shows the
#                           latency cost of queueing
#   BENCH_DURATION_S=20     per point: long enough for stable rates and p99
#                           (each point is >1 million requests on bare actix),
#                           short enough for 6 points in 2 minutes
#   BENCH_WARMUP_S=3        one unrecorded run per server first
#   BENCH_THREADS=2         wrk threads: one per core. wrk competes with the
#                           server for the same 2 cores; so does Redis for
#                           tend-sync (part of its real cost)
#   BENCH_SQL_S=15          idle and heartbeat windows for the SQL count
#                           (PostgreSQL flushes backend statistics about once
#                           a second: 15 s keeps that edge effect small)
#   BENCH_SQL_CONNS=128
#   BENCH_MEM_CONNS=5000    open connections for the memory figure (the
#                           process limit here is ~20,000 files; the fleet
#                           simulator covers larger fleets)
#   BENCH_MEM_DELAY_MS=2000 one heartbeat per connection every 2 s: the
#                           connections stay alive (actix closes idle ones
#                           after 5 s) and mostly idle, like devices
#   BENCH_MEM_S=15
#   BENCH_SERVER_CPUS, BENCH_WRK_CPUS  taskset CPU lists; default unpinned.
#     Pinning wrk to core 0 and the server to core 1 was tried on this
#     2-core machine: one wrk thread then tops out near 70,000 requests/s
#     while bare actix-web uses under half of its core, so wrk, not the
#     server, sets the bare figure and the ratio looks better than it is.
#     Unpinned, both servers get the same 2 cores and the same wrk, and
#     actix starts one worker per core for both (it follows the affinity
#     mask, so pinning, if chosen, also applies alike to both).
#   BENCH_QUIET_WAIT_S=120  before measuring, wait up to this long for other
#   BENCH_QUIET_CORES=0.3   work on the machine to use at most this much CPU
#                           (the "other" column of the table shows what was
#                           left during each point)
#   BENCH_NO_BUILD=1        measure target/release as it is
set -euo pipefail

# shellcheck source=deploy/bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DEVICES="${BENCH_DEVICES:-300}"
read -r -a CONNS <<<"${BENCH_CONNS:-32 128 512}"
DURATION_S="${BENCH_DURATION_S:-20}"
WARMUP_S="${BENCH_WARMUP_S:-3}"
THREADS="${BENCH_THREADS:-2}"
SQL_S="${BENCH_SQL_S:-15}"
SQL_CONNS="${BENCH_SQL_CONNS:-128}"
MEM_CONNS="${BENCH_MEM_CONNS:-5000}"
MEM_DELAY_MS="${BENCH_MEM_DELAY_MS:-2000}"
MEM_S="${BENCH_MEM_S:-15}"
QUIET_WAIT_S="${BENCH_QUIET_WAIT_S:-120}"
QUIET_CORES="${BENCH_QUIET_CORES:-0.3}"
LUA="$BENCH_ROOT/deploy/bench/heartbeat.lua"

case "${1:-}" in
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    "") ;;
    *) echo "usage: $0 [--help]   (settings come from the environment)" >&2; exit 2 ;;
esac

bench_init heartbeat
need curl python3 psql redis-cli cargo taskset
ensure_wrk
ensure_backing
build_release tend-platform:tend-platform tend-sync:tend-sync tend-monitor:tend-monitor tend-tests:bare_actix

WRK="$(command -v wrk)"
WRK_PREFIX=()
mapfile -t WRK_PREFIX < <(pin "${BENCH_WRK_CPUS:-}")
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" -gt $((MEM_CONNS + 200)) ] \
    || die "open-file limit $(ulimit -n) is too low for BENCH_MEM_CONNS=$MEM_CONNS"

# machine_busy_cores SECONDS: CPU in use on the whole machine (in cores).
machine_busy_cores() {
    local a b
    a="$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $5 + $6 }' /proc/stat)"
    sleep "$1"
    b="$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $5 + $6 }' /proc/stat)"
    calc "round(($(cut -d' ' -f1 <<<"$b") - $(cut -d' ' -f1 <<<"$a")) / $CLK_TCK / $1, 2)"
}
start_stack 30
start_service bare_actix "$BENCH_BIN/bare_actix" "${BENCH_SERVER_CPUS:-}"
BARE_PID="$STARTED_PID" BARE_URL="$STARTED_URL"
TOKENS="$BENCH_RUN/tokens"
provision "$DEVICES" "$TOKENS"

# Other work on the machine (a build, a test run) distorts every figure:
# wait, bounded, until it is nearly idle, and report what was left.
wait_quiet
log "CPU in use before measuring (other work and the idle stack): $BACKGROUND_CORES cores"

REDIS_PID="$(redis-cli -u "$BENCH_REDIS" info server 2>/dev/null | tr -d '\r' | awk -F: '$1 == "process_id" { print $2 }')"
[ -n "$REDIS_PID" ] && [ -r "/proc/$REDIS_PID/stat" ] || REDIS_PID=""

# run_wrk URL CONNS SECONDS [DELAY_MS]: one wrk run; sets the associative
# array R from its BENCH_RESULT line (plus rps) and CPU figures in cores:
# R[server_cores] (of SERVER_PID), R[redis_cores], R[machine_cores].
declare -A R=()
WRK_N=0
SERVER_PID=""
run_wrk() {
    local url="$1" conns="$2" secs="$3" delay="${4:-0}" out kv line t0 t1 s0 s1 r0 r1 m0 m1 q0 q1 wpid
    WRK_N=$((WRK_N + 1))
    out="$BENCH_RUN/wrk-$WRK_N.txt"
    read -r m0 q0 <<<"$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $8 }' /proc/stat)"
    s0="$(cpu_ticks "$SERVER_PID")"; r0="$( [ -z "$REDIS_PID" ] || cpu_ticks "$REDIS_PID")"
    t0="$(now_s)"
    times >"$BENCH_RUN/times-0"   # in this shell: its waited-for children's CPU
    # In the background and waited for, so that a SIGTERM to this script
    # runs its cleanup at once (which stops wrk too).
    BENCH_TOKENS="$TOKENS" BENCH_DELAY_MS="$delay" "${WRK_PREFIX[@]}" \
        wrk -t"$THREADS" -c"$conns" -d"${secs}s" --timeout 10s --latency -s "$LUA" "$url" >"$out" 2>&1 &
    wpid=$!
    BENCH_PIDS[$wpid]="$WRK"
    wait "$wpid" || { cat "$out" >&2; die "wrk failed"; }
    unset "BENCH_PIDS[$wpid]"
    times >"$BENCH_RUN/times-1"
    t1="$(now_s)"
    s1="$(cpu_ticks "$SERVER_PID")"; r1="$( [ -z "$REDIS_PID" ] || cpu_ticks "$REDIS_PID")"
    read -r m1 q1 <<<"$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $8 }' /proc/stat)"
    line="$(grep '^BENCH_RESULT ' "$out")" || { cat "$out" >&2; die "no result from wrk"; }
    R=()
    for kv in ${line#BENCH_RESULT }; do R[${kv%%=*}]="${kv#*=}"; done
    R[rps]="$(calc "round(${R[requests]} * 1e6 / ${R[duration_us]})")"
    R[errors]=$((R[err_connect] + R[err_read] + R[err_write] + R[err_status] + R[err_timeout]))
    R[server_cores]="$(calc "round(($s1 - $s0) / $CLK_TCK / ($t1 - $t0), 2)")"
    R[redis_cores]="n/a"
    if [ -n "$REDIS_PID" ]; then
        R[redis_cores]="$(calc "round(($r1 - $r0) / $CLK_TCK / ($t1 - $t0), 2)")"
    fi
    R[machine_cores]="$(calc "round(($m1 - $m0) / $CLK_TCK / ($t1 - $t0), 2)")"
    R[wrk_cores]="$(calc "round(($(children_cpu_s "$BENCH_RUN/times-1") - $(children_cpu_s "$BENCH_RUN/times-0")) / ($t1 - $t0), 2)")"
    R[softirq_cores]="$(calc "round(($q1 - $q0) / $CLK_TCK / ($t1 - $t0), 2)")"
    R[other_cores]="$(calc "round(max(0, ${R[machine_cores]} - ${R[server_cores]} - ${R[redis_cores]/n\/a/0} - ${R[wrk_cores]} - ${R[softirq_cores]}), 2)")"
}

# children_cpu_s FILE: user + system seconds of the shell's children, from
# the output of the \`times\` builtin ("0m1.250s 0m0.310s" on its 2nd line).
children_cpu_s() {
    awk 'NR == 2 { t = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] } print t }' "$1"
}

# ms MICROSECONDS: milliseconds with 2 decimals.
ms() { calc "'%.2f' % ($1 / 1000)"; }

# pg_counters: "xacts tup_returned tup_fetched rows_written" of the scratch DB.
pg_counters() {
    psql_admin -F ' ' -c "SELECT xact_commit + xact_rollback, tup_returned, tup_fetched,
        tup_inserted + tup_updated + tup_deleted FROM pg_stat_database WHERE datname = '$BENCH_DB'"
}

# --- SQL per heartbeat ---------------------------------------------------------
# Both windows are measured the same way (counters right before and right
# after), so PostgreSQL's delayed statistics flush affects both alike.
log "SQL: idle window of ${SQL_S}s"
# Let provisioning's own statistics reach pg_stat_database first: an idle
# backend reports its counters up to 10 s late (PostgreSQL 15+).
sleep 12
hb0="$(metric "$SYNC_METRICS_URL" tend_heartbeats_total)"
read -r ix0 ir0 if0 iw0 <<<"$(pg_counters)"; it0="$(now_s)"
sleep "$SQL_S"
read -r ix1 ir1 if1 iw1 <<<"$(pg_counters)"; it1="$(now_s)"
hb1="$(metric "$SYNC_METRICS_URL" tend_heartbeats_total)"
IDLE_RSS="$(status_kb "$SYNC_PID" VmRSS)"
IDLE_FDS="$(fd_count "$SYNC_PID")"
[ "$hb1" = "$hb0" ] || log "WARNING: $((hb1 - hb0)) heartbeats during the idle window"

log "SQL: heartbeat window of ${SQL_S}s at $SQL_CONNS connections"
SERVER_PID="$SYNC_PID"
read -r lx0 lr0 lf0 lw0 <<<"$(pg_counters)"; lt0="$(now_s)"
hb0="$(metric "$SYNC_METRICS_URL" tend_heartbeats_total)"
run_wrk "$SYNC_URL" "$SQL_CONNS" "$SQL_S"
hb1="$(metric "$SYNC_METRICS_URL" tend_heartbeats_total)"
read -r lx1 lr1 lf1 lw1 <<<"$(pg_counters)"; lt1="$(now_s)"
SQL_HB=$((hb1 - hb0))
SQL_WRK_REQ="${R[requests]}"
[ "$SQL_HB" -gt 0 ] || die "tend-sync counted no heartbeats (tend_heartbeats_total); wrk: ${R[requests]} requests, ${R[err_status]} non-2xx"
# Idle counts are scaled to the heartbeat window's exact length.
sql_row() { # NAME IDLE_DELTA LOAD_DELTA
    local scaled per
    scaled="$(calc "round($2 * ($lt1 - $lt0) / ($it1 - $it0), 1)")"
    per="$(calc "'%.5f' % (lambda x: 0.0 if abs(x) < 5e-6 else x)(($3 - $scaled) / $SQL_HB)")"
    printf '| %s | %s | %s | %s |\n' "$1" "$2" "$3" "$per"
}
SQL_TABLE="$(
    printf '| counter (scratch database) | idle %ss | %ss of heartbeats | per heartbeat, idle subtracted |\n' "$SQL_S" "$SQL_S"
    printf '|---|---|---|---|\n'
    sql_row 'transactions (xact_commit + xact_rollback)' $((ix1 - ix0)) $((lx1 - lx0))
    sql_row 'rows returned (tup_returned)' $((ir1 - ir0)) $((lr1 - lr0))
    sql_row 'rows fetched (tup_fetched)' $((if1 - if0)) $((lf1 - lf0))
    sql_row 'rows written (tup_inserted + updated + deleted)' $((iw1 - iw0)) $((lw1 - lw0))
)"
SQL_PER_HB="$(calc "'%.5f' % (lambda x: 0.0 if abs(x) < 5e-6 else x)(($((lx1 - lx0)) - $((ix1 - ix0)) * ($lt1 - $lt0) / ($it1 - $it0)) / $SQL_HB)")"
log "SQL: $SQL_HB heartbeats, $SQL_PER_HB transactions per heartbeat"

# --- memory per connected device -------------------------------------------------
log "memory: $MEM_CONNS keep-alive connections, one heartbeat each per ${MEM_DELAY_MS} ms, ${MEM_S}s"
(
    # Sample while wrk holds the connections, near the end of its run.
    sleep "$(calc "max(1, $MEM_S - 3)")"
    printf '%s %s %s\n' "$(status_kb "$SYNC_PID" VmRSS)" "$(fd_count "$SYNC_PID")" \
        "$(status_kb "$SYNC_PID" VmHWM)" >"$BENCH_RUN/mem-sample"
) &
sampler=$!
BENCH_PIDS[$sampler]="$BASH"
run_wrk "$SYNC_URL" "$MEM_CONNS" "$MEM_S" "$MEM_DELAY_MS"
wait "$sampler" || true
unset "BENCH_PIDS[$sampler]"
read -r MEM_RSS MEM_FDS MEM_HWM <"$BENCH_RUN/mem-sample"
MEM_RPS="${R[rps]}" MEM_ERR="${R[errors]}" MEM_P99="${R[p99_us]}"
sleep 2
AFTER_RSS="$(status_kb "$SYNC_PID" VmRSS)"
MEM_OPEN=$((MEM_FDS - IDLE_FDS))
MEM_PER_CONN="$(calc "'%.1f' % (($MEM_RSS - $IDLE_RSS) / max(1, $MEM_OPEN))")"
log "memory: idle ${IDLE_RSS} kB, ${MEM_RSS} kB with $MEM_OPEN connections: $MEM_PER_CONN kB each"

# --- throughput -------------------------------------------------------------------
top="${CONNS[${#CONNS[@]}-1]}"
for name in sync bare; do
    if [ "$name" = sync ]; then SERVER_PID="$SYNC_PID" url="$SYNC_URL"; else SERVER_PID="$BARE_PID" url="$BARE_URL"; fi
    log "warm-up: $name, $top connections, ${WARMUP_S}s"
    run_wrk "$url" "$top" "$WARMUP_S"
done
declare -A RPS=() ROW=()
BEST_SYNC=0 BEST_SYNC_C="" BEST_BARE=0 BEST_BARE_C=""
for c in "${CONNS[@]}"; do
    for name in sync bare; do
        if [ "$name" = sync ]; then SERVER_PID="$SYNC_PID" url="$SYNC_URL"; else SERVER_PID="$BARE_PID" url="$BARE_URL"; fi
        run_wrk "$url" "$c" "$DURATION_S"
        RPS[$name,$c]="${R[rps]}"
        ROW[$name,$c]="$(printf '%s | %s | %s | %s | %s | %s / %s / %s / %s / %s' "$c" "${R[rps]}" \
            "$(ms "${R[p50_us]}")" "$(ms "${R[p99_us]}")" "${R[errors]}" \
            "${R[server_cores]}" "${R[redis_cores]}" "${R[wrk_cores]}" "${R[softirq_cores]}" "${R[other_cores]}")"
        log "$name c=$c: ${R[rps]} req/s, p50 $(ms "${R[p50_us]}") ms, p99 $(ms "${R[p99_us]}") ms, ${R[errors]} errors"
        if [ "$name" = sync ] && [ "${R[rps]}" -gt "$BEST_SYNC" ]; then BEST_SYNC="${R[rps]}" BEST_SYNC_C="$c"; fi
        if [ "$name" = bare ] && [ "${R[rps]}" -gt "$BEST_BARE" ]; then BEST_BARE="${R[rps]}" BEST_BARE_C="$c"; fi
    done
done
RATIO="$(calc "'%.2f' % ($BEST_SYNC / $BEST_BARE)")"

# --- summary ------------------------------------------------------------------------
WRK_VERSION="$(wrk --version 2>&1 | head -n 1 | awk '{ print $2 }' || true)"
STAMP="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
SETTINGS="BENCH_DEVICES=$DEVICES BENCH_CONNS=\"${CONNS[*]}\" BENCH_DURATION_S=$DURATION_S BENCH_THREADS=$THREADS BENCH_SQL_S=$SQL_S BENCH_MEM_CONNS=$MEM_CONNS BENCH_MEM_DELAY_MS=$MEM_DELAY_MS"
PINNING="unpinned (wrk, servers, Redis share both cores)"
if [ -n "${BENCH_SERVER_CPUS:-}${BENCH_WRK_CPUS:-}" ]; then
    PINNING="servers on CPUs ${BENCH_SERVER_CPUS:-any}, wrk on CPUs ${BENCH_WRK_CPUS:-any} (taskset)"
fi
ratio_at() { calc "'%.2f' % (${RPS[sync,$1]} / ${RPS[bare,$1]})"; }
SUMMARY="$(
cat <<EOF
## Heartbeats: tend-sync against bare actix-web ($STAMP)

$(machine_md)

**Command**: \`deploy/bench/heartbeat.sh\` (settings: $SETTINGS).
Load generator: wrk $WRK_VERSION, \`-t$THREADS\`, $PINNING, on the same machine as
the servers, so it takes a share of the 2 cores. \`deploy/bench/heartbeat.lua\` rotates over
$DEVICES provisioned devices: every request is \`POST /device/v1/heartbeat\` of another device,
with its device token and \`{"agent_version":"bench","boot_id":"…","uptime_s":1}\`.
bare_actix (\`tests/src/bin/bare_actix.rs\`) reads and parses the same body and answers the same
39 bytes, with the same actix-web and the same number of workers, without token check, Redis or
metrics. ${DURATION_S} s per point, servers alternating at each point, after a ${WARMUP_S} s warm-up each.
CPU in use just before measuring (other work and the idle stack): $BACKGROUND_CORES cores.
CPU columns, in cores over each point: the server process, Redis, wrk, the kernel's softirq time
(mostly loopback TCP, charged to no process), and "other": the rest of the machine's busy time
(the platform, the monitor, PostgreSQL, other work on the machine).

| server | connections | requests/s | p50 ms | p99 ms | errors | CPU cores: server / Redis / wrk / softirq / other |
|---|---|---|---|---|---|---|
$(for c in "${CONNS[@]}"; do printf '| tend-sync | %s |\n| bare actix-web | %s |\n' "${ROW[sync,$c]}" "${ROW[bare,$c]}"; done)

**Saturation**: tend-sync $BEST_SYNC heartbeats/s (at $BEST_SYNC_C connections), bare actix-web
$BEST_BARE requests/s (at $BEST_BARE_C connections): **ratio sync/bare = $RATIO**.
At equal connections: $(for c in "${CONNS[@]}"; do printf '%s: %s; ' "$c" "$(ratio_at "$c")"; done | sed 's/; $//').

### SQL statements per heartbeat

$SQL_HB heartbeats (tend-sync's \`tend_heartbeats_total\`; wrk sent $SQL_WRK_REQ) in ${SQL_S} s at $SQL_CONNS
connections, against an idle window of the same length just before (tend-sync's revocation
poll, twice a second, and the monitor's sweeps). Counters of the scratch database in
\`pg_stat_database\`, so every service's SQL counts, including presence written back by the monitor.
A transaction is at least one statement (each statement outside an explicit transaction is one).

$SQL_TABLE

**SQL per heartbeat: $SQL_PER_HB transactions.**

### tend-sync memory per connected device

| tend-sync | open connections | VmRSS |
|---|---|---|
| idle (after provisioning) | 0 | $IDLE_RSS kB |
| wrk holding $MEM_CONNS keep-alive connections, one heartbeat each per $MEM_DELAY_MS ms ($MEM_RPS/s, p99 $(ms "$MEM_P99") ms, $MEM_ERR errors) | $MEM_OPEN | $MEM_RSS kB |
| 2 s after they closed | 0 | $AFTER_RSS kB |

**Memory per connected device: $MEM_PER_CONN kB** ((VmRSS with connections − idle) / connections
counted in /proc/PID/fd). Peak VmHWM: $MEM_HWM kB.
EOF
)"
REPORT="$BENCH_OUT/heartbeat-$(date +%Y%m%d-%H%M%S).md"
printf '%s\n' "$SUMMARY" >"$REPORT"
printf '\n%s\n\n' "$SUMMARY"
log "written to $REPORT"
BENCH_FAILED=0
