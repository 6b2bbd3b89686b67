#!/usr/bin/env bash
# Software upgrades by a real tend-agent: its memory while it downloads and
# installs a large artifact, and the time from an `upgrade` queued to
# `succeeded` for a small one. One run on this machine, loopback only:
#
#   1. backing services (deploy/local/backing-services.sh), release build of
#      tend-platform, tend-sync, tend-monitor and tend-agent;
#   2. a scratch stack (lib.sh: database tend_bench_<tag>, instance
#      bench-<tag>, fresh loopback ports, 30 s heartbeats) whose artifact
#      store is a directory of the run (TEND_ARTIFACT_STORE=file://<run>/store);
#      one device of type "bench" created through the platform's API
#      (provision.py, which also gives its secret);
#   3. the artifacts, created and uploaded with curl through the platform's
#      API (POST /api/v1/artifacts, PUT …/content; not released: an
#      upgrade command only needs a ready artifact, and an unreleased one is
#      never offered by an update check that could compete with it):
#      one BENCH_BIG_MB artifact of random bytes for component "app"
#      (2.0.0), and BENCH_RUNS BENCH_SMALL_MB artifacts per kind for the
#      latency runs: "web" (kind "dir": `tar -czf` of ten files of random
#      bytes and a VERSION, versions 1.1.<n>) and "app" (kind "file": random
#      bytes, versions 3.0.<n>);
#   4. ONE tend-agent at a time (the release binary, its default log level)
#      with a run directory of its own: long_poll = true, update_check_s =
#      0, [download] segment_bytes, and two components in that directory,
#      each with health_check = ["true"]:
#        [components.app]  kind "file", path sw/app.bin, version_file
#                          sw/app.version (1.0.0 at the start);
#        [components.web]  kind "dir", path sw/web (VERSION 1.0.0);
#   5. latency: a fresh agent (the first of BENCH_SEGMENTS); per kind,
#      BENCH_RUNS upgrades one after the other (POST
#      /api/v1/devices/{id}/commands {"kind":"upgrade","params":
#      {"artifact_id":…}}), each waited for by polling GET
#      /api/v1/commands/{id} every 50 ms. Two figures per upgrade: the
#      command's finished_at − created_at from the API (the database's
#      clock, queued to the final report received: the figure reported),
#      and the client's, from the POST's return to the poll that read
#      `succeeded` (up to 50 ms and a poll's cost later). The steps between
#      come from the command's delivered_at and the agent's operations.log
#      (verified, prepared, installed, committed). Every run installs a new
#      version: two versions alternating would not measure a download
#      from the third run on, as the agent keeps the download of the
#      version its backup holds and would only hash it again;
#   6. memory: for each segment size in BENCH_SEGMENTS, a fresh agent (new
#      run directory: nothing downloaded yet, app at 1.0.0); its idle VmRSS
#      once its first heartbeat went through and BENCH_SETTLE_S passed;
#      VmHWM reset (/proc/PID/clear_refs, root only); the BENCH_BIG_MB
#      upgrade queued; VmRSS, VmHWM, RssAnon, RssFile and Threads read
#      from /proc/PID/status every 0.1 s (and /proc/PID/smaps_rollup at each
#      new peak), the command's status every 0.5 s, until it is
#      `succeeded`; the installed file is checked against the artifact's
#      SHA-256; the samples are then sorted into the upgrade's steps by the
#      agent's operations.log (the API keeps no phase while a command is
#      in_progress);
#   7. a markdown summary on stdout and in target/bench/agent-upgrade-<date>.md.
#
# Cleanup (always, see lib.sh): stops only the processes it started (each
# agent by its pid), deletes the artifact store, the generated artifacts
# and the agents' components and downloads (even with BENCH_KEEP=1, which
# keeps the logs, configs, samples and operation logs), drops the scratch
# database, deletes the Redis keys bench-<tag>:* and the RabbitMQ exchange
# bench-<tag>.sync. Every wait is bounded (an upgrade: BENCH_BIG_MAX_S or
# BENCH_SMALL_MAX_S); about a minute plus the build at the default sizes
# (and up to BENCH_QUIET_WAIT_S first).
#
# Settings (environment):
#   BENCH_BIG_MB=256        the artifact of the memory figure (MiB)
#   BENCH_SEGMENTS=1048576  segment sizes ([download] segment_bytes), one
#                           memory run each, e.g. "1048576 65536"; the first
#                           is also the latency runs' (1024 to 67108864)
#   BENCH_SMALL_MB=10       the artifacts of the latency figure (MiB)
#   BENCH_RUNS=5            upgrades per kind in the latency figure
#   BENCH_LATENCY_KINDS="dir file"  component kinds of the latency runs
#   BENCH_SETTLE_S=3        after the agent's first heartbeat, before its
#                           idle RSS is read
#   BENCH_BIG_MAX_S=600     bound of the large upgrade
#   BENCH_SMALL_MAX_S=120   bound of each small upgrade
#   BENCH_QUIET_WAIT_S=60   before measuring, wait up to this long for other
#   BENCH_QUIET_CORES=0.3   work on the machine to use at most this much CPU
#   BENCH_NO_BUILD=1        measure target/release as it is
#   BENCH_KEEP=1            keep the run directory (logs), not the big files
set -euo pipefail

