#!/usr/bin/env python3
"""PyTorch half of bench/analysis_throughput.sh: the same network (ResNet8 of
bench/train_throughput.py, the architecture of shared/training/src/model.rs) classifying the same
preprocessed pixels as gantry-infer-bench, timed the same way.

Reads the tensor gantry-infer-bench exported into --work-dir (raw little-endian float32 with
meta.json) and prints one JSON object. Kept in step with the Rust side (infer::top_k): evaluation
mode, no gradients, 64 images per forward pass moved to the device, softmax, top-k, the indices
and probabilities read back to the CPU per batch; images/s per pass over every image, median of
the passes after the first. The weights are initialised here rather than read from the Rust
model's safetensors (the tools environment has no safetensors reader); throughput does not depend
on their values.
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_throughput import ResNet8, read_raw  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work-dir", required=True)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--passes", type=int, default=5)
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    meta = json.load(open(os.path.join(args.work_dir, "meta.json")))
    n, s, batch, k = meta["samples"], meta["image_size"], meta["batch"], meta["top_k"]
    k = min(k, len(meta["classes"]))
    x = read_raw(os.path.join(args.work_dir, "images.f32"), torch.float32).view(n, 3, s, s)
    model = ResNet8(len(meta["classes"]), s, meta["base_width"]).to(device)
    model.eval()

    per_pass = []
    with torch.no_grad():
        for _ in range(args.passes):
            start = time.perf_counter()
            for i in range(0, n, batch):
                xs = x[i : i + batch].to(device)
                values, indices = F.softmax(model(xs), -1).topk(k, -1)
                values.cpu(), indices.cpu()  # waits for the device, as the Rust side does
            per_pass.append(n / (time.perf_counter() - start))

    steady = per_pass[1:] if len(per_pass) > 1 else per_pass
    print(
        json.dumps(
            {
                "implementation": "pytorch",
                "torch": torch.__version__,
                "device": str(device),
                "threads": torch.get_num_threads(),
                "samples": n,
                "image_size": s,
                "batch": batch,
                "top_k": k,
                "inference_images_per_sec_per_pass": per_pass,
                "inference_images_per_sec": statistics.median(steady),
            }
        )
    )


if __name__ == "__main__":
    main()
