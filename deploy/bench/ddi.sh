#!/usr/bin/env bash
# hawkBit DDI benchmark of tend: idle base polls per second at tend-sync,
# the same load against goosebit (a Python hawkBit DDI server, from PyPI),
# and the SQL an idle poll costs at tend. One run on this machine, loopback
# only:
#
#   1. backing services (deploy/local/backing-services.sh), Debian's wrk
#      (installed if missing), release build of tend-platform, tend-sync and
#      tend-monitor, goosebit GOOSEBIT_VERSION in target/goosebit-venv
#      (installed if missing);
#   2. a scratch stack (database tend_bench_<tag>, instance bench-<tag>,
#      fresh loopback ports), the three services running as in production;
#      BENCH_DDI_DEVICES devices created through the platform's API (the
#      bootstrap admin), each with its secret;
#   3. goosebit on its own SQLite database in the run directory (schema by
#      its own migrations, `aerich upgrade`), on a loopback port, one
#      uvicorn worker as `python -m goosebit` runs it (access log off),
#      device authentication on in strict mode (every poll must carry the
#      device's token); its first user made through /setup, the same
#      devices registered through its API (`PUT /api/v1/devices` with an
#      auth_token each);
#   4. every device, at each server, polls once, sends its attributes
#      (`PUT …/configData`) as hawkBit clients do after their first poll, and
#      polls again: that poll must answer 200 with no links (nothing to do,
#      nothing asked), the poll measured;
#   5. SQL at tend: xact_commit + xact_rollback of the scratch database in
#      pg_stat_database over an idle window (no load: the services' own
#      loops), then over a window of equal length holding BENCH_DDI_S
#      seconds of polls; the idle rate is subtracted and the rest divided by
#      the polls tend-sync served (its tend_ddi_polls_total);
#   6. wrk with ddi_poll.lua, `-t BENCH_THREADS -c BENCH_DDI_CONNS -d
#      BENCH_DDI_S`, every request the next device's base poll with
#      `Authorization: TargetToken <secret>`: against tend-sync, then the
#      same against goosebit; the ratio of polls per second;
#   7. a markdown summary on stdout and in target/bench/ddi-<date>.md.
#
# Cleanup (always, see lib.sh): stops only the processes it started
# (goosebit included), deletes the run directory with goosebit's database,
# drops the scratch database, deletes the Redis keys bench-<tag>:* and the
# RabbitMQ exchange bench-<tag>.sync. Every step is bounded in time; about
# 2 minutes plus the build at the defaults (and up to BENCH_QUIET_WAIT_S
# first).
#
# Settings (environment):
#   BENCH_DDI_DEVICES=100   devices polling in turn (at each server)
#   BENCH_DDI_S=20          seconds of polls per server
#   BENCH_DDI_CONNS=32      wrk connections
#   BENCH_THREADS=2         wrk threads: one per core
#   BENCH_DDI_TENANT=default  tend's tenant of the bootstrap admin
#   BENCH_QUIET_WAIT_S=60   before measuring, wait up to this long for other
#   BENCH_QUIET_CORES=0.3   work on the machine to use at most this much CPU
#   BENCH_NO_BUILD=1        measure target/release as it is
#   BENCH_KEEP=1            keep the run directory (logs)
set -euo pipefail

# shellcheck source=deploy/bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DEVICES="${BENCH_DDI_DEVICES:-100}"
LOAD_S="${BENCH_DDI_S:-20}"
CONNS="${BENCH_DDI_CONNS:-32}"
THREADS="${BENCH_THREADS:-2}"
TENANT="${BENCH_DDI_TENANT:-default}"
QUIET_WAIT_S="${BENCH_QUIET_WAIT_S:-60}"
QUIET_CORES="${BENCH_QUIET_CORES:-0.3}"
GOOSEBIT_VERSION="0.2.12"
GOOSEBIT_VENV="$BENCH_ROOT/target/goosebit-venv"
# goosebit serves DDI under its configured tenant, DEFAULT by default.
GOOSEBIT_TENANT="DEFAULT"
LUA="$BENCH_ROOT/deploy/bench/ddi_poll.lua"
# PostgreSQL reports an idle backend's statistics up to 10 s late (15+):
# each SQL window runs this much longer than its load, and both windows are
# read the same way.
PG_STATS_DELAY_S=11
# wrk's own bound past its duration.
WRK_SLACK_S=30

