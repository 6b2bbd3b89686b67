#!/usr/bin/env bash
# Command batches at fleet scale: one `POST /api/v1/commands/bulk` that
# reaches every device of a type, timed until the commands are committed
# and until tend-sync has been told of every one of them. One run on this
# machine, loopback only:
#
#   1. backing services (deploy/local/backing-services.sh), release build
#      of tend-platform, tend-sync and tend-monitor;
#   2. a scratch stack (database tend_bench_<tag>, instance bench-<tag>,
#      fresh loopback ports), 30 s heartbeats;
#   3. BENCH_DEVICES devices of type "bench" made through
#      `POST /api/v1/devices/bulk`, 1000 a request (no agent runs: the
#      batch is measured, not the devices), then VACUUM ANALYZE devices;
#   4. a warm-up batch of one device (by id), then the measured batch: a
#      `reboot` for `{"device_type": "bench"}`. Timed from before the
#      request to (a) its 201, when the commands, their signatures, the
#      batch, its audit row and its outbox events are committed, and (b)
#      the moment tend-sync's `tend_sync_events_total{topic=
#      "commands.queued"}` counts every event of the batch (one per 10,000
#      devices), polled every 20 ms: the commands are then announced on
#      every replica's board;
#   5. a markdown summary on stdout and in target/bench/bulk-<date>.md.
#
# Settings (environment):
#   BENCH_DEVICES      devices in the fleet                     (100000)
#   BENCH_NO_BUILD=1   measure target/release as it is
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DEVICES="${BENCH_DEVICES:-100000}"
PER_REQUEST=1000

case "${1:-}" in
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    "") ;;
    *) echo "usage: $0 [--help]   (settings come from the environment)" >&2; exit 2 ;;
esac

bench_init bulk
need curl python3 psql jq cargo
ensure_backing
build_release tend-platform:tend-platform tend-sync:tend-sync tend-monitor:tend-monitor
start_stack 30
admin_login

log "provisioning $DEVICES devices, $PER_REQUEST a request"
t0="$(now_s)"
made=0
while [ "$made" -lt "$DEVICES" ]; do
    n=$(( DEVICES - made < PER_REQUEST ? DEVICES - made : PER_REQUEST ))
    python3 -c '
import json, sys
start, n, prefix = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
print(json.dumps({"devices": [{"name": f"{prefix}-{start + i}", "device_type": "bench"} for i in range(n)]}))
' "$made" "$n" "$BENCH_INSTANCE" >"$BENCH_RUN/devices.json"
    api POST /api/v1/devices/bulk -H 'Content-Type: application/json' \
        -d @"$BENCH_RUN/devices.json" -o /dev/null --max-time 120 \
        || die "provisioning failed after $made devices"
    made=$(( made + n ))
done
log "provisioned $made devices in $(calc "round($(now_s) - $t0, 1)") s"
# The autovacuum that 100,000 new rows set off would otherwise run during
# the measured batch: done now, with fresh statistics for the planner.
psql -X -w -q "$(db_url)" -c "VACUUM ANALYZE devices" || die "VACUUM ANALYZE failed"
admin_login

# events_seen: the commands.queued events tend-sync has consumed so far.
events_seen() {
    curl -fs --max-time 5 "$SYNC_METRICS_URL/metrics" \
        | awk '$1 == "tend_sync_events_total{topic=\"commands.queued\"}" { v = $2 } END { printf "%d\n", (v == "" ? 0 : v) }'
}

# Warm-up: connections, prepared statements and the exchange in place.
one="$(psql -X -w -tA "$(db_url)" -c "SELECT id FROM devices LIMIT 1")"
api POST /api/v1/commands/bulk -H 'Content-Type: application/json' \
    -d "{\"selector\": {\"device_ids\": [\"$one\"]}, \"command\": {\"kind\": \"shutdown\"}}" -o /dev/null
deadline=$((SECONDS + 30))
until [ "$(events_seen)" -ge 1 ] || [ "$SECONDS" -ge "$deadline" ]; do sleep 0.1; done
before="$(events_seen)"

log "batch: reboot for every device of type bench"
t0="$(now_s)"
api POST /api/v1/commands/bulk -H 'Content-Type: application/json' --max-time 120 \
    -d '{"selector": {"device_type": "bench"}, "command": {"kind": "reboot"}}' >"$BENCH_RUN/batch.json" \
    || die "the batch request failed"
t1="$(now_s)"
queued="$(jq -r .queued "$BENCH_RUN/batch.json")"
matched="$(jq -r .matched "$BENCH_RUN/batch.json")"
events=$(( (queued + 9999) / 10000 ))
deadline=$((SECONDS + 120))
until [ "$(( $(events_seen) - before ))" -ge "$events" ]; do
    [ "$SECONDS" -lt "$deadline" ] || die "tend-sync saw $(( $(events_seen) - before )) of $events events in 120 s"
    sleep 0.02
done
t2="$(now_s)"
rows="$(psql -X -w -tA "$(db_url)" -c "SELECT count(*) FROM commands WHERE batch_id = '$(jq -r .batch_id "$BENCH_RUN/batch.json")'")"
[ "$rows" = "$queued" ] || die "the batch answered $queued queued, the table holds $rows"

commit_s="$(calc "round($t1 - $t0, 2)")"
announce_s="$(calc "round($t2 - $t0, 2)")"
rate="$(calc "int($queued / ($t2 - $t0))")"
report="$BENCH_OUT/bulk-$(date +%Y%m%d-%H%M%S).md"
{
    echo "| devices | matched | queued | committed (201) | announced on tend-sync | commands.queued events | commands committed and announced per second |"
    echo "|---|---|---|---|---|---|---|"
    echo "| $DEVICES | $matched | $queued | $commit_s s | $announce_s s | $events | $rate |"
    echo
    machine_md
} | tee "$report"
log "summary in $report"
BENCH_FAILED=0
