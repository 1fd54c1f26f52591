#!/usr/bin/env bash
# Dispatch latency, Gantry against Ray Jobs on this machine: submit → started and submit →
# completed, p50 and p99, for a tiny training job (two classes of four 16x16 images, one epoch)
# through POST /admin/api/train, then for a trivial Ray job (`python -c 'pass'`) through Ray's
# Jobs API on a local head (`ray start --head`, with its dashboard). Prints a table (figure,
# Gantry, Ray, Ray/Gantry) and one machine-readable line per figure:
# `ROW<TAB>figure<TAB>gantry_ms<TAB>ray_ms<TAB>ratio`.
#
#   bench/dispatch.sh [--jobs 300] [--ray-jobs 100] [--poll-ms 10]
#
# Builds in release and starts the whole local stack (deploy/local/up.sh: NATS with TLS and the
# role keys, the store, the four services, one trainer with one worker slot) in a temporary
# directory on free ports; stops it before Ray starts, so neither runs beside the other. Jobs go
# one at a time, after six unmeasured ones. Gantry's alternate between followed (the job's event
# stream read from the submission on: when its `started` and `completed` events arrive) and
# polled every --poll-ms for its status (`running`, then `completed`); Ray's are polled the same
# way (`RUNNING`, then `SUCCEEDED`), its job API having no event stream. Ray (`ray[default]`, pinned below)
# is installed once into its own venv beside the tools venv, so its pins never move the tools'.
# A Ray job takes about a second or two here, so Ray gets fewer jobs than Gantry by default
# (100: about four minutes on two cores).
#
# Not a test: nothing asserts on the figures.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
RAY_VERSION=2.49.1

jobs=300 ray_jobs=100 poll_ms=10
while [ $# -gt 0 ]; do
    case "$1" in
        --jobs) jobs="$2"; shift 2 ;;
        --ray-jobs) ray_jobs="$2"; shift 2 ;;
        --poll-ms) poll_ms="$2"; shift 2 ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
poll="$(python3 -c "print($poll_ms / 1000)")"

# shellcheck source=../deploy/local/lib.sh
source "$HERE/../deploy/local/lib.sh"
cd "$GANTRY_REPO"
ensure_tools >&2
PY="$GANTRY_TOOLS_VENV/bin/python"
RAY_VENV="$GANTRY_TOOLS_DIR/ray-$RAY_VERSION"

work="$(mktemp -d)"
up_pid=""
ray_started=""
cleanup() {
    [ -n "$up_pid" ] && { kill -TERM "$up_pid" 2>/dev/null || true; wait "$up_pid" 2>/dev/null || true; }
    [ -n "$ray_started" ] && { "$RAY_VENV/bin/ray" stop --force >/dev/null 2>&1 || true; }
    rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

log "building (release)"
cargo build --release --bins --locked >&2

# --- Gantry
state="$work/gantry"
mkdir -p "$state/data"
"$PY" "$HERE/dispatch.py" dataset "$state/data/tiny"
http="$(free_port)"
log "starting the local stack"
GANTRY_STATE_DIR="$state" GANTRY_NATS_PORT="$(free_port)" GANTRY_STORE_PORT="$(free_port)" \
    GANTRY_HTTP_ADDR="127.0.0.1:$http" RUST_LOG="${RUST_LOG:-warn}" \
    "$GANTRY_REPO/deploy/local/up.sh" >"$work/up.log" 2>&1 &
up_pid=$!
for _ in $(seq 1 600); do [ -s "$state/env" ] && break; kill -0 "$up_pid" 2>/dev/null || break; sleep 0.2; done
[ -s "$state/env" ] || { tail -30 "$work/up.log" >&2; die "the local stack did not start"; }
token="$(sed -n 's/^GANTRY_ADMIN_API_TOKEN=//p' "$state/env")"
url="http://127.0.0.1:$http"
log "Gantry: $jobs jobs, one at a time (the first waits for the trainer to join)"
"$PY" "$HERE/dispatch.py" gantry "$url" "$token" "$jobs" "$poll" "$work/gantry.tsv" \
    || { tail -30 "$state"/logs/*.log >&2; die "the Gantry jobs failed"; }
kill -TERM "$up_pid"; wait "$up_pid" 2>/dev/null || true; up_pid=""

# --- Ray
if ! "$RAY_VENV/bin/python" -c "import ray, sys; sys.exit(ray.__version__ != '$RAY_VERSION')" 2>/dev/null; then
    log "installing ray[default]==$RAY_VERSION into $RAY_VENV (once per machine)"
    python3 -m venv "$RAY_VENV"
    "$RAY_VENV/bin/pip" install --quiet --disable-pip-version-check "ray[default]==$RAY_VERSION" >&2
fi
dash="$(free_port)"
log "starting a local Ray head"
ray_started=1
PATH="$RAY_VENV/bin:$PATH" RAY_USAGE_STATS_ENABLED=0 ray start --head --port "$(free_port)" \
    --dashboard-host 127.0.0.1 --dashboard-port "$dash" --include-dashboard true \
    --disable-usage-stats >"$work/ray.log" 2>&1 || { cat "$work/ray.log" >&2; die "ray start failed"; }
for _ in $(seq 1 300); do
    curl -fsS "http://127.0.0.1:$dash/api/version" >/dev/null 2>&1 && break
    sleep 0.2
done
log "Ray: $ray_jobs jobs, one at a time"
PATH="$RAY_VENV/bin:$PATH" "$PY" "$HERE/dispatch.py" ray "http://127.0.0.1:$dash" "$ray_jobs" "$poll" "$work/ray.tsv"
"$RAY_VENV/bin/ray" stop --force >/dev/null 2>&1 || true
ray_started=""

echo "machine: $(nproc) CPU(s); Gantry $(git -C "$GANTRY_REPO" rev-parse --short HEAD), ray $RAY_VERSION"
"$PY" "$HERE/dispatch.py" table "$work/gantry.tsv" "$work/ray.tsv"