case "${1:-}" in
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    "") ;;
    *) echo "usage: $0 [--help]   (settings come from the environment)" >&2; exit 2 ;;
esac
[ "$CONNS" -ge "$THREADS" ] || { echo "BENCH_DDI_CONNS must be at least BENCH_THREADS" >&2; exit 2; }
[ "$DEVICES" -ge 1 ] || { echo "BENCH_DDI_DEVICES must be at least 1" >&2; exit 2; }

bench_init ddi
need curl python3 psql redis-cli cargo jq timeout
ensure_wrk
ensure_backing
build_release tend-platform:tend-platform tend-sync:tend-sync tend-monitor:tend-monitor

if [ ! -x "$GOOSEBIT_VENV/bin/aerich" ] \
    || [ "$("$GOOSEBIT_VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("goosebit"))' 2>/dev/null)" != "$GOOSEBIT_VERSION" ]; then
    log "installing goosebit $GOOSEBIT_VERSION into $GOOSEBIT_VENV"
    python3 -m venv "$GOOSEBIT_VENV"
    timeout 600 "$GOOSEBIT_VENV/bin/pip" install -q "goosebit==$GOOSEBIT_VERSION" >&2 \
        || die "installing goosebit failed"
fi
WRK="$(command -v wrk)"
GB_PYTHON="$GOOSEBIT_VENV/bin/python"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# --- helpers -------------------------------------------------------------------

