#!/usr/bin/env bash
# Training throughput of the trainer's code (gantry-training through tch) against the same network,
# data, batches, optimiser and thread count in PyTorch from Python; prints both and the ratio.
#
#   bench/train_throughput.sh [--device cpu|cuda] [--threads N] [--epochs E] [--per-class P]
#                             [--batch-size B] [--image-size S] [--base-width W] [--rounds R]
#                             [--bf16]   (bf16 autocast on both sides; GPUs only)
#
# Here it builds gantry-train-bench (release) and uses the tools venv's torch. On a GPU machine
# where there is no cargo, build first (`bench/train_throughput.sh --build-only`, which copies the
# binary to bench/out/train_throughput/), carry bench/out there, and run with --device cuda:
# the script then uses that binary and the machine's python3/torch (TORCH_PYTHON overrides), with
# torch's lib directory put on LD_LIBRARY_PATH so the binary loads the same libtorch.
#
# Each round runs Rust then PyTorch back to back on one fresh dataset; with --rounds > 1 the
# figures are medians over rounds, which evens out a machine that other work shares.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
OUT_DIR="$HERE/out/train_throughput"

device=cpu threads=2 epochs=4 per_class=200 batch_size=32 image_size=32 base_width=16 rounds=1
build_only=0 bf16=()
while [ $# -gt 0 ]; do
    case "$1" in
        --device) device="$2"; shift 2 ;;
        --threads) threads="$2"; shift 2 ;;
        --epochs) epochs="$2"; shift 2 ;;
        --per-class) per_class="$2"; shift 2 ;;
        --batch-size) batch_size="$2"; shift 2 ;;
        --image-size) image_size="$2"; shift 2 ;;
        --base-width) base_width="$2"; shift 2 ;;
        --rounds) rounds="$2"; shift 2 ;;
        --build-only) build_only=1; shift ;;
        --bf16) bf16=(--bf16); shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

if command -v cargo >/dev/null 2>&1 && [ -f "$REPO/deploy/local/lib.sh" ] && [ -z "${GANTRY_BENCH_BIN:-}" ]; then
    # shellcheck source=../deploy/local/lib.sh
    source "$REPO/deploy/local/lib.sh"
    ensure_tools >&2
    (cd "$REPO" && cargo build --release -q -p gantry-training --bin gantry-train-bench) >&2
    bin="${CARGO_TARGET_DIR:-$REPO/target}/release/gantry-train-bench"
    mkdir -p "$OUT_DIR"
    cp "$bin" "$OUT_DIR/gantry-train-bench"
    python="${TORCH_PYTHON:-$GANTRY_TOOLS_VENV/bin/python}"
else
    bin="${GANTRY_BENCH_BIN:-$OUT_DIR/gantry-train-bench}"
    [ -x "$bin" ] || { echo "no $bin: run '$0 --build-only' where cargo is, and carry bench/out" >&2; exit 2; }
    python="${TORCH_PYTHON:-python3}"
fi
[ "$build_only" = 1 ] && { echo "built $OUT_DIR/gantry-train-bench" >&2; exit 0; }

torch_lib="$("$python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null)"
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# Both sides get exactly the thread count asked for, not whatever OpenMP guesses.
export OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for r in $(seq 1 "$rounds"); do
    mkdir -p "$work/$r"
    "$bin" --device "$device" --threads "$threads" --epochs "$epochs" --per-class "$per_class" \
        --batch-size "$batch_size" --image-size "$image_size" --base-width "$base_width" \
        --work-dir "$work/$r" "${bf16[@]}" >"$work/$r/rust.json"
    PYTHONWARNINGS=ignore "$python" "$HERE/train_throughput.py" --work-dir "$work/$r" \
        --device "$device" --threads "$threads" "${bf16[@]}" >"$work/$r/python.json" 2>"$work/$r/python.err" \
        || { cat "$work/$r/python.err" >&2; exit 1; }
done

"$python" - "$work" "$rounds" <<'EOF'
import json, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
rust = [json.load(open(f"{work}/{r}/rust.json")) for r in range(1, rounds + 1)]
py = [json.load(open(f"{work}/{r}/python.json")) for r in range(1, rounds + 1)]
for side in (rust, py):
    for run in side:
        print(json.dumps(run))
r = statistics.median(x["samples_per_sec"] for x in rust)
p = statistics.median(x["samples_per_sec"] for x in py)
ratios = [a["samples_per_sec"] / b["samples_per_sec"] for a, b in zip(rust, py)]
print(json.dumps({
    "device": rust[0]["device"], "threads": rust[0]["threads"], "samples": rust[0]["samples"],
    "image_size": rust[0]["image_size"], "batch_size": rust[0]["batch_size"],
    "epochs": rust[0]["epochs"], "rounds": rounds, "torch": py[0]["torch"],
    "rust_samples_per_sec": round(r, 1), "pytorch_samples_per_sec": round(p, 1),
    "ratio_rust_over_pytorch": round(statistics.median(ratios), 3),
    "ratio_per_round": [round(x, 3) for x in ratios],
}))
# The row bench/run.sh tabulates: Gantry (Rust, tch) against PyTorch.
print(f"ROW\ttraining samples/s ({rust[0]['device']}, {rust[0]['threads']} threads, "
      f"{rust[0]['image_size']} px, batch {rust[0]['batch_size']}), PyTorch\t{r:.0f}\t{p:.0f}\t"
      f"{statistics.median(ratios):.2f}")
EOF
