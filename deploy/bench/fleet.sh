#!/usr/bin/env bash
# Runs tend-fleet (tests/src/bin/fleet.rs), the fleet simulator, against a
# scratch tend stack: N simulated devices provisioned in bulk, heartbeating
# over real HTTP keep-alive connections, fetching and reporting the commands
# queued meanwhile. One run per device count and presence refresh period;
# prints a markdown table (heartbeats/s, heartbeat latency, queued→delivered
# latency, errors, tend-sync's memory, PostgreSQL rows written per
# heartbeat) and writes it to target/bench/fleet-<date>.md.
#
# Settings (environment):
#   BENCH_FLEET_SIZES     device counts to run, one stack each   (1000 10000 100000)
#   BENCH_HEARTBEAT_S     heartbeat interval                      (30)
#   BENCH_DURATION_S      measured window per run                 (60)
#   BENCH_COMMANDS_PER_S  commands queued per second               (5)
#   BENCH_LONG_POLL       1: devices long-poll (one connection each; at most
#                         about 18000 per process here)           (0)
#   BENCH_CONNECTIONS     keep-alive connections when polling     (tend-fleet's default)
#   BENCH_PRESENCE_REFRESH_S  TEND_PRESENCE_REFRESH_S values to run, one
#                         stack each; 0 writes every heartbeat to PostgreSQL,
#                         as tend did before presence moved to Redis (3600)
#   BENCH_NO_BUILD=1      measure target/release as it is
# Loopback only; each run is bounded by its duration plus tend-fleet's own
# cap, and everything it starts is stopped and removed afterwards.
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SIZES="${BENCH_FLEET_SIZES:-1000 10000 100000}"
HEARTBEAT_S="${BENCH_HEARTBEAT_S:-30}"
DURATION_S="${BENCH_DURATION_S:-60}"
COMMANDS_PER_S="${BENCH_COMMANDS_PER_S:-5}"
LONG_POLL="${BENCH_LONG_POLL:-0}"
REFRESHES="${BENCH_PRESENCE_REFRESH_S:-3600}"
ROWS_SETTLE_S=10

case "${1:-}" in
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    "") ;;
    *) echo "usage: $0 [--help]   (settings come from the environment)" >&2; exit 2 ;;
esac

bench_init fleet
need curl python3 psql redis-cli cargo
ensure_backing
build_release tend-platform:tend-platform tend-sync:tend-sync tend-monitor:tend-monitor tend-tests:tend-fleet

mode="polling"
[ "$LONG_POLL" = 1 ] && mode="long-poll"

