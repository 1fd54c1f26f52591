#!/usr/bin/env bash
# Every check that needs a GPU machine, in one run (that machine has torch but no Rust):
#
#   here:  bench/gpu_inventory.sh build && bench/train_throughput.sh --build-only
#   there: bench/device_check.sh        (carry bench/out; results go to $OUT or bench/out/device)
#
# 1. `gantry-trainer inventory` against nvidia-smi (GPU count, names, memory, driver).
# 2. A short CUDA training run of the trainer's training code and the same network, data, batches
#    and optimiser in PyTorch, with the samples/s of both and their ratio; fp32 at 32 and 64 px,
#    then bf16 autocast at 32 px.
set -uo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
out="${OUT:-$HERE/out/device}"
mkdir -p "$out"
export TORCH_VENV="${TORCH_VENV:-/opt/torch/.venv}"
export TORCH_PYTHON="${TORCH_PYTHON:-$TORCH_VENV/bin/python3}"
export GANTRY_BENCH_BIN="${GANTRY_BENCH_BIN:-$HERE/out/train_throughput/gantry-train-bench}"
status=0

echo "== nvidia-smi"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/nvidia-smi.csv"

echo "== inventory"
bash "$HERE/gpu_inventory.sh" check 2>&1 | tee "$out/inventory.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

for size in 32 64; do
    echo "== CUDA training throughput, image size $size"
    bash "$HERE/train_throughput.sh" --device cuda --threads 8 --epochs 3 --per-class 1000 \
        --image-size "$size" --batch-size 128 --rounds 3 2>&1 | tee "$out/throughput-$size.txt"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
done

echo "== CUDA training throughput under bf16 autocast (both sides), image size 32"
bash "$HERE/train_throughput.sh" --device cuda --threads 8 --epochs 3 --per-class 1000 \
    --image-size 32 --batch-size 128 --rounds 3 --bf16 2>&1 | tee "$out/throughput-bf16-32.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

echo "== CPU training throughput on the same machine (8 threads)"
bash "$HERE/train_throughput.sh" --device cpu --threads 8 --epochs 2 --per-class 300 \
    --image-size 32 --batch-size 64 --rounds 1 2>&1 | tee "$out/throughput-cpu.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
exit "$status"
