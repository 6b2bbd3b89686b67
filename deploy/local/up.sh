#!/usr/bin/env bash
# Bring the whole tend system up on this machine and show it working:
#   1. PostgreSQL, Redis, RabbitMQ (deploy/local/backing-services.sh),
#   2. release build of the binaries, database `tend`,
#   3. tend-platform :8080, tend-sync :8081, tend-monitor :8082 in the
#      background (stopping those of a previous run first), with the
#      metrics of platform and sync on :9080 and :9081,
#   4. a demo device "demo-kiosk" provisioned through the admin API and its
#      tend-agent running under deploy/demo/supervise.sh, with harmless fake
#      reboot/shutdown actions (deploy/demo/fake-*.sh) and a harmless
#      component "app" to upgrade (.tend-local/device/app, version 1.0.0,
#      health-checked by its selftest.sh); the sources of a good 2.0.0 and a
#      broken 3.0.0 go to .tend-local/demo-app/ (README: "Upgrading software"),
#   5. a reboot command queued and followed until it succeeds,
#   6. how to use the system and how to stop it (deploy/local/down.sh).
# Everything it creates lives in .tend-local/ at the repository root (logs,
# pid files, secrets, agent config and state).
# Usage: up.sh [--reset]   --reset: stop, drop database `tend` and delete
#                          .tend-local/ first (new admin password, new device)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
RUN="$ROOT/.tend-local"
BIN="$ROOT/target/release"
PLATFORM_URL="http://127.0.0.1:8080"
SYNC_URL="http://127.0.0.1:8081"
MONITOR_URL="http://127.0.0.1:8082"
# /metrics of tend-platform and tend-sync: a port of its own each.
PLATFORM_METRICS_URL="http://127.0.0.1:9080"
SYNC_METRICS_URL="http://127.0.0.1:9081"
READY_TIMEOUT_S=60
COMMAND_TIMEOUT_S=90

step() { echo; echo "==> $*"; }
info() { echo "    $*"; }
die() { echo "up.sh: ERROR: $*" >&2; exit 1; }

# tail_logs NAME...: show the end of .tend-local/NAME.log on stderr.
tail_logs() {
    local name
    for name in "$@"; do
        if [ -f "$RUN/$name.log" ]; then
            echo "----- last lines of $RUN/$name.log -----" >&2
            tail -n 30 "$RUN/$name.log" >&2
        fi
    done
    echo "----- (processes left running for inspection; stop them with deploy/local/down.sh)" >&2
}

fail_with_logs() {
    local msg="$1"; shift
    echo "up.sh: ERROR: $msg" >&2
    tail_logs "$@"
    exit 1
}

# json_get PATH: read JSON on stdin, print the value at PATH ("a.b.c"),
# strings raw, "" when missing, null or not JSON. jq when installed, else python3.
json_get() {
    if command -v jq >/dev/null 2>&1; then
        jq -r ".$1 // empty" 2>/dev/null || true
    else
        python3 -c '
import json, sys
try:
    v = json.load(sys.stdin)
except ValueError:
    v = None
for k in sys.argv[1].split("."):
    v = v.get(k) if isinstance(v, dict) else None
print("" if v is None else (v if isinstance(v, str) else json.dumps(v)))
' "$1" 2>/dev/null || true
    fi
}

json_pretty() {
    if command -v jq >/dev/null 2>&1; then jq . 2>/dev/null || cat
    else python3 -m json.tool 2>/dev/null || cat; fi
}

# json_obj KEY VALUE...: a JSON object of string values (safely quoted).
json_obj() {
    python3 -c '
import json, sys
a = sys.argv[1:]
print(json.dumps(dict(zip(a[0::2], a[1::2]))))
' "$@"
}

# toml_str VALUE: a TOML basic string.
toml_str() {
    local s="${1//\\/\\\\}"
    s="${s//\"/\\\"}"
    printf '"%s"' "$s"
}

