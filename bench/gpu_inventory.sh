#!/usr/bin/env bash
# GPU inventory check, in two halves:
#
#   bench/gpu_inventory.sh build   here: builds gantry-trainer (release) into bench/out/gpu_inventory/
#   bench/gpu_inventory.sh check   on the GPU machine: runs `gantry-trainer inventory` against that
#                                  machine's torch and compares GPU count, names, memory and driver
#                                  version with nvidia-smi; prints a PASS/FAIL table, exits non-zero
#                                  on any FAIL.
#
# `check` finds torch at $TORCH_VENV (default /opt/torch/.venv; Python 3.12, torch 2.11.0+cu130)
# and puts its lib/ on LD_LIBRARY_PATH, so the trainer binary built here against pip's torch 2.11.0
# loads that machine's libtorch (same version) and its CUDA libraries. It needs python3 only to
# compare JSON (no packages).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="$HERE/out/gpu_inventory"   # ignored by git: pass it to the GPU machine (carry bench/out)

build() {
    source "$HERE/../deploy/local/lib.sh"
    cd "$GANTRY_REPO"
    ensure_tools
    cargo build --release --locked -p gantry-trainer --bins
    mkdir -p "$OUT"
    cp "${CARGO_TARGET_DIR:-$GANTRY_REPO/target}/release/gantry-trainer" "$OUT/gantry-trainer"
    strip "$OUT/gantry-trainer" 2>/dev/null || true
    # The binary must need libtorch_cuda (linked --no-as-needed), or CUDA stays invisible.
    if ldd "$OUT/gantry-trainer" | grep -q 'libtorch_cuda'; then
        echo "built $OUT/gantry-trainer (links libtorch_cuda)"
    else
        echo "error: $OUT/gantry-trainer does not link libtorch_cuda; CUDA would not be detected" >&2
        exit 1
    fi
}

check() {
    local venv="${TORCH_VENV:-/opt/torch/.venv}"
    local bin="${GANTRY_TRAINER_BIN:-$OUT/gantry-trainer}"
    [ -x "$bin" ] || { echo "no trainer binary at $bin: run '$0 build' first" >&2; exit 2; }
    local py="$venv/bin/python"
    [ -x "$py" ] || py=python3
    local torch_lib
    torch_lib="$("$py" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
    export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "torch $("$py" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)') from $torch_lib"

    local tmp; tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' RETURN
    if ! "$bin" inventory >"$tmp/inventory.json" 2>"$tmp/inventory.err"; then
        echo "FAIL: gantry-trainer inventory exited non-zero:"; cat "$tmp/inventory.err"; exit 1
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader,nounits >"$tmp/smi.csv"
    echo "--- gantry-trainer inventory"; cat "$tmp/inventory.json"
    echo "--- nvidia-smi"; cat "$tmp/smi.csv"
    "$py" - "$tmp/inventory.json" "$tmp/smi.csv" <<'PY'
import json, sys
inv = json.load(open(sys.argv[1]))
smi = [[c.strip() for c in line.split(",")] for line in open(sys.argv[2]) if line.strip()]
rows = []
def row(what, ours, theirs, ok):
    rows.append((what, str(ours), str(theirs), "PASS" if ok else "FAIL"))
gpus = inv.get("gpus", [])
row("cuda_available", inv["gpu_info"]["cuda_available"], len(smi) > 0, inv["gpu_info"]["cuda_available"] == (len(smi) > 0))
row("GPU count", len(gpus), len(smi), len(gpus) == len(smi))
row("cuda_devices", inv["gpu_info"]["cuda_devices"], len(smi), inv["gpu_info"]["cuda_devices"] == len(smi))
row("available_backends", inv["gpu_info"]["available_backends"], "['cuda', 'cpu']", inv["gpu_info"]["available_backends"] == ["cuda", "cpu"])
for i, (name, mem, driver) in enumerate(smi):
    g = gpus[i] if i < len(gpus) else {}
    row(f"GPU {i} name", g.get("name"), name, g.get("name") == name)
    mib = g.get("memory_total_mib")
    row(f"GPU {i} memory MiB", mib, mem, mib is not None and abs(int(mib) - int(float(mem))) <= 1)
    row(f"GPU {i} driver", inv.get("driver_version"), driver, inv.get("driver_version") == driver)
width = [max(len(r[k]) for r in rows + [("check", "gantry", "nvidia-smi", "result")]) for k in range(4)]
print()
for r in [("check", "gantry", "nvidia-smi", "result")] + rows:
    print("  ".join(c.ljust(w) for c, w in zip(r, width)))
failed = [r for r in rows if r[3] == "FAIL"]
print(f"\n{len(rows) - len(failed)} passed, {len(failed)} failed")
sys.exit(1 if failed else 0)
PY
}

case "${1:-}" in
    build) build ;;
    check) check ;;
    *) echo "usage: $0 build|check" >&2; exit 2 ;;
esac
