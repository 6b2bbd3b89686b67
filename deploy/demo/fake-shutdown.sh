#!/usr/bin/env bash
# Demo "shutdown" action for tend-agent (deploy/local/up.sh configures it as
# [actions] shutdown). Harmless: nothing is powered off. It only records that
# a shutdown was requested (on stdout, which the agent reports as the output,
# and in LOG_FILE when given) and exits 0, which the agent reports as success.
# Usage: fake-shutdown.sh [LOG_FILE]
set -euo pipefail

line="$(date -u +%Y-%m-%dT%H:%M:%SZ) fake shutdown requested (nothing was powered off)"
if [ "$#" -ge 1 ] && [ -n "$1" ]; then
    echo "$line" >>"$1"
fi
echo "$line"
exit 0