# api METHOD PATH [BODY]: call the admin API. Sets API_STATUS and API_BODY;
# true for a 2xx answer. The token and the body go through files and stdin,
# not the command line (other users could read them in `ps`).
API_STATUS="" API_BODY=""
api() {
    local method="$1" path="$2" body="${3-}"
    local args=(-sS --max-time 15 -X "$method" -o "$RUN/.api-body" -w '%{http_code}'
                -H 'Accept: application/json')
    if [ -f "$RUN/.auth-header" ]; then args+=(-H "@$RUN/.auth-header"); fi
    if [ -n "$body" ]; then
        args+=(-H 'Content-Type: application/json' --data-binary @-)
    fi
    : >"$RUN/.api-body"
    API_STATUS="$(printf '%s' "$body" | curl "${args[@]}" "$PLATFORM_URL$path" 2>/dev/null)" \
        || API_STATUS="${API_STATUS:-000}"
    API_BODY="$(cat "$RUN/.api-body")"
    [[ "$API_STATUS" == 2* ]]
}

http_code() {
    curl -s -o /dev/null --max-time 3 -w '%{http_code}' "$1" 2>/dev/null || true
}

port_in_use() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

random_token() { # LENGTH: random [A-Za-z0-9] string
    local s=""
    while [ "${#s}" -lt "$1" ]; do
        s+="$(head -c 64 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
    done
    printf '%s' "${s:0:$1}"
}

# secret_file FILE LENGTH: create FILE (mode 600) with a random value once.
secret_file() {
    if [ ! -s "$1" ]; then
        (umask 077; random_token "$2" >"$1")
    fi
    chmod 600 "$1"
}

# rotate_log NAME: keep the previous run's log as NAME.log.1.
rotate_log() {
    if [ -f "$RUN/$1.log" ]; then mv -f "$RUN/$1.log" "$RUN/$1.log.1"; fi
}

# The API scratch files hold the admin token and the device secret.
trap 'rm -f "$RUN/.api-body" "$RUN/.auth-header"' EXIT

# --- 0. options ---------------------------------------------------------------
RESET=0
for arg in "$@"; do
    case "$arg" in
        --reset) RESET=1 ;;
        -h|--help) sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $arg (see --help)" ;;
    esac
done

command -v curl >/dev/null 2>&1 || die "curl is required"
command -v python3 >/dev/null 2>&1 || die "python3 is required"
command -v cargo >/dev/null 2>&1 || die "cargo is required (install Rust)"

# --- 1. backing services ------------------------------------------------------
step "backing services"
bash "$ROOT/deploy/local/backing-services.sh"

# --- 2. build -------------------------------------------------------------------
LOCKED=()
if [ -f Cargo.lock ]; then LOCKED=(--locked); fi
step "cargo build --release --workspace --bins ${LOCKED[*]}"
cargo build --release --workspace --bins "${LOCKED[@]}" || die "build failed"
for b in tend-platform tend-sync tend-monitor tend-agent; do
    [ -x "$BIN/$b" ] || die "$BIN/$b was not built"
done

# --- 3. previous run, run directory, database ----------------------------------
umask 077   # from here on: .tend-local holds secrets, keep everything in it private
step "run directory $RUN"
if [ -d "$RUN" ]; then
    bash "$ROOT/deploy/local/down.sh"
fi
if [ "$RESET" = 1 ]; then
    info "--reset: dropping database tend and deleting $RUN"
    dropdb -w -h 127.0.0.1 -U postgres --if-exists tend || die "dropdb tend failed"
    rm -rf "$RUN"
fi
mkdir -p "$RUN" "$RUN/agent-state"
chmod 700 "$RUN"

if ! psql -X -w -h 127.0.0.1 -U postgres -d postgres -tAc \
        "select 1 from pg_database where datname='tend'" | grep -q 1; then
    createdb -w -h 127.0.0.1 -U postgres tend || die "createdb tend failed"
    info "database tend created"
else
    info "database tend exists"
fi

