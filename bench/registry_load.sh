#!/usr/bin/env bash
# Load check of one cluster registry: 5,000 simulated nodes (default) heartbeating every 5 s.
# Starts its own nats-server and store on free ports in a temporary directory, a release
# gantry-registry against them, and the registry-load simulator, which registers the nodes over
# NATS, publishes their heartbeats spread over the interval, and reports the registry's CPU and
# memory (from /proc) and nodes.list latency percentiles (full listings, every page).
#
# With --http, also the listing operators get: release gantry-auth and gantry-api join the stack,
# and full GET /api/admin/cluster_nodes listings are timed through the api, one at a time and
# from --http-clients at once, against a baseline measured in the same run: listing-baseline, the
# same HTTP stack (poem) serving the same bytes from memory. It prints the throughput ratio and
# the registry's CPU meanwhile.
#
#   bench/registry_load.sh [--nodes 5000] [--interval 5] [--warmup 15] [--duration 60]
#                          [--list-every 0.5] [--http [--http-clients 4] [--http-duration 10]]
#
# Not a test: nothing asserts on the figures (it fails only if nodes end up disconnected).
set -euo pipefail
source "$(dirname "$0")/../deploy/local/lib.sh"
source "$(dirname "$0")/registry_stack.sh"
cd "$GANTRY_REPO"

INTERVAL=5
HTTP=""
args=()
for a in "$@"; do
    if [ "$a" = "--http" ]; then HTTP=1; else args+=("$a"); fi
done
for ((i = 0; i < ${#args[@]}; i++)); do
    [ "${args[$i]}" = "--interval" ] && INTERVAL="${args[$((i + 1))]}"
done

[ -n "$HTTP" ] && export STACK_PACKAGES="-p gantry-registry -p gantry-auth -p gantry-api"
start_registry_stack "$INTERVAL"
if [ -n "$HTTP" ]; then
    export GANTRY_ADMIN_API_TOKEN="gnt_bench$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    auth_health="$(free_port)"; api_port="$(free_port)"; baseline_port="$(free_port)"
    mkdir -p "$STACK_DIR/data"
    RUST_LOG=warn GANTRY_DB_PREFIX=load_ GANTRY_HEALTH_ADDR="127.0.0.1:$auth_health" \
        GANTRY_ADMIN_USER=admin GANTRY_ADMIN_PASSWORD="bench-$RANDOM-$RANDOM" GANTRY_ADMIN_EMAIL=admin@localhost \
        "$BIN/gantry-auth" >"$STACK_DIR/auth.log" 2>&1 & STACK_PIDS+=("$!")
    RUST_LOG=warn GANTRY_HTTP_ADDR="127.0.0.1:$api_port" GANTRY_DATA_ROOT="$STACK_DIR/data" \
        "$BIN/gantry-api" >"$STACK_DIR/api.log" 2>&1 & STACK_PIDS+=("$!")
    "$BIN/listing-baseline" "127.0.0.1:$baseline_port" >"$STACK_DIR/baseline.log" 2>&1 & STACK_PIDS+=("$!")
    for _ in $(seq 1 150); do
        curl -fsS "http://127.0.0.1:$api_port/readyz" >/dev/null 2>&1 && break
        sleep 0.2
    done
    curl -fsS "http://127.0.0.1:$api_port/readyz" >/dev/null || { cat "$STACK_DIR"/*.log; die "api not ready"; }
    wait_port "$baseline_port"
    args+=(--api-url "http://127.0.0.1:$api_port" --baseline-url "http://127.0.0.1:$baseline_port")
fi
log "simulating"
"$BIN/registry-load" --registry-pid "$registry_pid" "${args[@]}" || {
    tail -20 "$registry_log"; [ -n "$HTTP" ] && tail -20 "$STACK_DIR/api.log"; exit 1
}
