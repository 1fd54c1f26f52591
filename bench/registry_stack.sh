# Shared by the registry benchmarks; source it after deploy/local/lib.sh. `start_registry_stack`
# builds the release registry and its load bins, starts a nats-server (JetStream) and a store on
# free ports in a temporary directory and one gantry-registry against them, then exports
# NATS_URL and MONGODB_URI, and sets BIN, registry_pid and registry_log. Everything it started
# stops, and the directory goes, when the calling script exits.

start_registry_stack() { # [heartbeat interval seconds, default 5]
    local interval="${1:-5}"
    ensure_tools
    log "building gantry-registry and its load bins (release)"
    # One build for every package the caller needs (STACK_PACKAGES): built apart, their shared
    # dependencies would be rebuilt with other features each time.
    # shellcheck disable=SC2086
    cargo build --release --locked ${STACK_PACKAGES:--p gantry-registry} --bins
    BIN="${CARGO_TARGET_DIR:-$GANTRY_REPO/target}/release"

    STACK_DIR="$(mktemp -d)"
    STACK_PIDS=()
    trap stop_registry_stack EXIT

    local nats_port store_port health_port
    nats_port="$(free_port)"; store_port="$(free_port)"; health_port="$(free_port)"
    nats-server -a 127.0.0.1 -p "$nats_port" -js -sd "$STACK_DIR/js" >"$STACK_DIR/nats.log" 2>&1 & STACK_PIDS+=("$!")
    mkdir -p "$STACK_DIR/store"
    nx-27017 --host 127.0.0.1 -p "$store_port" --data-dir "$STACK_DIR/store" --log-file "$STACK_DIR/store.log" \
        --pid-file "$STACK_DIR/store.pid" >/dev/null 2>&1 & STACK_PIDS+=("$!")
    wait_port "$nats_port"; wait_port "$store_port"

    export NATS_URL="nats://127.0.0.1:$nats_port"
    export MONGODB_URI="mongodb://127.0.0.1:$store_port/?directConnection=true"
    registry_log="$STACK_DIR/registry.log"
    RUST_LOG="${BENCH_RUST_LOG:-warn}" GANTRY_DB_PREFIX=load_ GANTRY_HEALTH_ADDR="127.0.0.1:$health_port" GANTRY_HEARTBEAT_INTERVAL="$interval" \
        "$BIN/gantry-registry" >"$registry_log" 2>&1 &
    registry_pid=$!
    STACK_PIDS+=("$registry_pid")
    for _ in $(seq 1 150); do
        curl -fsS "http://127.0.0.1:$health_port/readyz" >/dev/null 2>&1 && break
        sleep 0.2
    done
    curl -fsS "http://127.0.0.1:$health_port/readyz" >/dev/null || { cat "$registry_log"; die "registry not ready"; }
    log "registry pid $registry_pid on $(nproc) CPU(s)"
}

start_extra_registry() { # another replica against the same stack, ready
    local health_port log_file
    health_port="$(free_port)"; log_file="$STACK_DIR/registry-$health_port.log"
    RUST_LOG="${BENCH_RUST_LOG:-warn}" GANTRY_DB_PREFIX=load_ GANTRY_HEALTH_ADDR="127.0.0.1:$health_port" \
        "$BIN/gantry-registry" >"$log_file" 2>&1 & STACK_PIDS+=("$!")
    for _ in $(seq 1 150); do
        curl -fsS "http://127.0.0.1:$health_port/readyz" >/dev/null 2>&1 && break
        sleep 0.2
    done
    curl -fsS "http://127.0.0.1:$health_port/readyz" >/dev/null || { cat "$log_file"; die "registry not ready"; }
    log "another registry replica, pid $!"
}

stop_registry_stack() { # the registry first, while NATS and the store are still there
    local i
    for (( i=${#STACK_PIDS[@]}-1; i>=0; i-- )); do
        kill "${STACK_PIDS[$i]}" 2>/dev/null || true; wait "${STACK_PIDS[$i]}" 2>/dev/null || true
    done
    rm -rf "$STACK_DIR"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 1 150); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.2; done
    die "nothing listens on port $1"
}