# shellcheck source=deploy/bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BIG_MB="${BENCH_BIG_MB:-256}"
read -r -a SEGMENTS <<<"${BENCH_SEGMENTS:-1048576}"
SMALL_MB="${BENCH_SMALL_MB:-10}"
RUNS="${BENCH_RUNS:-5}"
read -r -a KINDS <<<"${BENCH_LATENCY_KINDS:-dir file}"
SETTLE_S="${BENCH_SETTLE_S:-3}"
BIG_MAX_S="${BENCH_BIG_MAX_S:-600}"
SMALL_MAX_S="${BENCH_SMALL_MAX_S:-120}"
QUIET_WAIT_S="${BENCH_QUIET_WAIT_S:-60}"
QUIET_CORES="${BENCH_QUIET_CORES:-0.3}"
# The goal of issue 12: the agent under 16 MB while it upgrades (read as
# MiB, i.e. VmRSS below 16384 kB).
GOAL_KB=16384
SAMPLE_S=0.1
# The large upgrade's status is read every POLL_EVERY samples (0.5 s): a
# request to the platform per sample would cost the shared cores more than
# the agent does.
POLL_EVERY=5
LATENCY_POLL_S=0.05
UPLOAD_MAX_S=600
# Bound of an agent's start: its first heartbeat.
AGENT_READY_S=30

case "${1:-}" in
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    "") ;;
    *) echo "usage: $0 [--help]   (settings come from the environment)" >&2; exit 2 ;;
esac

for n in "$BIG_MB" "$SMALL_MB" "$RUNS" "${SEGMENTS[@]}"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "sizes, counts and segments must be positive integers (got '$n')" >&2; exit 2; }
done
[ "${#SEGMENTS[@]}" -ge 1 ] || { echo "BENCH_SEGMENTS names no segment size" >&2; exit 2; }
for s in "${SEGMENTS[@]}"; do
    [ "$s" -ge 1024 ] && [ "$s" -le 67108864 ] \
        || { echo "BENCH_SEGMENTS: $s is not between 1024 and 67108864" >&2; exit 2; }
done
for k in "${KINDS[@]}"; do
    case "$k" in dir|file) ;; *) echo "BENCH_LATENCY_KINDS: '$k' is neither dir nor file" >&2; exit 2 ;; esac
done

bench_init agent-upgrade
STORE="$BENCH_RUN/store"
DATA="$BENCH_RUN/data"

# The artifacts and the agents' copies of them are large: delete them
# whatever happens, even when the run directory is kept for its logs, then
# lib.sh's cleanup.
upgrade_cleanup() {
    local rc=$?
    set +e
    rm -rf "$STORE" "$DATA" "$BENCH_RUN"/agent-*/sw "$BENCH_RUN"/agent-*/state/software
    (exit "$rc")
    bench_cleanup
}
trap upgrade_cleanup EXIT

need curl python3 psql redis-cli cargo jq tar gzip sha256sum
ensure_backing
build_release tend-platform:tend-platform tend-sync:tend-sync tend-monitor:tend-monitor tend-agent:tend-agent
AGENT_BIN="$BENCH_BIN/tend-agent"
mkdir -p "$STORE" "$DATA"

# --- helpers -------------------------------------------------------------------