# A token key per service: the platform's signs admin tokens, sync's device
# tokens; neither service gets the other's.
secret_file "$RUN/admin_token_key" 64
secret_file "$RUN/device_token_key" 64
rm -f "$RUN/jwt_secret"   # the single key of earlier releases
secret_file "$RUN/admin_password" 20
ADMIN_USER="admin"
ADMIN_PASSWORD="$(cat "$RUN/admin_password")"

export TEND_DATABASE_URL="postgres://postgres@127.0.0.1:5432/tend"
export TEND_REDIS_URL="redis://127.0.0.1:6379"
export TEND_AMQP_URL="amqp://guest:guest@127.0.0.1:5672/%2f"
export TEND_INSTANCE="tend-local"
# Keys reach only their service (below), never from the caller's shell.
unset TEND_JWT_SECRET TEND_ADMIN_TOKEN_KEY TEND_ADMIN_TOKEN_PREVIOUS_KEYS \
    TEND_DEVICE_TOKEN_KEY TEND_DEVICE_TOKEN_PREVIOUS_KEYS
export TEND_BOOTSTRAP_ADMIN="$ADMIN_USER:$ADMIN_PASSWORD"
export TEND_HEARTBEAT_S=5
# Artifact bytes in a directory of the run, shared by platform and sync.
export TEND_ARTIFACT_STORE="file://$RUN/artifacts"
export TEND_LOG="${TEND_LOG:-info}"

# --- 4. services ----------------------------------------------------------------
SERVICES=(tend-platform tend-sync tend-monitor)
declare -A LISTEN=([tend-platform]=127.0.0.1:8080 [tend-sync]=127.0.0.1:8081 [tend-monitor]=127.0.0.1:8082)
# The monitor's one port is its metrics port: it has no TEND_METRICS_LISTEN.
declare -A METRICS_LISTEN=([tend-platform]=127.0.0.1:9080 [tend-sync]=127.0.0.1:9081 [tend-monitor]=)
declare -A URL=([tend-platform]="$PLATFORM_URL" [tend-sync]="$SYNC_URL" [tend-monitor]="$MONITOR_URL")

step "services"
for svc in "${SERVICES[@]}"; do
    for addr in "${LISTEN[$svc]}" ${METRICS_LISTEN[$svc]}; do
        port="${addr##*:}"
        if port_in_use "$port"; then
            die "port $port (for $svc) is already in use by a process up.sh did not start; free it first"
        fi
    done
done
# The platform signs every instruction with its own Ed25519 key (made once,
# kept in the run directory); the demo agent pins the public key and runs
# nothing else. Only the platform is given the key.
SIGNING_PUBLIC_KEY="$("$BIN/tend-platform" signing-key --create "$RUN/signing-key.pem" 2>/dev/null)" \
    || die "cannot make or read the instruction-signing key $RUN/signing-key.pem"
for svc in "${SERVICES[@]}"; do
    rotate_log "$svc"
    metrics_env=()
    if [ -n "${METRICS_LISTEN[$svc]}" ]; then
        metrics_env=(TEND_METRICS_LISTEN="${METRICS_LISTEN[$svc]}")
    fi
    # setsid: own session, so a Ctrl-C in this terminal does not reach them.
    # The keys go through the environment of a subshell, not a command line
    # that `ps` shows; the monitor needs none.
    (
        case "$svc" in
            tend-platform) TEND_ADMIN_TOKEN_KEY="$(cat "$RUN/admin_token_key")"
                           export TEND_ADMIN_TOKEN_KEY
                           export TEND_SIGNING_KEY_FILE="$RUN/signing-key.pem" ;;
            tend-sync)     TEND_DEVICE_TOKEN_KEY="$(cat "$RUN/device_token_key")"
                           export TEND_DEVICE_TOKEN_KEY ;;
        esac
        exec env TEND_LISTEN="${LISTEN[$svc]}" "${metrics_env[@]}" setsid "$BIN/$svc" </dev/null >>"$RUN/$svc.log" 2>&1
    ) &
    echo $! >"$RUN/$svc.pid"
    info "$svc started (pid $!, log $RUN/$svc.log)"
