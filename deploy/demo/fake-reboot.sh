#!/usr/bin/env bash
# Demo "reboot" action for tend-agent (deploy/local/up.sh configures it as
# [actions] reboot). Harmless: nothing is rebooted. It simulates one by
#   1. writing a new random boot id into BOOT_ID_FILE (the agent's boot_id_file),
#   2. appending a line to fake-reboot.log next to that file,
#   3. sending SIGTERM to the tend-agent that ran it, one second after this
#      script has exited 0, so the agent's supervisor (deploy/demo/supervise.sh)
#      restarts it; the restarted agent sees the changed boot id and reports
#      the reboot succeeded.
# Usage: fake-reboot.sh BOOT_ID_FILE
set -euo pipefail

if [ "$#" -ne 1 ]; then
    echo "usage: $0 BOOT_ID_FILE" >&2
    exit 2
fi
boot_id_file="$1"
log="$(dirname "$boot_id_file")/fake-reboot.log"

# Find the tend-agent that ran us: our parent, or the nearest ancestor named
# tend-agent (in case the action was wrapped in a shell). Captured now, before
# anything is backgrounded.
agent_pid=""
pid="$PPID"
while [ -n "$pid" ] && [ "$pid" -gt 1 ] && [ -r "/proc/$pid/comm" ]; do
    # comm is the binary's name; argv[0]/argv[1] catch an interpreter-run agent.
    argv="$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | head -n 2 | xargs -r -d '\n' -n 1 basename 2>/dev/null || true)"
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "tend-agent" ] || grep -qx 'tend-agent' <<<"$argv"; then
        agent_pid="$pid"
        break
    fi
    pid="$(awk '{ print $4 }' "/proc/$pid/stat" 2>/dev/null || true)"
done

old_id="$(cat "$boot_id_file" 2>/dev/null || echo none)"
new_id="$(cat /proc/sys/kernel/random/uuid)"
tmp="$boot_id_file.tmp.$$"
printf '%s\n' "$new_id" >"$tmp"
mv -f "$tmp" "$boot_id_file"

now="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
if [ -n "$agent_pid" ]; then
    echo "$now fake reboot: boot id $old_id -> $new_id; restarting tend-agent pid $agent_pid" >>"$log"
    # Detached from our stdout/stderr so the agent is not kept waiting on them.
    ( sleep 1; kill -TERM "$agent_pid" 2>/dev/null || true ) </dev/null >/dev/null 2>&1 &
    echo "fake reboot scheduled: boot id $old_id -> $new_id, tend-agent (pid $agent_pid) restarts in 1s"
else
    echo "$now fake reboot: boot id $old_id -> $new_id; no tend-agent ancestor found, nothing restarted" >>"$log"
    echo "fake reboot: boot id changed to $new_id, but no tend-agent ancestor was found to restart" >&2
fi
exit 0