# mem_sample PID: "VmRSS VmHWM RssAnon RssFile Threads" (kB, and a count).
mem_sample() {
    awk '$1 == "VmRSS:" { r = $2 } $1 == "VmHWM:" { h = $2 } $1 == "RssAnon:" { a = $2 }
         $1 == "RssFile:" { f = $2 } $1 == "Threads:" { t = $2 }
         END { print r + 0, h + 0, a + 0, f + 0, t + 0 }' "/proc/$1/status"
}

# mb KB: kB as MiB with one decimal.
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# upload_artifact COMPONENT VERSION FILE: creates the artifact for device
# type "bench", uploads FILE and checks what the platform stored; sets
# ART_ID and ART_SHA.
upload_artifact() {
    local art size
    size="$(stat -c %s "$3")"
    art="$(api POST /api/v1/artifacts -H 'Content-Type: application/json' \
        -d "$(jq -nc --arg c "$1" --arg v "$2" --arg f "$(basename "$3")" \
            '{component: $c, version: $v, device_types: ["bench"], filename: $f}')")" \
        || die "creating artifact $1 $2 failed"
    ART_ID="$(jq -r .id <<<"$art")"
    art="$(api PUT "/api/v1/artifacts/$ART_ID/content" --max-time "$UPLOAD_MAX_S" -H 'Expect:' \
        -H 'Content-Type: application/octet-stream' -T "$3")" || die "uploading artifact $1 $2 failed"
    [ "$(jq -r .size <<<"$art")" = "$size" ] || die "the platform stored $(jq -r .size <<<"$art") bytes of $1 $2, not $size"
    [ "$(jq -r .status <<<"$art")" = ready ] || die "artifact $1 $2 is $(jq -r .status <<<"$art") after its upload"
    ART_SHA="$(jq -r .sha256 <<<"$art")"
    [ "$ART_SHA" = "$(sha256sum "$3" | cut -d' ' -f1)" ] || die "the platform's SHA-256 of $1 $2 is not the file's"
}

# dir_artifact VERSION OUT: a .tar.gz of ten files of random bytes
# (SMALL_MB MiB in all) and a VERSION file.
dir_artifact() {
    local src="$DATA/web-$1" i
    mkdir -p "$src/lib"
    printf '%s\n' "$1" >"$src/VERSION"
    for ((i = 0; i < 10; i++)); do
        head -c $((SMALL_MB * 1048576 / 10)) /dev/urandom >"$src/lib/part-$i.bin"
    done
    tar -C "$src" -czf "$2" .
    rm -rf "$src"
}

# start_agent SEGMENT_BYTES: a fresh agent in a new run directory
# agent-<n> (state, components, config, log), started and its first
# heartbeat through; sets AGENT_PID and AGENT_DIR. The previous agent, if
# any, is stopped first: one agent at a time per device.
AGENT_N=0 AGENT_PID=""
start_agent() {
    local hb deadline
    if [ -n "$AGENT_PID" ]; then stop_pid "$AGENT_PID"; AGENT_PID=""; fi
    AGENT_N=$((AGENT_N + 1))
    AGENT_DIR="$BENCH_RUN/agent-$AGENT_N"
    mkdir -p "$AGENT_DIR/state" "$AGENT_DIR/sw/web"
    (umask 077; printf '%s' "$SECRET" >"$AGENT_DIR/secret")
    printf 'app 1.0.0\n' >"$AGENT_DIR/sw/app.bin"
    printf '1.0.0\n' >"$AGENT_DIR/sw/app.version"
    printf '1.0.0\n' >"$AGENT_DIR/sw/web/VERSION"
    cat >"$AGENT_DIR/agent.toml" <<EOF
# Written by deploy/bench/agent-upgrade.sh.
server_url = "$SYNC_URL"
device_id = "$DEVICE_ID"
device_secret_file = "$AGENT_DIR/secret"
state_dir = "$AGENT_DIR/state"
boot_id_file = "$BENCH_RUN/boot_id"
signing_keys = ["$BENCH_SIGNING_PUBLIC_KEY"]
long_poll = true
update_check_s = 0

[actions]
reboot = ["/bin/true"]
shutdown = ["/bin/true"]

[download]
segment_bytes = $1

[components.app]
kind = "file"
path = "$AGENT_DIR/sw/app.bin"
version_file = "$AGENT_DIR/sw/app.version"
health_check = ["true"]

[components.web]
kind = "dir"
path = "$AGENT_DIR/sw/web"
health_check = ["true"]
EOF
    hb="$(metric "$SYNC_METRICS_URL" tend_heartbeats_total)"
    env -i PATH="$PATH" HOME="${HOME:-/}" "$AGENT_BIN" --config "$AGENT_DIR/agent.toml" \
        </dev/null >>"$AGENT_DIR/tend-agent.log" 2>&1 &
    AGENT_PID=$!
    BENCH_PIDS[$AGENT_PID]="$AGENT_BIN"
    deadline=$((SECONDS + AGENT_READY_S))
    until [ "$(metric "$SYNC_METRICS_URL" tend_heartbeats_total)" -gt "$hb" ]; do
        alive "$AGENT_PID" || { tail -n 20 "$AGENT_DIR/tend-agent.log" >&2; die "tend-agent exited"; }
        [ "$SECONDS" -lt "$deadline" ] || { tail -n 20 "$AGENT_DIR/tend-agent.log" >&2; die "no heartbeat from tend-agent within ${AGENT_READY_S}s"; }
        sleep 0.2
    done
    log "tend-agent $AGENT_N started (pid $AGENT_PID, segment_bytes $1), first heartbeat through"
}