done

for svc in "${SERVICES[@]}"; do
    pid="$(cat "$RUN/$svc.pid")"
    deadline=$((SECONDS + READY_TIMEOUT_S))
    until [ "$(http_code "${URL[$svc]}/readyz")" = 200 ]; do
        if ! kill -0 "$pid" 2>/dev/null; then
            fail_with_logs "$svc (pid $pid) exited during startup" "$svc"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            fail_with_logs "$svc did not answer 200 on ${URL[$svc]}/readyz within ${READY_TIMEOUT_S}s" "$svc"
        fi
        sleep 1
    done
    info "$svc ready on ${URL[$svc]}"
done

# --- 5. admin login, demo device -----------------------------------------------
step "demo device"
rm -f "$RUN/.auth-header"
api POST /api/v1/auth/login "$(json_obj username "$ADMIN_USER" password "$ADMIN_PASSWORD")" \
    || fail_with_logs "admin login failed (HTTP $API_STATUS): $API_BODY
    If database tend already had users from an earlier setup, the bootstrap admin
    was not created with the password in $RUN/admin_password: run 'deploy/local/up.sh --reset'." tend-platform
TOKEN="$(json_get access_token <<<"$API_BODY")"
[ -n "$TOKEN" ] || die "login answer has no access_token: $API_BODY"
(umask 077; printf 'Authorization: Bearer %s\n' "$TOKEN" >"$RUN/.auth-header")

DEVICE_ID=""
if [ -f "$RUN/agent.toml" ] && [ -s "$RUN/device_secret" ]; then
    DEVICE_ID="$(sed -n 's/^device_id = "\(.*\)"$/\1/p' "$RUN/agent.toml")"
    if [ -n "$DEVICE_ID" ] && api GET "/api/v1/devices/$DEVICE_ID"; then
        info "reusing device demo-kiosk $DEVICE_ID"
    else
        info "device ${DEVICE_ID:-?} from $RUN/agent.toml is unknown to the platform (HTTP $API_STATUS): provisioning a new one"
        DEVICE_ID=""
    fi
fi
if [ -z "$DEVICE_ID" ]; then
    api POST /api/v1/devices '{"name":"demo-kiosk","device_type":"kiosk","labels":{"site":"demo"}}' \
        || fail_with_logs "creating the demo device failed (HTTP $API_STATUS): $API_BODY" tend-platform
    DEVICE_ID="$(json_get id <<<"$API_BODY")"
    CRED_ID="$(json_get credentials.device_id <<<"$API_BODY")"
    CRED_SECRET="$(json_get credentials.secret <<<"$API_BODY")"
    if [ -z "$DEVICE_ID" ] || [ -z "$CRED_SECRET" ]; then
        die "device answer lacks id or credentials.secret: $API_BODY"
    fi
    [ -z "$CRED_ID" ] || [ "$CRED_ID" = "$DEVICE_ID" ] \
        || die "device answer: credentials.device_id $CRED_ID differs from id $DEVICE_ID"
    (umask 077; printf '%s' "$CRED_SECRET" >"$RUN/device_secret")
    # A new device starts with a fresh journal, and its app at 1.0.0.
    rm -rf "$RUN/agent-state" "$RUN/device"; mkdir -p "$RUN/agent-state"
    info "device demo-kiosk provisioned: $DEVICE_ID"
fi
chmod 600 "$RUN/device_secret"
echo "$DEVICE_ID" >"$RUN/device_id"

if [ ! -s "$RUN/boot_id" ]; then
    cat /proc/sys/kernel/random/uuid >"$RUN/boot_id"
fi
[ -f "$RUN/demo-app.log" ] || : >"$RUN/demo-app.log"
echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) demo app: up.sh started the demo system" >>"$RUN/demo-app.log"

