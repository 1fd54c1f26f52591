#!/usr/bin/env bash
# Every test of the workspace, unit and end-to-end, against a real nats-server and a real
# MongoDB-wire store. Installs what is missing first. Prints how long each phase took; exits
# non-zero on any failure.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$GANTRY_REPO"

declare -a PHASES=()
phase() { # name, command...
    local name="$1"; shift
    local start; start=$(now)
    log "== $name"
    "$@"
    local took=$(( $(now) - start ))
    PHASES+=("$(printf '%-10s %5ss' "$name" "$took")")
    log "== $name done in ${took}s"
}
report() { log "phase timings:"; for p in "${PHASES[@]}"; do echo "   $p"; done; }
trap report EXIT

install_all() { ensure_tools; ensure_browser; }
phase install install_all
# Formatting and lints first: they take seconds and fail fast.
phase fmt cargo fmt --all --check
phase clippy cargo clippy --workspace --all-targets --locked -- -D warnings
phase build cargo build --workspace --bins --tests --locked
# End-to-end tests start several processes each; two at a time suits small machines.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-2}"
phase test cargo test --workspace --locked --no-fail-fast
if [ -x deploy/validate.sh ]; then
    phase manifests deploy/validate.sh
fi