# queue_upgrade ARTIFACT_ID: POSTs the command; sets CMD_ID and QUEUED_AT
# (the POST's return, $EPOCHREALTIME).
queue_upgrade() {
    local out
    out="$(api POST "/api/v1/devices/$DEVICE_ID/commands" -H 'Content-Type: application/json' \
        -d "{\"kind\":\"upgrade\",\"params\":{\"artifact_id\":\"$1\"}}")" || die "queueing the upgrade to $1 failed"
    QUEUED_AT="$EPOCHREALTIME"
    CMD_ID="$(jq -r .id <<<"$out")"
}

# ended STATUS: a final status.
ended() {
    case "$1" in succeeded|failed|rejected|timed_out|expired|cancelled) return 0 ;; esac
    return 1
}

# require_success JSON_FILE: dies with the agent's error unless succeeded.
require_success() {
    [ "$(jq -r .status "$1")" = succeeded ] \
        || { tail -n 20 "$AGENT_DIR/tend-agent.log" >&2; die "upgrade $(jq -r .id "$1") ended $(jq -c '{status, result}' "$1")"; }
}

# server_ms JSON_FILE: the command's finished_at − created_at, in ms.
server_ms() {
    jq -r '[.created_at, .finished_at] | @tsv' "$1" | python3 -c '
import sys
from datetime import datetime
a, b = sys.stdin.read().split()
print(round((datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds() * 1000))'
}

# --- stack, device, artifacts ---------------------------------------------------
start_artifact_stack "$STORE"
admin_login
provision 1 "$BENCH_RUN/tokens" "$BENCH_RUN/secrets"
read -r DEVICE_ID SECRET <"$BENCH_RUN/secrets"
cat /proc/sys/kernel/random/uuid >"$BENCH_RUN/boot_id"
log "device $DEVICE_ID"

BIG_SIZE=$((BIG_MB * 1048576))
log "writing and uploading the ${BIG_MB} MiB artifact (app 2.0.0, random bytes)"
head -c "$BIG_SIZE" /dev/urandom >"$DATA/app-2.0.0.bin"
upload_artifact app 2.0.0 "$DATA/app-2.0.0.bin"
BIG_ID="$ART_ID" BIG_SHA="$ART_SHA"
rm -f "$DATA/app-2.0.0.bin"

declare -A SMALL_ID=() SMALL_VERSION=() SMALL_SIZE=()
log "writing and uploading $RUNS artifacts of $SMALL_MB MiB per kind (${KINDS[*]})"
for kind in "${KINDS[@]}"; do
    for ((i = 1; i <= RUNS; i++)); do
        if [ "$kind" = dir ]; then
            v="1.1.$i" f="$DATA/web-$v.tar.gz" c=web
            dir_artifact "$v" "$f"
        else
            v="3.0.$i" f="$DATA/app-$v.bin" c=app
            head -c $((SMALL_MB * 1048576)) /dev/urandom >"$f"
        fi
        upload_artifact "$c" "$v" "$f"
        SMALL_ID[$kind/$i]="$ART_ID" SMALL_VERSION[$kind/$i]="$v" SMALL_SIZE[$kind/$i]="$(stat -c %s "$f")"
        rm -f "$f"
    done
done

wait_quiet
log "CPU in use before measuring (other work and the idle stack): $BACKGROUND_CORES cores"

# --- latency: queued to succeeded ------------------------------------------------
admin_login
start_agent "${SEGMENTS[0]}"
LATENCY_AGENT_DIR="$AGENT_DIR"
sleep "$SETTLE_S"
LATENCY_ROWS=""
declare -A SERVER_MS=() CLIENT_MS=()
for kind in "${KINDS[@]}"; do
    SERVER_MS[$kind]="" CLIENT_MS[$kind]=""
    for ((i = 1; i <= RUNS; i++)); do
        v="${SMALL_VERSION[$kind/$i]}"
        queue_upgrade "${SMALL_ID[$kind/$i]}"
        deadline=$((SECONDS + SMALL_MAX_S))
        while :; do
            status="$(api GET "/api/v1/commands/$CMD_ID" | jq -r .status)" || die "reading command $CMD_ID failed"
            ended "$status" && break
            [ "$SECONDS" -lt "$deadline" ] || die "upgrade $CMD_ID ($kind $v) still $status after ${SMALL_MAX_S}s"
            sleep "$LATENCY_POLL_S"
        done
        seen="$EPOCHREALTIME"
        json="$BENCH_RUN/command-$kind-$i.json"
        api GET "/api/v1/commands/$CMD_ID" >"$json"
        require_success "$json"
        s_ms="$(server_ms "$json")"
        c_ms="$(calc "round(($seen - $QUEUED_AT) * 1000)")"
        SERVER_MS[$kind]+=" $s_ms" CLIENT_MS[$kind]+=" $c_ms"
        if [ "$kind" = dir ]; then
            [ "$(head -n 1 "$AGENT_DIR/sw/web/VERSION")" = "$v" ] || die "web does not say $v after its upgrade"
        else
            [ "$(head -n 1 "$AGENT_DIR/sw/app.version")" = "$v" ] || die "app.version does not say $v after its upgrade"
        fi
        log "$kind $v (${SMALL_SIZE[$kind/$i]} bytes): queued→succeeded $s_ms ms (API timestamps), $c_ms ms (client, 50 ms polls)"
        # Back to waiting in its long-poll, as an agent is when an upgrade comes.
        sleep 1
    done
done

# The steps of each latency run: the API's timestamps and the agent's
# operation log. Prints markdown rows, then a summary row per kind.
LATENCY_MD="$(python3 - "$LATENCY_AGENT_DIR/state/operations.log" "$BENCH_RUN" "$RUNS" "${KINDS[@]}" <<'EOF'
import json, statistics, sys
from datetime import datetime

oplog, run, runs, kinds = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
steps = {}
for line in open(oplog):
    op = json.loads(line)
    if op.get("step"):
        steps.setdefault(op["instruction_id"], {})[op["step"]] = datetime.fromisoformat(op["at"])

def ms(a, b):
    return round((b - a).total_seconds() * 1000)

cols = ["queued→delivered", "delivered→verified", "verified→prepared", "prepared→installed",
        "installed→committed", "committed→finished"]
rows, summary = [], []
for kind in kinds:
    per = {c: [] for c in cols}
    total = []
    for i in range(1, runs + 1):
        c = json.load(open(f"{run}/command-{kind}-{i}.json"))
        s = steps.get(c["id"], {})
        t = {k: datetime.fromisoformat(c[k + "_at"]) for k in ("created", "delivered", "finished")}
        marks = [t["created"], t["delivered"], s.get("verified"), s.get("prepared"),
                 s.get("installed"), s.get("committed"), t["finished"]]
        if None in marks:
            sys.exit(f"command {c['id']}: the operation log lacks a step ({sorted(s)})")
        parts = [ms(a, b) for a, b in zip(marks, marks[1:])]
        for col, p in zip(cols, parts):
            per[col].append(p)
        total.append(ms(t["created"], t["finished"]))
        rows.append(f"| {kind} | {c['params']['artifact']['version']} | {total[-1]} | " + " | ".join(map(str, parts)) + " |")
    summary.append(f"| {kind} | median of {runs} | {statistics.median(total):g} | "
                   + " | ".join(f"{statistics.median(per[c]):g}" for c in cols) + " |")
print("| kind | version | queued→succeeded | " + " | ".join(cols) + " |")
print("|---|---|---|" + "---|" * len(cols))
print("\n".join(rows + summary))
EOF
)" || die "the steps of the latency runs could not be read"

