#!/usr/bin/env bash
# One more trainer node, in the foreground, against a running local stack (deploy/local/up.sh).
#
#   GANTRY_NODE_NAME=node2 GANTRY_WORKERS=2 deploy/local/trainer.sh
#
# NATS_URL comes from $GANTRY_STATE_DIR/env (written by up.sh) and the cluster token from
# $GANTRY_STATE_DIR/cluster_token (the `local` token up.sh created); GANTRY_CLUSTER_TOKEN, NATS_URL,
# GANTRY_NODE_NAME (default: <hostname>-<n>, a name no other local trainer uses), GANTRY_WORKERS
# and GANTRY_NODE_WEIGHT from the environment win. Each node name gets its own cache directory
# under the state directory. Stops with Ctrl-C (SIGTERM); exits non-zero when the cluster refuses
# the token.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$GANTRY_REPO"

export GANTRY_STATE_DIR="${GANTRY_STATE_DIR:-$GANTRY_REPO/.gantry}"
[ -d "$GANTRY_STATE_DIR" ] || die "no local stack state in $GANTRY_STATE_DIR: start deploy/local/up.sh first (or set GANTRY_STATE_DIR)"

# Values from up.sh, unless the caller set them.
state_value() { sed -n "s/^$1=//p" "$GANTRY_STATE_DIR/env" 2>/dev/null | tail -1; }
export NATS_URL="${NATS_URL:-$(state_value NATS_URL)}"
[ -n "$NATS_URL" ] || die "NATS_URL is unset and $GANTRY_STATE_DIR/env has none: is the stack up?"
# The node trusts the stack's CA; it needs no key of its own, only the cluster token.
ca="$(state_value GANTRY_NATS_CA_FILE)"
if [ -z "${GANTRY_NATS_CA_FILE:-}" ] && [ -n "$ca" ]; then export GANTRY_NATS_CA_FILE="$ca"; fi
if [ -z "${GANTRY_CLUSTER_TOKEN:-}" ] && [ -s "$GANTRY_STATE_DIR/cluster_token" ]; then
    GANTRY_CLUSTER_TOKEN="$(cat "$GANTRY_STATE_DIR/cluster_token")"
fi
[ -n "${GANTRY_CLUSTER_TOKEN:-}" ] || die "GANTRY_CLUSTER_TOKEN is unset (create one: POST /admin/api/cluster_tokens)"
export GANTRY_CLUSTER_TOKEN

if [ -z "${GANTRY_NODE_NAME:-}" ]; then
    base="$(hostname -s 2>/dev/null || echo node)"
    n=2
    while [ -d "$GANTRY_STATE_DIR/nodes/$base-$n" ]; do n=$((n + 1)); done
    GANTRY_NODE_NAME="$base-$n"
fi
export GANTRY_NODE_NAME
node_dir="$GANTRY_STATE_DIR/nodes/$GANTRY_NODE_NAME"
mkdir -p "$node_dir/cache"
export GANTRY_CACHE_DIR="${GANTRY_CACHE_DIR:-$node_dir/cache}"
export XDG_CACHE_HOME="$node_dir/cache"
export GANTRY_HEALTH_ADDR="${GANTRY_HEALTH_ADDR:-127.0.0.1:0}"
export OTEL_SERVICE_NAME=gantry-trainer

ensure_tools
BIN="${CARGO_TARGET_DIR:-$GANTRY_REPO/target}/release"
if [ ! -x "$BIN/gantry-trainer" ]; then
    log "building gantry-trainer (release)"
    cargo build --release --locked -p gantry-trainer --bins
fi
log "trainer $GANTRY_NODE_NAME joining $NATS_URL (workers ${GANTRY_WORKERS:-1}, weight ${GANTRY_NODE_WEIGHT:-100}); caches in $node_dir"
exec "$BIN/gantry-trainer"
