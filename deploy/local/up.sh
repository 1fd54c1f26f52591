#!/usr/bin/env bash
# The whole Gantry stack on this machine: NATS (JetStream), the store, the four services and one
# local trainer. Installs what is missing, builds in release, prints the API URL, the docs URL and
# the admin credentials, and runs in the foreground until SIGINT/SIGTERM, then stops everything it
# started. Needs no terminal: everything is also written to $GANTRY_STATE_DIR/up.log.
#
# Every variable of the configuration table (README) that is set when calling this reaches the
# services. NATS_URL / MONGODB_URI point at existing servers instead of starting local ones.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$GANTRY_REPO"

export GANTRY_STATE_DIR="${GANTRY_STATE_DIR:-$GANTRY_REPO/.gantry}"
mkdir -p "$GANTRY_STATE_DIR/logs"
GANTRY_STATE_DIR="$(cd "$GANTRY_STATE_DIR" && pwd)"
exec > >(tee -a "$GANTRY_STATE_DIR/up.log") 2>&1

PIDS=()
NAMES=()
stop_all() {
    trap - INT TERM EXIT
    log "stopping"
    local i
    for (( i=${#PIDS[@]}-1; i>=0; i-- )); do kill -TERM "${PIDS[$i]}" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    log "stopped"
}
trap 'stop_all; exit 0' INT TERM
trap stop_all EXIT

ensure_tools
log "building (release)"
cargo build --release --bins --locked
BIN="${CARGO_TARGET_DIR:-$GANTRY_REPO/target}/release"

start() { # name, command... — runs in the background, output to logs/<name>.log
    local name="$1"; shift
    "$@" >>"$GANTRY_STATE_DIR/logs/$name.log" 2>&1 &
    PIDS+=("$!")
    NAMES+=("$name")
    log "started $name (pid $!)"
}
wait_port() { # port, what
    for _ in $(seq 1 150); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.2
    done
    die "$2 did not start on port $1 (see $GANTRY_STATE_DIR/logs)"
}

if [ -z "${NATS_URL:-}" ]; then
    # Locked down exactly as production: TLS from a local CA, a key per role with its
    # permissions, nodes admitted by their cluster token through the registry's auth callout.
    # Generated once into the state directory (keys are kept on later runs).
    port="${GANTRY_NATS_PORT:-4222}"
    BUS="$GANTRY_STATE_DIR/bus"
    "$BIN/gantry-registry" bus-config --dir "$BUS" --listen "127.0.0.1:$port" \
        --store-dir "$GANTRY_STATE_DIR/nats" >/dev/null || die "could not generate the NATS configuration"
    start nats nats-server -c "$BUS/nats-server.conf"
    wait_port "$port" nats-server
    export NATS_URL="nats://127.0.0.1:$port"
    export GANTRY_NATS_CA_FILE="$BUS/tls/ca.pem"
fi
# Each role's key, when the stack's own NATS (or the caller's GANTRY_BUS_DIR) has them.
BUS="${BUS:-${GANTRY_BUS_DIR:-}}"
role_env() { # role: the variables its service connects with
    [ -n "$BUS" ] || return 0
    echo "GANTRY_NATS_NKEY_FILE=$BUS/keys/$1.nk"
    if [ "$1" = registry ]; then
        echo "GANTRY_CALLOUT_ISSUER_FILE=$BUS/keys/callout-issuer.nk"
        echo "GANTRY_NATS_SYSTEM_NKEY_FILE=$BUS/keys/registry-system.nk"
    fi
}
if [ -z "${MONGODB_URI:-}" ]; then
    port="${GANTRY_STORE_PORT:-27017}"
    mkdir -p "$GANTRY_STATE_DIR/store"
    start store nx-27017 --host 127.0.0.1 -p "$port" --data-dir "$GANTRY_STATE_DIR/store" \
        --log-file "$GANTRY_STATE_DIR/logs/store-server.log" --pid-file "$GANTRY_STATE_DIR/store.pid"
    wait_port "$port" nx-27017
    export MONGODB_URI="mongodb://127.0.0.1:$port/?directConnection=true"
fi

# The first admin's credentials: the caller's, else generated once and kept in the state dir so a
# second run matches the admin the store already holds.
secrets="$GANTRY_STATE_DIR/admin.env"
if [ ! -f "$secrets" ]; then
    umask 077
    {
        echo "GANTRY_ADMIN_PASSWORD=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')"
        echo "GANTRY_ADMIN_API_TOKEN=gnt_$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    } >"$secrets"
    umask 022
fi
# shellcheck disable=SC1090
saved_password="$(sed -n 's/^GANTRY_ADMIN_PASSWORD=//p' "$secrets")"
saved_token="$(sed -n 's/^GANTRY_ADMIN_API_TOKEN=//p' "$secrets")"
export GANTRY_ADMIN_USER="${GANTRY_ADMIN_USER:-admin}"
export GANTRY_ADMIN_PASSWORD="${GANTRY_ADMIN_PASSWORD:-$saved_password}"
export GANTRY_ADMIN_API_TOKEN="${GANTRY_ADMIN_API_TOKEN:-$saved_token}"
export GANTRY_ADMIN_EMAIL="${GANTRY_ADMIN_EMAIL:-admin@localhost}"
export GANTRY_DATA_ROOT="${GANTRY_DATA_ROOT:-$GANTRY_STATE_DIR/data}"
mkdir -p "$GANTRY_DATA_ROOT"
# First run: an empty data root gets the example dataset (generated shapes, three classes), so
# the README's training examples work as written.
if [ -z "$(ls -A "$GANTRY_DATA_ROOT")" ]; then
    "$BIN/gantry-trainer" example-dataset "$GANTRY_DATA_ROOT/datasets/shapes" \
        || die "could not write the example dataset into $GANTRY_DATA_ROOT"
fi
export GANTRY_HTTP_ADDR="${GANTRY_HTTP_ADDR:-127.0.0.1:8080}"
host="${GANTRY_HTTP_ADDR%:*}"; [ "$host" = 0.0.0.0 ] && host=127.0.0.1
API_URL="${GANTRY_PUBLIC_URL:-http://$host:${GANTRY_HTTP_ADDR##*:}}"

# Each service keeps its own OTEL_SERVICE_NAME, whatever the caller set.
# shellcheck disable=SC2046
start auth env OTEL_SERVICE_NAME=gantry-auth $(role_env auth) "$BIN/gantry-auth"
# shellcheck disable=SC2046
start registry env OTEL_SERVICE_NAME=gantry-registry $(role_env registry) "$BIN/gantry-registry"
# shellcheck disable=SC2046
start api env OTEL_SERVICE_NAME=gantry-api $(role_env api) "$BIN/gantry-api"

ready=""
for _ in $(seq 1 300); do
    if curl -fsS "$API_URL/readyz" >/dev/null 2>&1; then ready=1; break; fi
    sleep 0.2
done
[ -n "$ready" ] || die "the api did not become ready (see $GANTRY_STATE_DIR/logs)"

umask 077
cat >"$GANTRY_STATE_DIR/env" <<ENV
GANTRY_API_URL=$API_URL
NATS_URL=$NATS_URL
GANTRY_NATS_CA_FILE=${GANTRY_NATS_CA_FILE:-}
GANTRY_BUS_DIR=$BUS
MONGODB_URI=$MONGODB_URI
GANTRY_DATA_ROOT=$GANTRY_DATA_ROOT
GANTRY_ADMIN_USER=$GANTRY_ADMIN_USER
GANTRY_ADMIN_API_TOKEN=$GANTRY_ADMIN_API_TOKEN
ENV
umask 022

# --- cluster (issue 4): a cluster token named `local`, kept in the state dir, and one local
# trainer node joining with it. deploy/local/trainer.sh starts more.
# shellcheck disable=SC2046
env $(role_env registry) "$BIN/gantry-registry" ensure-token local --file "$GANTRY_STATE_DIR/cluster_token" \
    || die "could not create the local cluster token (see $GANTRY_STATE_DIR/logs/registry.log)"
mkdir -p "$GANTRY_STATE_DIR/nodes/local/cache"
start trainer env OTEL_SERVICE_NAME=gantry-trainer GANTRY_NODE_NAME=local \
    GANTRY_CLUSTER_TOKEN="$(cat "$GANTRY_STATE_DIR/cluster_token")" \
    GANTRY_CACHE_DIR="$GANTRY_STATE_DIR/nodes/local/cache" "$BIN/gantry-trainer"
# --- end cluster

cat <<MSG

  Gantry is up.
    API        $API_URL
    API docs   $API_URL/admin/api/docs   (admin page: $API_URL/admin/api)
    admin      $GANTRY_ADMIN_USER / $GANTRY_ADMIN_PASSWORD
    API token  $GANTRY_ADMIN_API_TOKEN
    data root  $GANTRY_DATA_ROOT
    addresses  $GANTRY_STATE_DIR/env     logs  $GANTRY_STATE_DIR/logs
    cluster    token in $GANTRY_STATE_DIR/cluster_token; one trainer \`local\`; more: deploy/local/trainer.sh
    CLI        $BIN/gantry   (from this repository it finds this stack without login)
    try        $BIN/gantry train /datasets/shapes --output-model Shapes --epochs 25 --learning-rate 0.003 --image-size 32 --follow

  Stop with Ctrl-C (or SIGTERM).

MSG

# Foreground until a signal. A process that exits is reported and the rest keep running: the
# services wait for NATS and the store to come back (restart them by hand, or re-run this), so
# stopping NATS shows in /readyz without taking the stack down.
set +e
reported=()
while :; do
    wait -n "${PIDS[@]}" 2>/dev/null
    alive=0
    for i in "${!PIDS[@]}"; do
        if kill -0 "${PIDS[$i]}" 2>/dev/null; then
            alive=$((alive + 1))
        elif [ -z "${reported[$i]:-}" ]; then
            reported[$i]=1
            log "${NAMES[$i]} (pid ${PIDS[$i]}) exited; see $GANTRY_STATE_DIR/logs/${NAMES[$i]}.log"
        fi
    done
    [ "$alive" -gt 0 ] || break
    sleep 1
done
log "every process of the stack has exited"