# stats "N N N": "min / median / max".
stats() { python3 -c 'import statistics, sys; v = [int(x) for x in sys.argv[1:]]; print(f"{min(v)} / {statistics.median(v):g} / {max(v)}")' $1; }
LATENCY_TABLE="| kind | artifact | upgrades | **queued→succeeded, API timestamps** (ms, min / median / max) | POST returned → \`succeeded\` read, 50 ms polls (ms) |
|---|---|---|---|---|"
for kind in "${KINDS[@]}"; do
    if [ "$kind" = dir ]; then what="web: .tar.gz, $(calc "round(${SMALL_SIZE[dir/1]} / 1e6, 1)") MB (10 files of random bytes)"
    else what="app: one file, $SMALL_MB MiB of random bytes"; fi
    LATENCY_TABLE+="
| $kind | $what | $RUNS | **$(stats "${SERVER_MS[$kind]}")** | $(stats "${CLIENT_MS[$kind]}") |"
done

# --- memory: the large upgrade ---------------------------------------------------

# phases SEG CSV COMMAND_JSON OPLOG: the samples of CSV sorted into the
# upgrade's steps, whose ends come from the command's timestamps and the
# agent's operation log (the API keeps no phase while a command is
# in_progress). Prints the phase of the highest sample, then the step
# durations ("DOWNLOAD_S <seconds>"), then markdown rows.
phases() {
    python3 - "$@" <<'EOF'
import json, sys
from datetime import datetime

seg, csv, cmd_file, oplog = sys.argv[1:5]
cmd = json.load(open(cmd_file))
at = {}
for line in open(oplog):
    op = json.loads(line)
    if op["instruction_id"] == cmd["id"] and op.get("step"):
        at[op["step"]] = datetime.fromisoformat(op["at"]).timestamp()
ts = lambda k: datetime.fromisoformat(cmd[k + "_at"]).timestamp()
ends = [("queued, until the agent fetched it", ts("delivered")),
        ("download and SHA-256 check", at["verified"]),
        ("staging: copy beside the component, fsync", at["prepared"]),
        ("swap", at["installed"]),
        ("health check and commit", at["committed"]),
        ("final report", ts("finished")),
        ("after the final report (until the next status read)", float("inf"))]
starts = [ts("created")] + [e for _, e in ends[:-1]]
rows = {name: [] for name, _ in ends}
peak = (0, None)
for line in list(open(csv))[1:]:
    t, rss, _, anon, _, threads = line.split()
    t, rss, anon = float(t), int(rss), int(anon)
    name = next((n for n, e in ends if t < e), ends[-1][0])
    rows[name].append((rss, anon, int(threads)))
    if rss > peak[0]:
        peak = (rss, name)
print(peak[1])
print("DOWNLOAD_S", round(at["verified"] - ts("delivered"), 2))
for (name, end), begin in zip(ends, starts):
    samples = rows[name]
    span = "" if end == float("inf") else f"{end - begin:.2f} s"
    if not samples:
        print(f"| {seg} | {name} | {span} | 0 | | |")
        continue
    print(f"| {seg} | {name} | {span} | {len(samples)} | {max(s[0] for s in samples) / 1024:.1f} "
          f"| {max(s[1] for s in samples) / 1024:.1f} |")
EOF
}