declare -A R=()
# parse_wrk FILE: the BENCH_RESULT line of a wrk run into R.
parse_wrk() {
    local line kv
    line="$(grep '^BENCH_RESULT ' "$1")" || { cat "$1" >&2; die "no result from wrk"; }
    R=()
    for kv in ${line#BENCH_RESULT }; do R[${kv%%=*}]="${kv#*=}"; done
    R[errors]=$((R[err_connect] + R[err_read] + R[err_write] + R[err_status] + R[err_timeout]))
}

# pg_xacts: xact_commit + xact_rollback of the scratch database.
pg_xacts() {
    psql_admin -c "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = '$BENCH_DB'"
}

# ddi_curl FILE TOKEN URL [CURL ARGS...]: one DDI request as the device
# with TOKEN (through a config file: no token on a command line); the body
# on stdout, a non-zero exit on an HTTP error.
ddi_curl() {
    local file="$1" token="$2" url="$3"; shift 3
    (umask 077; printf 'header = "Authorization: TargetToken %s"\n' "$token" >"$file")
    curl -fsS --max-time 30 -K "$file" -H 'Accept: application/hal+json' "$@" "$url"
}

# settle_devices BASE FILE: each device of FILE ("controller_id token")
# polls BASE/<id>, sends its attributes and polls again; the second poll
# must have nothing to do and ask for nothing.
settle_devices() {
    local base="$1" id token body
    while read -r id token; do
        ddi_curl "$BENCH_RUN/ddi.curl" "$token" "$base/$id" >/dev/null \
            || die "first poll of $id at $base failed"
        ddi_curl "$BENCH_RUN/ddi.curl" "$token" "$base/$id/configData" -X PUT \
            -H 'Content-Type: application/json' \
            -d '{"mode":"merge","data":{"hw_boardname":"bench","hw_revision":"1","sw_version":"1.0.0"}}' >/dev/null \
            || die "configData of $id at $base failed"
        body="$(ddi_curl "$BENCH_RUN/ddi.curl" "$token" "$base/$id")" || die "poll of $id at $base failed"
        [ "$(jq -c '._links' <<<"$body")" = "{}" ] || die "the poll of $id at $base is not idle: $body"
    done <"$2"
    rm -f "$BENCH_RUN/ddi.curl"
    IDLE_BODY="$body"
}

# poll_load NAME URL DEVICES: BENCH_DDI_S seconds of wrk; sets R (parse_wrk)
# plus R[rps], R[cores] (the server's CPU, pid SERVER_PID) and R[machine].
poll_load() {
    local name="$1" url="$2" devices="$3" tenant="$4" wpid s0 s1 m0 m1 t0 t1
    log "$name: ${LOAD_S}s of idle polls, $DEVICES devices, wrk -t$THREADS -c$CONNS"
    BENCH_DDI_DEVICES="$devices" BENCH_DDI_TENANT="$tenant" \
        timeout $((LOAD_S + WRK_SLACK_S)) "$WRK" -t"$THREADS" -c"$CONNS" -d"${LOAD_S}s" --timeout 10s \
        --latency -s "$LUA" "$url" >"$BENCH_RUN/wrk-$name.txt" 2>&1 &
    wpid=$!
    BENCH_PIDS[$wpid]="$(command -v timeout)"
    s0="$(cpu_ticks "$SERVER_PID")"; m0="$(machine_ticks)"; t0="$(now_s)"
    wait "$wpid" || { cat "$BENCH_RUN/wrk-$name.txt" >&2; die "wrk against $name failed"; }
    s1="$(cpu_ticks "$SERVER_PID")"; m1="$(machine_ticks)"; t1="$(now_s)"
    unset "BENCH_PIDS[$wpid]"
    parse_wrk "$BENCH_RUN/wrk-$name.txt"
    R[rps]="$(calc "round(${R[requests]} * 1e6 / ${R[duration_us]})")"
    R[cores]="$(calc "round(($s1 - $s0) / $CLK_TCK / ($t1 - $t0), 2)")"
    R[machine]="$(calc "round(($m1 - $m0) / $CLK_TCK / ($t1 - $t0), 2)")"
    R[p50]="$(calc "'%.2f' % (${R[p50_us]} / 1000)")"
    R[p99]="$(calc "'%.2f' % (${R[p99_us]} / 1000)")"
    log "$name: ${R[rps]} polls/s, p50 ${R[p50]} ms, p99 ${R[p99]} ms, ${R[errors]} errors (${R[err_status]} non-2xx), server ${R[cores]} cores, machine ${R[machine]}"
}

# --- tend: stack and devices -------------------------------------------------------
start_stack 30
admin_login
TEND_DEVICES="$BENCH_RUN/tend-devices"
GB_DEVICES="$BENCH_RUN/goosebit-devices"
(umask 077; : >"$TEND_DEVICES"; : >"$GB_DEVICES")
log "creating $DEVICES devices at the platform"
for ((i = 1; i <= DEVICES; i++)); do
    name="$(printf 'ddi-bench-%05d' "$i")"
    body="$(api POST /api/v1/devices -H 'Content-Type: application/json' \
        -d "{\"name\":\"$name\",\"device_type\":\"bench\"}")" || die "creating device $name failed"
    secret="$(jq -er .credentials.secret <<<"$body")" || die "no secret for $name: $body"
    printf '%s %s\n' "$name" "$secret" >>"$TEND_DEVICES"
    # goosebit keeps a token of at most 32 characters.
    printf '%s %s\n' "$name" "$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')" >>"$GB_DEVICES"
done
TEND_BASE="$SYNC_URL/$TENANT/controller/v1"
settle_devices "$TEND_BASE" "$TEND_DEVICES"
TEND_IDLE_BODY="$IDLE_BODY"
log "tend: every device settled; an idle poll answers $TEND_IDLE_BODY"

# --- goosebit ------------------------------------------------------------------------
GB_DIR="$BENCH_RUN/goosebit"
mkdir -p "$GB_DIR/artifacts"
GB_SITE="$("$GB_PYTHON" -c 'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("goosebit").origin))')"
cat >"$GB_DIR/pyproject.toml" <<EOF
[tool.aerich]
tortoise_orm = "goosebit.db.config.TORTOISE_CONF"
location = "$GB_SITE/db/migrations"
src_folder = "./."
EOF
GB_ENV=(PATH="$PATH" HOME="${HOME:-/}"
    GOOSEBIT_DB_URI="sqlite://$GB_DIR/db.sqlite3"
    GOOSEBIT_ARTIFACTS_DIR="$GB_DIR/artifacts"
    GOOSEBIT_DEVICE_AUTH__ENABLE=true
    GOOSEBIT_DEVICE_AUTH__MODE=strict)
log "goosebit: schema by aerich upgrade"
(cd "$GB_DIR" && env -i "${GB_ENV[@]}" timeout 120 "$GOOSEBIT_VENV/bin/aerich" upgrade) \
    >"$GB_DIR/aerich.log" 2>&1 || { cat "$GB_DIR/aerich.log" >&2; die "goosebit's migrations failed"; }
for attempt in 1 2 3; do
    port="$(free_port)"
    GB_URL="http://127.0.0.1:$port"
    (cd "$GB_DIR" && exec env -i "${GB_ENV[@]}" "$GB_PYTHON" -m uvicorn goosebit:app \
        --host 127.0.0.1 --port "$port" --no-access-log) </dev/null >>"$BENCH_RUN/goosebit.log" 2>&1 &
    GB_PID=$!
    BENCH_PIDS[$GB_PID]="$GB_PYTHON"
    deadline=$((SECONDS + BENCH_READY_TIMEOUT_S))
    # Ready: /login answers (a redirect to /setup while it has no user).
    until curl -fs -o /dev/null --max-time 2 "$GB_URL/login"; do
        alive "$GB_PID" || break
        [ "$SECONDS" -lt "$deadline" ] || { tail -n 20 "$BENCH_RUN/goosebit.log" >&2; die "goosebit not ready within ${BENCH_READY_TIMEOUT_S}s"; }
        sleep 0.2
    done
    alive "$GB_PID" && break
    unset "BENCH_PIDS[$GB_PID]"
    grep -qi 'address already in use' "$BENCH_RUN/goosebit.log" \
        || { tail -n 20 "$BENCH_RUN/goosebit.log" >&2; die "goosebit exited during startup"; }
done
alive "$GB_PID" || die "goosebit could not bind a port"
log "goosebit $GOOSEBIT_VERSION ready on $GB_URL (pid $GB_PID)"
(umask 077
 printf 'username=bench%%40goosebit.local&password=%s' "$(cat "$BENCH_RUN/admin_password")" >"$GB_DIR/setup.form")
GB_TOKEN="$(curl -fsS --max-time 30 -d @"$GB_DIR/setup.form" "$GB_URL/setup" | jq -er .access_token)" \
    || die "goosebit's /setup failed"
(umask 077; printf 'Authorization: Bearer %s\n' "$GB_TOKEN" >"$GB_DIR/admin.header")
log "registering $DEVICES devices at goosebit"
while read -r id token; do
    curl -fsS --max-time 30 -X PUT -H @"$GB_DIR/admin.header" -H 'Content-Type: application/json' \
        -d @- "$GB_URL/api/v1/devices" >/dev/null <<<"{\"devices\":[\"$id\"],\"auth_token\":\"$token\"}" \
        || die "registering $id at goosebit failed"
done <"$GB_DEVICES"
GB_BASE="$GB_URL/$GOOSEBIT_TENANT/controller/v1"
settle_devices "$GB_BASE" "$GB_DEVICES"
GB_IDLE_BODY="$IDLE_BODY"
read -r id _ <"$GB_DEVICES"
code="$(ddi_curl "$BENCH_RUN/ddi.curl" wrong-token "$GB_BASE/$id" -o /dev/null -w '%{http_code}' 2>/dev/null || true)"
rm -f "$BENCH_RUN/ddi.curl"
[ "$code" = 401 ] || die "goosebit answered $code, not 401, to a wrong token: its device authentication is off"
log "goosebit: every device settled, a wrong token refused; an idle poll answers $GB_IDLE_BODY"

# --- measurements --------------------------------------------------------------------
wait_quiet
log "CPU in use before measuring (other work and both idle servers): $BACKGROUND_CORES cores"

log "SQL: idle window of $((LOAD_S + PG_STATS_DELAY_S))s (the services' own loops)"
sleep "$PG_STATS_DELAY_S"
x0="$(pg_xacts)"; ta="$(now_s)"
sleep $((LOAD_S + PG_STATS_DELAY_S))
x1="$(pg_xacts)"; tb="$(now_s)"
IDLE_XACTS=$((x1 - x0))
IDLE_WINDOW_S="$(calc "round($tb - $ta, 1)")"

SERVER_PID="$SYNC_PID"
polls0="$(metric "$SYNC_METRICS_URL" tend_ddi_polls_total)"
y0="$(pg_xacts)"; tc="$(now_s)"
poll_load tend-sync "$SYNC_URL" "$TEND_DEVICES" "$TENANT"
declare -A TEND=()
for k in "${!R[@]}"; do TEND[$k]="${R[$k]}"; done
sleep "$PG_STATS_DELAY_S"
y1="$(pg_xacts)"; td="$(now_s)"
polls1="$(metric "$SYNC_METRICS_URL" tend_ddi_polls_total)"
LOAD_XACTS=$((y1 - y0))
LOAD_WINDOW_S="$(calc "round($td - $tc, 1)")"
SERVED=$((polls1 - polls0))
[ "$SERVED" -gt 0 ] || die "tend-sync counted no DDI poll (tend_ddi_polls_total)"
BACKGROUND_XACTS="$(calc "round($IDLE_XACTS * ($td - $tc) / ($tb - $ta), 1)")"
EXTRA_XACTS="$(calc "round($LOAD_XACTS - $BACKGROUND_XACTS, 1)")"
XACTS_PER_POLL="$(calc "'%.5f' % max(0.0, ($LOAD_XACTS - $BACKGROUND_XACTS) / $SERVED)")"
log "SQL: $IDLE_XACTS transactions idle (${IDLE_WINDOW_S}s), $LOAD_XACTS with load (${LOAD_WINDOW_S}s, $SERVED polls served): $XACTS_PER_POLL per poll"

SERVER_PID="$GB_PID"
poll_load goosebit "$GB_URL" "$GB_DEVICES" "$GOOSEBIT_TENANT"
declare -A GB=()
for k in "${!R[@]}"; do GB[$k]="${R[$k]}"; done
alive "$SYNC_PID" || die "tend-sync exited during the run"
alive "$GB_PID" || die "goosebit exited during the run"

# SQL per poll counts as 0 below one transaction per 20,000 polls: the idle
# window's own count varies by more than that between two windows.
RATIO="$(calc "'%.1f' % (${TEND[rps]} / max(${GB[rps]}, 1))")"
goal() { if [ "$(calc "int($1)")" = 1 ]; then echo "met"; else echo "**missed**"; fi; }

# --- summary -------------------------------------------------------------------------
SUMMARY="$(cat <<EOF
## hawkBit DDI polls

$(machine_md)
A shared 2-core machine (CPU in use by other work and both idle servers before measuring:
$BACKGROUND_CORES cores). Servers, wrk, PostgreSQL, Redis and RabbitMQ share the same two cores over loopback;
tend-platform and tend-monitor run beside tend-sync, as in production.

**Command**: \`BENCH_DDI_DEVICES=$DEVICES BENCH_DDI_S=$LOAD_S BENCH_DDI_CONNS=$CONNS deploy/bench/ddi.sh\`
(defaults 100, 20 and 32).

wrk $("$WRK" -v 2>&1 | head -n 1 | cut -d' ' -f2) with \`deploy/bench/ddi_poll.lua\`, \`-t$THREADS -c$CONNS -d${LOAD_S}s\`,
every request the base poll \`GET /{tenant}/controller/v1/{controllerId}\` of the next of $DEVICES devices,
with \`Authorization: TargetToken <its token>\`. Every device had polled, sent its attributes
(configData) and polled again before: its poll has nothing to do and asks for nothing
(\`$TEND_IDLE_BODY\` at tend-sync). goosebit $GOOSEBIT_VERSION (PyPI) ran on its own SQLite database,
one uvicorn worker as \`python -m goosebit\` runs it (access log off), device authentication in
strict mode, the same devices registered with a token each.

| server | polls/s | p50 / p99 ms | errors | server CPU (cores) | machine CPU |
|---|---|---|---|---|---|
| tend-sync | **${TEND[rps]}** | ${TEND[p50]} / ${TEND[p99]} | ${TEND[errors]} | ${TEND[cores]} | ${TEND[machine]} |
| goosebit | **${GB[rps]}** | ${GB[p50]} / ${GB[p99]} | ${GB[errors]} | ${GB[cores]} | ${GB[machine]} |

| figure | value | goal |
|---|---|---|
| polls/s, tend-sync / goosebit | **${RATIO}×** | ≥ 50× ($(goal "$RATIO >= 50")) |
| SQL transactions per idle poll at tend | **$XACTS_PER_POLL** | 0 ($(goal "$XACTS_PER_POLL < 0.00005")) |

SQL: xact_commit + xact_rollback of the scratch database (pg_stat_database: every service's
transactions count), $IDLE_XACTS over an idle window of ${IDLE_WINDOW_S} s, $LOAD_XACTS over ${LOAD_WINDOW_S} s holding the
${LOAD_S} s of polls (each window read ${PG_STATS_DELAY_S} s after its end, PostgreSQL's reporting delay);
$BACKGROUND_XACTS expected from the idle rate, $EXTRA_XACTS more, over $SERVED polls served
(tend_ddi_polls_total).
EOF
)"
REPORT="$BENCH_OUT/ddi-$(date +%Y%m%d-%H%M%S).md"
printf '%s\n' "$SUMMARY" >"$REPORT"
printf '\n%s\n\n' "$SUMMARY"
log "written to $REPORT"
BENCH_FAILED=0
