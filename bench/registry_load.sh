#!/usr/bin/env bash
# Load check of one cluster registry: 5,000 simulated nodes (default) heartbeating every 5 s.
# Starts its own nats-server and store on free ports in a temporary directory, a release
# gantry-registry against them, and the registry-load simulator, which registers the nodes over
# NATS, publishes their heartbeats spread over the interval, and reports the registry's CPU and
# memory (from /proc) and nodes.list latency percentiles (full listings, every page).
#
#   bench/registry_load.sh [--nodes 5000] [--interval 5] [--warmup 15] [--duration 60]
#
# Not a test: nothing asserts on the figures (it fails only if nodes end up disconnected).
set -euo pipefail
source "$(dirname "$0")/../deploy/local/lib.sh"
source "$(dirname "$0")/registry_stack.sh"
cd "$GANTRY_REPO"

INTERVAL=5
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    [ "${args[$i]}" = "--interval" ] && INTERVAL="${args[$((i + 1))]}"
done

start_registry_stack "$INTERVAL"
log "simulating"
"$BIN/registry-load" --registry-pid "$registry_pid" "$@" || { tail -20 "$registry_log"; exit 1; }