declare -A IDLE=() IDLE_ANON=() PEAK=() HWM=() ANON=() DUR=() SAMPLES=() AFTER=() PEAK_PHASE=() THREADS=() HWM_RESET=() SMAPS=() DL_MIBS=()
PHASE_MD=""
for seg in "${SEGMENTS[@]}"; do
    admin_login
    start_agent "$seg"
    sleep "$SETTLE_S"
    read -r rss hwm anon _ _ <<<"$(mem_sample "$AGENT_PID")"
    IDLE[$seg]="$rss" IDLE_ANON[$seg]="$anon"
    HWM_RESET[$seg]="no (VmHWM since start: $hwm kB)"
    if echo 5 >"/proc/$AGENT_PID/clear_refs" 2>/dev/null; then HWM_RESET[$seg]=yes; fi
    csv="$BENCH_RUN/rss-$seg.csv"
    echo "epoch_s vmrss_kb vmhwm_kb rssanon_kb rssfile_kb threads" >"$csv"
    log "memory: ${BIG_MB} MiB upgrade in $seg-byte segments (agent idle at $rss kB)"
    queue_upgrade "$BIG_ID"
    status=queued n=0 peak=0 anon_peak=0 threads_peak=0
    deadline=$((SECONDS + BIG_MAX_S))
    while :; do
        alive "$AGENT_PID" || { tail -n 20 "$AGENT_DIR/tend-agent.log" >&2; die "tend-agent exited during the upgrade"; }
        read -r r h a f t <<<"$(mem_sample "$AGENT_PID")"
        printf '%s %s %s %s %s %s\n' "$EPOCHREALTIME" "$r" "$h" "$a" "$f" "$t" >>"$csv"
        if [ "$r" -gt "$peak" ]; then
            peak="$r"
            cp "/proc/$AGENT_PID/smaps_rollup" "$BENCH_RUN/smaps-peak-$seg.txt" 2>/dev/null || true
        fi
        [ "$a" -le "$anon_peak" ] || anon_peak="$a"
        [ "$t" -le "$threads_peak" ] || threads_peak="$t"
        n=$((n + 1))
        if [ $((n % POLL_EVERY)) = 0 ]; then
            status="$(api GET "/api/v1/commands/$CMD_ID" | jq -r .status)" || die "reading command $CMD_ID failed"
            ended "$status" && break
        fi
        [ "$SECONDS" -lt "$deadline" ] || die "the ${BIG_MB} MiB upgrade is still $status after ${BIG_MAX_S}s"
        sleep "$SAMPLE_S"
    done
    json="$BENCH_RUN/command-big-$seg.json"
    api GET "/api/v1/commands/$CMD_ID" >"$json"
    require_success "$json"
    read -r _ HWM[$seg] _ _ _ <<<"$(mem_sample "$AGENT_PID")"
    PEAK[$seg]="$peak" ANON[$seg]="$anon_peak" THREADS[$seg]="$threads_peak" SAMPLES[$seg]="$n"
    DUR[$seg]="$(calc "round($(server_ms "$json") / 1000, 2)")"
    sleep 2
    read -r AFTER[$seg] _ _ _ _ <<<"$(mem_sample "$AGENT_PID")"
    [ "$(head -n 1 "$AGENT_DIR/sw/app.version")" = 2.0.0 ] || die "app.version does not say 2.0.0 after the upgrade"
    [ "$(sha256sum "$AGENT_DIR/sw/app.bin" | cut -d' ' -f1)" = "$BIG_SHA" ] || die "the installed app.bin is not the artifact"
    out="$(phases "$seg" "$csv" "$json" "$AGENT_DIR/state/operations.log")" || die "the steps of the upgrade could not be read"
    PEAK_PHASE[$seg]="$(sed -n 1p <<<"$out")"
    DL_MIBS[$seg]="$(calc "round($BIG_MB / $(sed -n 2p <<<"$out" | cut -d' ' -f2))")"
    PHASE_MD+="
