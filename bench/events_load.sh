#!/usr/bin/env bash
# How fast one registry applies job events. Starts its own nats-server and store on free ports in
# a temporary directory and a release gantry-registry against them; events-load records the jobs,
# publishes their events interleaved (started, progress ..., completed) and times the registry's
# consumer until nothing is pending. The baseline, measured first in the same run against the
# same store, is the store's own rate of sequential read-then-write round trips: the registry
# applies events one at a time (in order across replicas), so that rate bounds it.
#
#   bench/events_load.sh [--jobs 100] [--events-per-job 20] [--baseline-ops 1000]
#
# Not a test: it fails only if some job does not end completed.
set -euo pipefail
source "$(dirname "$0")/../deploy/local/lib.sh"
source "$(dirname "$0")/registry_stack.sh"
cd "$GANTRY_REPO"

start_registry_stack
log "publishing job events"
"$BIN/events-load" "$@" || { tail -20 "$registry_log"; exit 1; }
