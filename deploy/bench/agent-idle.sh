#!/usr/bin/env bash
# The idle cost of a real tend-agent: CPU time and memory of the release
# binary heartbeating every 30 s, with nothing to do, for 2 minutes.
#
#   1. backing services, release build of tend-platform, tend-sync,
#      tend-monitor and tend-agent;
#   2. a scratch stack as in heartbeat.sh (lib.sh: own database, instance,
#      ports; TEND_HEARTBEAT_S=30, TEND_LOG=warn for the services);
#   3. one device provisioned through the platform; a tend-agent for it with
#      its default log level (info, as on a device) and harmless actions
#      (/bin/true), its state and boot id in the run directory;
#   4. once the agent's first heartbeat arrived and BENCH_SETTLE_S passed,
#      a window of BENCH_IDLE_S: the agent's CPU time (utime + stime from
#      /proc/PID/stat, all threads, dead ones included) as % of one core,
#      its VmRSS sampled every 5 s, its VmHWM (peak since start), and the
#      heartbeats tend-sync counted;
#   5. a markdown summary on stdout and in target/bench/agent-idle-<date>.md.
# Cleanup as in heartbeat.sh (lib.sh). About 2.5 minutes plus the build.
#
# Why these settings (overridable from the environment):
#   BENCH_IDLE_S=120      four heartbeat intervals: the figure is the average
#                         over whole cycles of the agent's real idle loop
#   BENCH_HEARTBEAT_S=30  the default interval a server tells its devices
#   BENCH_SETTLE_S=5      startup (config, journal, token, first heartbeat)
#                         is reported apart, not mixed into the idle figure
#   BENCH_AGENT_LONG_POLL true|false: the agent's long_poll setting (default:
#                         the agent's own default, long-poll since it has one)
#   BENCH_NO_BUILD=1      measure target/release as it is
# CPU time is read in clock ticks (1/$(getconf CLK_TCK) s): over 120 s one
# tick is 0.008 % of a core, the resolution of that figure; the threads'
# schedstat (nanoseconds) gives the exact one beside it.
set -euo pipefail

# shellcheck source=deploy/bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

IDLE_S="${BENCH_IDLE_S:-120}"
HEARTBEAT_S="${BENCH_HEARTBEAT_S:-30}"
SETTLE_S="${BENCH_SETTLE_S:-5}"
SAMPLE_S=5
LONG_POLL="${BENCH_AGENT_LONG_POLL:-}"
case "$LONG_POLL" in ""|true|false) ;; *) echo "BENCH_AGENT_LONG_POLL must be true or false" >&2; exit 2 ;; esac

case "${1:-}" in
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    "") ;;
    *) echo "usage: $0 [--help]   (settings come from the environment)" >&2; exit 2 ;;
esac

bench_init agent-idle
need curl python3 psql redis-cli cargo
ensure_backing
build_release tend-platform:tend-platform tend-sync:tend-sync tend-monitor:tend-monitor tend-agent:tend-agent

start_stack "$HEARTBEAT_S"
provision 1 "$BENCH_RUN/tokens" "$BENCH_RUN/secrets"
read -r DEVICE_ID SECRET <"$BENCH_RUN/secrets"

AGENT_DIR="$BENCH_RUN/agent"
mkdir -p "$AGENT_DIR/state"
cat /proc/sys/kernel/random/uuid >"$AGENT_DIR/boot_id"
(umask 077; printf '%s' "$SECRET" >"$AGENT_DIR/secret")
cat >"$AGENT_DIR/agent.toml" <<EOF
# Written by deploy/bench/agent-idle.sh.
server_url = "$SYNC_URL"
device_id = "$DEVICE_ID"
device_secret_file = "$AGENT_DIR/secret"
state_dir = "$AGENT_DIR/state"
boot_id_file = "$AGENT_DIR/boot_id"
signing_keys = ["$BENCH_SIGNING_PUBLIC_KEY"]

[actions]
reboot = ["/bin/true"]
shutdown = ["/bin/true"]
EOF
if [ -n "$LONG_POLL" ]; then
    sed -i "/^boot_id_file/a long_poll = $LONG_POLL" "$AGENT_DIR/agent.toml"
fi

hb_start="$(metric "$SYNC_METRICS_URL" tend_heartbeats_total)"
env -i PATH="$PATH" HOME="${HOME:-/}" "$BENCH_BIN/tend-agent" --config "$AGENT_DIR/agent.toml" \
    </dev/null >>"$BENCH_RUN/tend-agent.log" 2>&1 &
AGENT_PID=$!
BENCH_PIDS[$AGENT_PID]="$BENCH_BIN/tend-agent"
AGENT_T0="$(now_s)"
log "tend-agent started (pid $AGENT_PID), waiting for its first heartbeat"
deadline=$((SECONDS + 30))
until [ "$(metric "$SYNC_METRICS_URL" tend_heartbeats_total)" -gt "$hb_start" ]; do
    alive "$AGENT_PID" || { tail -n 20 "$BENCH_RUN/tend-agent.log" >&2; die "tend-agent exited"; }
    [ "$SECONDS" -lt "$deadline" ] || { tail -n 20 "$BENCH_RUN/tend-agent.log" >&2; die "no heartbeat from tend-agent within 30 s"; }
    sleep 0.2