$(sed '1,2d' <<<"$out")"
    SMAPS[$seg]="$(awk '$1 ~ /^(Rss|Anonymous|Shared_Clean|Private_Clean|Private_Dirty):$/ { printf "%s%s %s kB", (n++ ? ", " : ""), $1, $2 }' "$BENCH_RUN/smaps-peak-$seg.txt" 2>/dev/null || echo n/a)"
    log "memory: idle ${IDLE[$seg]} kB, peak VmRSS $peak kB (${PEAK_PHASE[$seg]}), VmHWM ${HWM[$seg]} kB; ${DUR[$seg]} s queued→succeeded, downloaded and checked at ${DL_MIBS[$seg]} MiB/s; ${AFTER[$seg]} kB 2 s after"
done
stop_pid "$AGENT_PID"; AGENT_PID=""

goal() { if [ "$1" -lt "$GOAL_KB" ]; then echo "met"; else echo "**missed**"; fi; }
MEM_TABLE="| segment_bytes | idle VmRSS (RssAnon) | peak VmRSS (0.1 s samples) | VmHWM (reset before queueing: ${HWM_RESET[${SEGMENTS[0]}]}) | peak RssAnon | peak threads | queued→succeeded | VmRSS 2 s after | goal < 16 MiB |
|---|---|---|---|---|---|---|---|---|"
for seg in "${SEGMENTS[@]}"; do
    worst="${PEAK[$seg]}"; [ "${HWM[$seg]}" -le "$worst" ] || worst="${HWM[$seg]}"
    MEM_TABLE+="
