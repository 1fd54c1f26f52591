#!/usr/bin/env bash
# How fast registry replicas apply job events. Starts its own nats-server and store on free ports
# in a temporary directory and REPLICAS (default 1) release gantry-registry replicas against them;
# events-load records the jobs, publishes their events interleaved (started, progress ...,
# completed) and times the registry's consumer until nothing is pending. The baseline, measured
# first in the same run against the same store, is the store's own rate of sequential
# read-then-write round trips: what one event applied at a time, in order, would be bound by.
#
#   REPLICAS=2 bench/events_load.sh [--jobs 100] [--events-per-job 20] [--baseline-ops 1000]
#
# Not a test: it fails only if some job does not end completed.
set -euo pipefail
source "$(dirname "$0")/../deploy/local/lib.sh"
source "$(dirname "$0")/registry_stack.sh"
cd "$GANTRY_REPO"

start_registry_stack
for _ in $(seq 2 "${REPLICAS:-1}"); do start_extra_registry; done
log "publishing job events"
"$BIN/events-load" "$@" || { tail -20 "$registry_log"; exit 1; }
# BENCH_KEEP_LOG=FILE keeps the (first) registry's log, e.g. with BENCH_RUST_LOG=debug.
if [ -n "${BENCH_KEEP_LOG:-}" ]; then cp "$registry_log" "$BENCH_KEEP_LOG"; fi