done
FIRST_HB_S="$(calc "round($(now_s) - $AGENT_T0, 2)")"
sleep "$SETTLE_S"

START_TICKS="$(cpu_ticks "$AGENT_PID")"
thread_ns "$AGENT_PID" >"$BENCH_RUN/ns-0"
START_HWM="$(status_kb "$AGENT_PID" VmHWM)"
START_RSS="$(status_kb "$AGENT_PID" VmRSS)"
START_S="$(calc "round($(now_s) - $AGENT_T0, 2)")"
hb0="$(metric "$SYNC_METRICS_URL" tend_heartbeats_total)"
log "idle window of ${IDLE_S}s (agent up ${START_S}s, ${START_TICKS} ticks of CPU so far)"
t0="$(now_s)"
RSS_MIN="$START_RSS" RSS_MAX="$START_RSS"
end=$((SECONDS + IDLE_S))
while [ "$SECONDS" -lt "$end" ]; do
    left=$((end - SECONDS))
    sleep "$(( left < SAMPLE_S ? left : SAMPLE_S ))"
    alive "$AGENT_PID" || { tail -n 20 "$BENCH_RUN/tend-agent.log" >&2; die "tend-agent exited during the window"; }
    rss="$(status_kb "$AGENT_PID" VmRSS)"
    [ "$rss" -ge "$RSS_MIN" ] || RSS_MIN="$rss"
    [ "$rss" -le "$RSS_MAX" ] || RSS_MAX="$rss"
done
END_TICKS="$(cpu_ticks "$AGENT_PID")"
thread_ns "$AGENT_PID" >"$BENCH_RUN/ns-1"
t1="$(now_s)"
hb1="$(metric "$SYNC_METRICS_URL" tend_heartbeats_total)"
END_RSS="$(status_kb "$AGENT_PID" VmRSS)"
HWM="$(status_kb "$AGENT_PID" VmHWM)"
THREADS="$(awk '$1 == "Threads:" { print $2 }' "/proc/$AGENT_PID/status")"
WINDOW_S="$(calc "round($t1 - $t0, 1)")"
IDLE_TICKS=$((END_TICKS - START_TICKS))
IDLE_PCT="$(calc "'%.3f' % ($IDLE_TICKS / $CLK_TCK / ($t1 - $t0) * 100)")"
# Exact CPU of the threads alive at the end (a thread that ended inside the
# window would be missing here, but not from the ticks).
IDLE_NS="$(awk 'NR == FNR { start[$1] = $2; next } { t += $2 - ($1 in start ? start[$1] : 0) } END { print t + 0 }' \
    "$BENCH_RUN/ns-0" "$BENCH_RUN/ns-1")"
IDLE_NS_PCT="$(calc "'%.4f' % ($IDLE_NS / 1e9 / ($t1 - $t0) * 100)")"
IDLE_NS_MS="$(calc "'%.1f' % ($IDLE_NS / 1e6)")"
THREADS_START="$(wc -l <"$BENCH_RUN/ns-0")"
STARTUP_CPU_MS="$(awk '{ t += $2 } END { printf "%.1f", t / 1e6 }' "$BENCH_RUN/ns-0")"
AGENT_VERSION="$("$BENCH_BIN/tend-agent" --version 2>/dev/null | head -n 1 || true)"

LONG_POLL_TEXT="${LONG_POLL:-the agent default}"
SUMMARY="$(
cat <<EOF
## tend-agent at idle ($(date -u +%Y-%m-%dT%H:%M:%SZ))

$(machine_md)

**Command**: \`deploy/bench/agent-idle.sh\` (BENCH_IDLE_S=$IDLE_S BENCH_HEARTBEAT_S=$HEARTBEAT_S).
A real \`$AGENT_VERSION\` (release) against a local tend-sync telling it
\`next_heartbeat_s: $HEARTBEAT_S\`, nothing queued, its default log level, long_poll: $LONG_POLL_TEXT. First heartbeat
${FIRST_HB_S} s after start; the window starts ${SETTLE_S} s after it.

| figure | value |
|---|---|
| CPU over ${WINDOW_S} s idle (utime + stime, /proc/PID/stat) | $IDLE_TICKS ticks = **$IDLE_PCT % of one core** |
| the same from the threads' schedstat (exact) | $IDLE_NS_MS ms = $IDLE_NS_PCT % of one core |
| heartbeats in the window (tend-sync's count) | $((hb1 - hb0)) |
| CPU of startup and first heartbeat (first ${START_S} s, schedstat) | $STARTUP_CPU_MS ms |
| RSS in the window (VmRSS, sampled every ${SAMPLE_S} s) | min $RSS_MIN kB, max $RSS_MAX kB, at the end **$END_RSS kB** |
| peak RSS since start (VmHWM) | **$HWM kB** (at the window's start: $START_HWM kB) |
| threads (window start / end) | $THREADS_START / $THREADS |
EOF
)"
REPORT="$BENCH_OUT/agent-idle-$(date +%Y%m%d-%H%M%S).md"
printf '%s\n' "$SUMMARY" >"$REPORT"
printf '\n%s\n\n' "$SUMMARY"
log "written to $REPORT"
BENCH_FAILED=0