| $seg | ${IDLE[$seg]} kB (${IDLE_ANON[$seg]} kB) | ${PEAK[$seg]} kB = **$(mb "${PEAK[$seg]}") MiB** (${PEAK_PHASE[$seg]}; ${SAMPLES[$seg]} samples) | ${HWM[$seg]} kB = **$(mb "${HWM[$seg]}") MiB** | ${ANON[$seg]} kB | ${THREADS[$seg]} | ${DUR[$seg]} s (download and check at ${DL_MIBS[$seg]} MiB/s) | ${AFTER[$seg]} kB | $(goal "$worst") |"
done
SMAPS_MD=""
for seg in "${SEGMENTS[@]}"; do SMAPS_MD+="
- $seg-byte segments: ${SMAPS[$seg]}"; done

AGENT_VERSION="$("$AGENT_BIN" --version 2>/dev/null | head -n 1 || true)"
SUMMARY="$(cat <<EOF
## Agent upgrades ($(date -u +%Y-%m-%dT%H:%M:%SZ))

$(machine_md)
A shared 2-core machine (CPU in use by other work and the idle stack before measuring: $BACKGROUND_CORES cores).
The agent, the three services, PostgreSQL, Redis and RabbitMQ share the same two cores over loopback.

**Command**: \`BENCH_BIG_MB=$BIG_MB BENCH_SEGMENTS="${SEGMENTS[*]}" BENCH_SMALL_MB=$SMALL_MB BENCH_RUNS=$RUNS BENCH_LATENCY_KINDS="${KINDS[*]}" deploy/bench/agent-upgrade.sh\`
(defaults 256, 1048576, 10, 5, "dir file"). A real \`$AGENT_VERSION\` (release, its default log level),
long_poll = true, update_check_s = 0, health_check = ["true"]; the artifact store is a directory.

### Memory while downloading and installing ${BIG_MB} MiB

Component "app", kind "file" (random bytes: no archive to unpack), 1.0.0 → 2.0.0, one fresh agent per
segment size. VmRSS, RssAnon and Threads from /proc/PID/status every 0.1 s; VmHWM is the kernel's peak.

$MEM_TABLE

The samples by step of the upgrade (a step ends at the command's delivered_at or finished_at, or at
the agent's operations.log line of the step: verified, prepared, installed, committed):

| segment_bytes | step | duration | samples | peak VmRSS (MiB) | peak RssAnon (MiB) |
|---|---|---|---|---|---|$PHASE_MD

/proc/PID/smaps_rollup at the peak sample:
$SMAPS_MD

### Time from \`upgrade\` queued to \`succeeded\`, ${SMALL_MB} MiB

One agent, $RUNS upgrades per kind one after the other, each to a new version (a real download, stage,
swap, health check and commit every time); segment_bytes ${SEGMENTS[0]}.

$LATENCY_TABLE

The steps of each run (ms; created, delivered and finished from the API, the others from the agent's
operations.log: verified = downloaded and its SHA-256 checked, prepared = staged beside the component
(copied, or unpacked and synced), installed = swapped in, committed = health check passed and recorded;
committed→finished is the final report reaching the server):

$LATENCY_MD
EOF
)"
REPORT="$BENCH_OUT/agent-upgrade-$(date +%Y%m%d-%H%M%S).md"
printf '%s\n' "$SUMMARY" >"$REPORT"
printf '\n%s\n\n' "$SUMMARY"
log "written to $REPORT"
BENCH_FAILED=0
