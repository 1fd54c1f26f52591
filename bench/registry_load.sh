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
cd "$GANTRY_REPO"

INTERVAL=5
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    [ "${args[$i]}" = "--interval" ] && INTERVAL="${args[$((i + 1))]}"
done

ensure_tools
log "building gantry-registry and registry-load (release)"
cargo build --release --locked -p gantry-registry --bins
BIN="${CARGO_TARGET_DIR:-$GANTRY_REPO/target}/release"

work="$(mktemp -d)"
PIDS=()
cleanup() { # the registry first, while NATS and the store are still there
    local i
    for (( i=${#PIDS[@]}-1; i>=0; i-- )); do kill "${PIDS[$i]}" 2>/dev/null || true; wait "${PIDS[$i]}" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 1 150); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.2; done
    die "nothing listens on port $1"
}

nats_port="$(free_port)"; store_port="$(free_port)"; health_port="$(free_port)"
nats-server -a 127.0.0.1 -p "$nats_port" -js -sd "$work/js" >"$work/nats.log" 2>&1 & PIDS+=("$!")
mkdir -p "$work/store"
nx-27017 --host 127.0.0.1 -p "$store_port" --data-dir "$work/store" --log-file "$work/store.log" \
    --pid-file "$work/store.pid" >/dev/null 2>&1 & PIDS+=("$!")
wait_port "$nats_port"; wait_port "$store_port"

export NATS_URL="nats://127.0.0.1:$nats_port"
RUST_LOG=warn NATS_URL="$NATS_URL" MONGODB_URI="mongodb://127.0.0.1:$store_port/?directConnection=true" \
    GANTRY_DB_PREFIX=load_ GANTRY_HEALTH_ADDR="127.0.0.1:$health_port" GANTRY_HEARTBEAT_INTERVAL="$INTERVAL" \
    "$BIN/gantry-registry" >"$work/registry.log" 2>&1 &
registry_pid=$!
PIDS+=("$registry_pid")
for _ in $(seq 1 150); do
    curl -fsS "http://127.0.0.1:$health_port/readyz" >/dev/null 2>&1 && break
    sleep 0.2
done
curl -fsS "http://127.0.0.1:$health_port/readyz" >/dev/null || { cat "$work/registry.log"; die "registry not ready"; }

log "registry pid $registry_pid on $(nproc) CPU(s); simulating"
"$BIN/registry-load" --registry-pid "$registry_pid" "$@" || { tail -20 "$work/registry.log"; exit 1; }