# The demo device's component "app": a directory with a VERSION file, a
# MARKER file and selftest.sh, the health check the agent runs after each
# install. Created at 1.0.0 once; upgrades and restores change it from then on.
# demo_app DIR VERSION [broken]: write the app's files at VERSION into DIR;
# "broken" leaves MARKER out, so that version's self-test fails.
demo_app() {
    local dir="$1" version="$2" broken="${3-}"
    rm -rf "$dir"
    mkdir -p "$dir"
    printf '%s\n' "$version" >"$dir/VERSION"
    printf '<h1>demo kiosk app %s</h1>\n' "$version" >"$dir/index.html"
    if [ "$broken" != broken ]; then
        printf 'healthy\n' >"$dir/MARKER"
    fi
    cat >"$dir/selftest.sh" <<'SELFTEST'
#!/bin/sh
# The demo app's self-test: tend-agent runs it as the component's health
# check after an install (TEND_VERSION: the version under check) and rolls
# the install back when it fails.
here="$(cd "$(dirname "$0")" && pwd)"
if [ ! -f "$here/MARKER" ]; then
    echo "selftest: $here/MARKER is missing: this build is broken" >&2
    exit 1
fi
running="$(cat "$here/VERSION")"
if [ -n "${TEND_VERSION:-}" ] && [ "$running" != "$TEND_VERSION" ]; then
    echo "selftest: VERSION says $running, expected $TEND_VERSION" >&2
    exit 1
fi
echo "selftest: demo app $running is healthy"
SELFTEST
    chmod 755 "$dir/selftest.sh"
}
APP="$RUN/device/app"
if [ ! -f "$APP/VERSION" ]; then
    mkdir -p "$RUN/device"
    demo_app "$APP" 1.0.0
    info "demo component app 1.0.0 in $APP"
fi
# The sources of the versions the README upgrades to (rewritten every run).
demo_app "$RUN/demo-app/2.0.0" 2.0.0
demo_app "$RUN/demo-app/3.0.0-broken" 3.0.0 broken

cat >"$RUN/agent.toml" <<EOF
# Written by deploy/local/up.sh (regenerated on every run).
# Ask for updates every 30 s, so that a released version arrives quickly.
update_check_s = 30
server_url = $(toml_str "$SYNC_URL")
device_id = $(toml_str "$DEVICE_ID")
device_secret_file = $(toml_str "$RUN/device_secret")
state_dir = $(toml_str "$RUN/agent-state")
boot_id_file = $(toml_str "$RUN/boot_id")
# The platform's instruction-signing public key (tend-platform signing-key).
signing_keys = [$(toml_str "$SIGNING_PUBLIC_KEY")]

[actions]
reboot = [$(toml_str "$ROOT/deploy/demo/fake-reboot.sh"), $(toml_str "$RUN/boot_id")]
shutdown = [$(toml_str "$ROOT/deploy/demo/fake-shutdown.sh"), $(toml_str "$RUN/fake-shutdown.log")]

[log_sources]
demo = $(toml_str "$RUN/demo-app.log")

[components.app]
kind = "dir"
path = $(toml_str "$APP")
health_check = ["sh", $(toml_str "$APP/selftest.sh")]
health_timeout_s = 30
EOF

rotate_log agent
# The agent needs none of the services' secrets.
env -u TEND_BOOTSTRAP_ADMIN -u TEND_DATABASE_URL \
    -u TEND_REDIS_URL -u TEND_AMQP_URL -u TEND_INSTANCE -u TEND_HEARTBEAT_S \
    setsid bash "$ROOT/deploy/demo/supervise.sh" "$BIN/tend-agent" --config "$RUN/agent.toml" \
    </dev/null >>"$RUN/agent.log" 2>&1 &
echo $! >"$RUN/agent.pid"
info "tend-agent started under deploy/demo/supervise.sh (supervisor pid $!, log $RUN/agent.log)"

