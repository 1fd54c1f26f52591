#!/usr/bin/env bash
# Analysis throughput of the node's code (gantry-training through tch: load the model from its
# card and safetensors, preprocess as the card says, softmax top-k in batches of 64) against
# PyTorch inference of the same network on the same pixels, batches and thread count; prints both
# and the ratio.
#
#   bench/analysis_throughput.sh [--device cpu|cuda] [--threads N] [--passes P] [--per-class C]
#                                [--image-size S] [--base-width W] [--top-k K] [--rounds R]
#
# Two Rust figures: `inference` (the forward passes, softmax and top-k on preprocessed pixels, the
# figure compared with PyTorch) and `end_to_end` (also reading and decoding every PNG as a node
# does per request; PyTorch has no counterpart here, the tools environment having no image
# library). As bench/train_throughput.sh, it builds here (release) or, with --build-only, copies
# the binary to bench/out/analysis_throughput/ to carry to a GPU machine without cargo.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
OUT_DIR="$HERE/out/analysis_throughput"

device=cpu threads=2 passes=5 per_class=200 image_size=32 base_width=16 top_k=5 rounds=1
build_only=0
while [ $# -gt 0 ]; do
    case "$1" in
        --device) device="$2"; shift 2 ;;
        --threads) threads="$2"; shift 2 ;;
        --passes) passes="$2"; shift 2 ;;
        --per-class) per_class="$2"; shift 2 ;;
        --image-size) image_size="$2"; shift 2 ;;
        --base-width) base_width="$2"; shift 2 ;;
        --top-k) top_k="$2"; shift 2 ;;
        --rounds) rounds="$2"; shift 2 ;;
        --build-only) build_only=1; shift ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

if command -v cargo >/dev/null 2>&1 && [ -f "$REPO/deploy/local/lib.sh" ] && [ -z "${GANTRY_BENCH_BIN:-}" ]; then
    # shellcheck source=../deploy/local/lib.sh
    source "$REPO/deploy/local/lib.sh"
    ensure_tools >&2
    (cd "$REPO" && cargo build --release -q -p gantry-training --bin gantry-infer-bench) >&2
    bin="${CARGO_TARGET_DIR:-$REPO/target}/release/gantry-infer-bench"
    mkdir -p "$OUT_DIR"
    cp "$bin" "$OUT_DIR/gantry-infer-bench"
    python="${TORCH_PYTHON:-$GANTRY_TOOLS_VENV/bin/python}"
else
    bin="${GANTRY_BENCH_BIN:-$OUT_DIR/gantry-infer-bench}"
    [ -x "$bin" ] || { echo "no $bin: run '$0 --build-only' where cargo is, and carry bench/out" >&2; exit 2; }
    python="${TORCH_PYTHON:-python3}"
fi
[ "$build_only" = 1 ] && { echo "built $OUT_DIR/gantry-infer-bench" >&2; exit 0; }

torch_lib="$("$python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null)"
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for r in $(seq 1 "$rounds"); do
    mkdir -p "$work/$r"
    "$bin" --device "$device" --threads "$threads" --passes "$passes" --per-class "$per_class" \
        --image-size "$image_size" --base-width "$base_width" --top-k "$top_k" \
        --work-dir "$work/$r" >"$work/$r/rust.json"
    PYTHONWARNINGS=ignore "$python" "$HERE/analysis_throughput.py" --work-dir "$work/$r" \
        --device "$device" --threads "$threads" --passes "$passes" >"$work/$r/python.json" \
        2>"$work/$r/python.err" || { cat "$work/$r/python.err" >&2; exit 1; }
done

"$python" - "$work" "$rounds" <<'PY'
import json, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
rust = [json.load(open(f"{work}/{r}/rust.json")) for r in range(1, rounds + 1)]
py = [json.load(open(f"{work}/{r}/python.json")) for r in range(1, rounds + 1)]
for side in (rust, py):
    for run in side:
        print(json.dumps(run))
r = statistics.median(x["inference_images_per_sec"] for x in rust)
e = statistics.median(x["end_to_end_images_per_sec"] for x in rust)
p = statistics.median(x["inference_images_per_sec"] for x in py)
ratios = [a["inference_images_per_sec"] / b["inference_images_per_sec"] for a, b in zip(rust, py)]
print(json.dumps({
    "device": rust[0]["device"], "threads": rust[0]["threads"], "samples": rust[0]["samples"],
    "image_size": rust[0]["image_size"], "batch": rust[0]["batch"], "top_k": rust[0]["top_k"],
    "passes": rust[0]["passes"], "rounds": rounds, "torch": py[0]["torch"],
    "rust_inference_images_per_sec": round(r, 1), "pytorch_inference_images_per_sec": round(p, 1),
    "ratio_rust_over_pytorch": round(statistics.median(ratios), 3),
    "ratio_per_round": [round(x, 3) for x in ratios],
    "rust_end_to_end_images_per_sec": round(e, 1),
}))
# The row bench/run.sh tabulates: the node's inference against PyTorch's.
print(f"ROW\tanalysis images/s ({rust[0]['device']}, {rust[0]['threads']} threads, "
      f"{rust[0]['image_size']} px, batch {rust[0]['batch']}), PyTorch\t{r:.0f}\t{p:.0f}\t"
      f"{statistics.median(ratios):.2f}")
PY
