#!/usr/bin/env bash
# GPU inventory check, in two halves:
#
#   bench/gpu_inventory.sh build   here: builds gantry-trainer (release) into bench/out/gpu_inventory/
#   bench/gpu_inventory.sh check   on the GPU machine: runs `gantry-trainer inventory` against that
#                                  machine's torch and compares GPU count, names, memory and driver
#                                  version with nvidia-smi, and `gantry-trainer gpu-stats` (NVML's live
#                                  figures) with nvidia-smi's; prints a PASS/FAIL table, exits non-zero
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
    # The live figures heartbeats carry, read through NVML, against nvidia-smi's.
    "$bin" gpu-stats >"$tmp/stats.json" 2>"$tmp/stats.err" || { echo "FAIL: gantry-trainer gpu-stats:"; cat "$tmp/stats.err"; exit 1; }
    nvidia-smi --query-gpu=memory.total,memory.used,temperature.gpu,power.limit,ecc.errors.uncorrected.volatile.total,mig.mode.current \
        --format=csv,noheader,nounits >"$tmp/live.csv"
    echo "--- gantry-trainer gpu-stats"; cat "$tmp/stats.json"
    echo "--- nvidia-smi (live)"; cat "$tmp/live.csv"
    "$py" - "$tmp/inventory.json" "$tmp/smi.csv" "$tmp/stats.json" "$tmp/live.csv" <<'PY'
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
stats_path = sys.argv[3]
stats = json.load(open(stats_path)) if stats_path else []
live = [[c.strip() for c in line.split(",")] for line in open(sys.argv[4]) if line.strip()] if stats_path else []
def num(v):
    try:
        return float(v)
    except ValueError:
        return None
for i, (total, used, temp, limit, ecc, mig) in enumerate(live):
    s = stats[i] if i < len(stats) else {}
    row(f"GPU {i} NVML memory total MiB", s.get("memory_total_mib"), total, s.get("memory_total_mib") is not None and abs(s["memory_total_mib"] - num(total)) <= 1)
    # Used memory and temperature move between the two readings: close is right.
    row(f"GPU {i} NVML memory used MiB", s.get("memory_used_mib"), used, s.get("memory_used_mib") is not None and abs(s["memory_used_mib"] - num(used)) <= 512)
    row(f"GPU {i} NVML temperature C", s.get("temperature_c"), temp, s.get("temperature_c") is not None and abs(s["temperature_c"] - num(temp)) <= 5)
    row(f"GPU {i} NVML power limit W", s.get("power_limit_w"), limit, s.get("power_limit_w") is not None and abs(s["power_limit_w"] - num(limit)) <= 1)
    ours_ecc = s.get("ecc_uncorrected")
    row(f"GPU {i} NVML uncorrected ECC", ours_ecc, ecc, (ours_ecc is None) == (num(ecc) is None) and (ours_ecc is None or ours_ecc == num(ecc)))
    row(f"GPU {i} NVML MIG mode", s.get("mig_enabled"), mig, s.get("mig_enabled") is None if mig in ("[N/A]", "N/A") else s.get("mig_enabled") == (mig == "Enabled"))
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