deadline=$((SECONDS + 30))
status=""
while [ "$SECONDS" -lt "$deadline" ]; do
    if api GET "/api/v1/devices/$DEVICE_ID"; then
        status="$(json_get status <<<"$API_BODY")"
        [ "$status" = online ] && break
    fi
    kill -0 "$(cat "$RUN/agent.pid")" 2>/dev/null || fail_with_logs "the agent supervisor exited" agent
    sleep 1
done
if [ "$status" = online ]; then
    info "device demo-kiosk is online"
else
    echo "up.sh: WARNING: device not reported online after 30s (status: ${status:-?}); trying the reboot anyway" >&2
fi

# --- 6. show it working: a (fake) reboot ------------------------------------------
step "queue a reboot of demo-kiosk and follow it"
api POST "/api/v1/devices/$DEVICE_ID/commands" '{"kind":"reboot"}' \
    || fail_with_logs "queueing the reboot failed (HTTP $API_STATUS): $API_BODY" tend-platform
CMD_ID="$(json_get id <<<"$API_BODY")"
[ -n "$CMD_ID" ] || die "command answer has no id: $API_BODY"
info "command $CMD_ID queued"

last=""
deadline=$((SECONDS + COMMAND_TIMEOUT_S))
while :; do
    if api GET "/api/v1/commands/$CMD_ID"; then
        status="$(json_get status <<<"$API_BODY")"
        if [ "$status" != "$last" ]; then
            info "$(date +%H:%M:%S) status: $status"
            last="$status"
        fi
        case "$status" in
            succeeded) break ;;
            failed|rejected|timed_out|expired|cancelled)
                json_pretty <<<"$API_BODY" >&2
                fail_with_logs "the reboot command ended '$status'" agent tend-sync tend-monitor fake-reboot ;;
        esac
    else
        info "GET /api/v1/commands/$CMD_ID: HTTP $API_STATUS"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
        json_pretty <<<"$API_BODY" >&2
        fail_with_logs "the reboot command did not succeed within ${COMMAND_TIMEOUT_S}s (last status: ${last:-?})" \
            agent tend-sync tend-monitor tend-platform fake-reboot
    fi
    sleep 1
done
json_pretty <<<"$API_BODY"
info "the agent was restarted with a new boot id: $(cat "$RUN/boot_id")"

# --- 7. how to use it -------------------------------------------------------------
cat <<EOF

==> tend is up (instance tend-local)
    admin API    $PLATFORM_URL   (OpenAPI: $PLATFORM_URL/api/v1/openapi.json)
    device API   $SYNC_URL
    metrics      $PLATFORM_METRICS_URL/metrics (platform), $SYNC_METRICS_URL/metrics (sync),
                 $MONITOR_URL/metrics (monitor)
    admin login  username: $ADMIN_USER   password: $ADMIN_PASSWORD
                 (kept in $RUN/admin_password)
    demo device  demo-kiosk $DEVICE_ID (agent config $RUN/agent.toml)
    demo app     $APP at version $(cat "$APP/VERSION");
                 a good 2.0.0 and a broken 3.0.0 to upgrade to in $RUN/demo-app/
                 (README.md, "Upgrading software")

    Try it:
      TOKEN=\$(curl -s -X POST $PLATFORM_URL/api/v1/auth/login -H 'Content-Type: application/json' \\
          -d '{"username":"$ADMIN_USER","password":"'"\$(cat $RUN/admin_password)"'"}' \\
          | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
      curl -s -H "Authorization: Bearer \$TOKEN" $PLATFORM_URL/api/v1/devices
      curl -s -X POST -H "Authorization: Bearer \$TOKEN" -H 'Content-Type: application/json' \\
          -d '{"kind":"reboot"}' \\
          $PLATFORM_URL/api/v1/devices/$DEVICE_ID/commands

    Logs: $RUN/{tend-platform,tend-sync,tend-monitor,agent}.log
    Stop: deploy/local/down.sh   (PostgreSQL, Redis and RabbitMQ keep running)
EOF