# pg_rows: rows inserted, updated and deleted so far in the scratch database.
pg_rows() {
    psql_admin -c "SELECT tup_inserted + tup_updated + tup_deleted FROM pg_stat_database
        WHERE datname = '$BENCH_DB'"
}
rows=()
for n in $SIZES; do
for refresh in $REFRESHES; do
    BENCH_PRESENCE_REFRESH="$refresh"
    BENCH_DB="tend_bench_${BENCH_TAG}_${n}_$refresh"
    BENCH_INSTANCE="bench-$BENCH_TAG-$n-$refresh"
    BENCH_DB_CREATED=0
    start_stack "$HEARTBEAT_S"
    rss_idle="$(status_kb "$SYNC_PID" VmRSS)"
    args=(--platform "$PLATFORM_URL" --sync "$SYNC_URL" --username "$BENCH_ADMIN_USER"
          --devices "$n" --interval-s "$HEARTBEAT_S" --duration-s "$DURATION_S"
          --commands-per-s "$COMMANDS_PER_S" --json)
    [ "$LONG_POLL" = 1 ] && args+=(--long-poll)
    [ -n "${BENCH_CONNECTIONS:-}" ] && args+=(--connections "$BENCH_CONNECTIONS")
    log "tend-fleet: $n devices, $mode, every ${HEARTBEAT_S}s, ${DURATION_S}s, presence refresh ${refresh}s"
    # PostgreSQL rows written (inserted, updated, deleted) in the scratch
    # database, all of them and those the monitor's presence step wrote,
    # over the measured window less its first ROWS_SETTLE_S: the window
    # starts one interval after the devices do (tend-fleet's warm-up), and
    # the last first heartbeats (interval ± 10 %) are written a sweep later.
    ( until grep -q "warming up" "$BENCH_RUN/fleet-$n-$refresh.log" 2>/dev/null; do sleep 0.2; done
      sleep "$(( HEARTBEAT_S + ROWS_SETTLE_S ))"
      pg_rows >"$BENCH_RUN/rows-start-$n-$refresh"
      metric "$MONITOR_URL" tend_presence_rows_written_total >"$BENCH_RUN/presence-start-$n-$refresh"
      sleep "$(( DURATION_S - ROWS_SETTLE_S ))"
      pg_rows >"$BENCH_RUN/rows-end-$n-$refresh"
      metric "$MONITOR_URL" tend_presence_rows_written_total >"$BENCH_RUN/presence-end-$n-$refresh" ) &
    rows_sampler=$!
    # tend-sync's resident memory at the end of the measured window, while
    # every simulated device is connected.
    ( sleep "$(( DURATION_S - 1 ))"; status_kb "$SYNC_PID" VmRSS >"$BENCH_RUN/rss-$n-$refresh"; fd_count "$SYNC_PID" >"$BENCH_RUN/fds-$n-$refresh" ) &
    sampler=$!
    TEND_FLEET_PASSWORD="$(cat "$BENCH_RUN/admin_password")" \
        "$BENCH_BIN/tend-fleet" "${args[@]}" >"$BENCH_RUN/fleet-$n-$refresh.json" 2>"$BENCH_RUN/fleet-$n-$refresh.log" \
        || { tail -n 20 "$BENCH_RUN/fleet-$n-$refresh.log" >&2; die "tend-fleet failed for $n devices"; }
    wait "$sampler" || true
    wait "$rows_sampler" || true
    written=$(( $(cat "$BENCH_RUN/rows-end-$n-$refresh" 2>/dev/null || echo 0) - $(cat "$BENCH_RUN/rows-start-$n-$refresh" 2>/dev/null || echo 0) ))
    presence=$(( $(cat "$BENCH_RUN/presence-end-$n-$refresh" 2>/dev/null || echo 0) - $(cat "$BENCH_RUN/presence-start-$n-$refresh" 2>/dev/null || echo 0) ))
    rss_busy="$(cat "$BENCH_RUN/rss-$n-$refresh" 2>/dev/null || echo 0)"
    fds="$(cat "$BENCH_RUN/fds-$n-$refresh" 2>/dev/null || echo 0)"
    rows+=("$(python3 - "$BENCH_RUN/fleet-$n-$refresh.json" "$n" "$rss_idle" "$rss_busy" "$fds" "$refresh" "$written" "$(( DURATION_S - ROWS_SETTLE_S ))" "$presence" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
n, idle, busy, fds = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
refresh, written, window, presence = int(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8]), int(sys.argv[9])
hb, cmd = r["heartbeats"], r["commands"]
lat, dl = hb["latency_ms"], cmd["delivery_ms"]
per_dev = (busy - idle) / n if busy else 0
def f(v): return f"{v:.1f}" if isinstance(v, float) else str(v)
beats = hb["per_s"] * window
per_beat = written / beats if beats else 0
presence_per_beat = presence / beats if beats else 0
print(f"| {n} | {refresh} s | {beats:.0f} | {written} ({per_beat:.4f}) | {presence} ({presence_per_beat:.4f}) | {r['connections']} | {r['provisioning']['per_s']:.0f} | {hb['per_s']:.0f} ({hb['offered_per_s']:.0f}) | "
      f"{f(lat['p50'])} / {f(lat['p99'])} | {cmd['queued']} / {cmd['delivered']} / {cmd['succeeded']} | "
      f"{f(dl['p50'])} / {f(dl['p99'])} / {f(dl['max'])} | {r['errors_total']} | {busy // 1024} MB ({per_dev:.1f} kB/device, {fds} fds) |")
PY
)")
    stop_pid "$SYNC_PID"; stop_pid "$MONITOR_PID"; stop_pid "$PLATFORM_PID"
    psql_admin -c "DROP DATABASE IF EXISTS $BENCH_DB WITH (FORCE)" >/dev/null || true
    BENCH_DB_CREATED=0
    redis-cli -u "$BENCH_REDIS" --scan --pattern "$BENCH_INSTANCE:*" | xargs -r redis-cli -u "$BENCH_REDIS" del >/dev/null
    delete_exchange "$BENCH_INSTANCE.sync" || true
done
done

report="$BENCH_OUT/fleet-$(date +%Y%m%d-%H%M%S).md"
{
    echo "## Fleet simulation: $mode, heartbeat every ${HEARTBEAT_S}s ($(date -u +%Y-%m-%dT%H:%MZ))"
    echo
    machine_md
    echo
    echo "**Command**: \`BENCH_FLEET_SIZES=\"$SIZES\" BENCH_PRESENCE_REFRESH_S=\"$REFRESHES\" BENCH_HEARTBEAT_S=$HEARTBEAT_S BENCH_DURATION_S=$DURATION_S BENCH_COMMANDS_PER_S=$COMMANDS_PER_S BENCH_LONG_POLL=$LONG_POLL deploy/bench/fleet.sh\`"
    echo
    echo "Rows: PostgreSQL rows inserted, updated and deleted in the scratch database (\`pg_stat_database\`) over the last $(( DURATION_S - ROWS_SETTLE_S )) s of the window, every service's (commands included), and those of them the monitor's presence step wrote (\`tend_presence_rows_written_total\`); per heartbeat answered in that time."
    echo
    echo "| devices | presence refresh | heartbeats | rows written (per heartbeat) | by presence (per heartbeat) | connections | provisioned/s | heartbeats/s (offered) | heartbeat ms p50 / p99 | commands queued / delivered / succeeded | queued→delivered ms p50 / p99 / max | errors | tend-sync RSS |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    printf '%s\n' "${rows[@]}"
} | tee "$report"
BENCH_FAILED=0
