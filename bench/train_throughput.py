#!/usr/bin/env python3
"""PyTorch half of bench/train_throughput.sh: the same network, data, batches and optimiser as
gantry-training (shared/training/src/model.rs and train.rs), timed the same way.

Reads the tensors gantry-train-bench exported into --work-dir (raw little-endian, read with
torch.frombuffer, so neither numpy nor an image library is needed) and prints one JSON object.

Kept in step with the Rust side:
- network (initialisation included): conv3x3(3->w)+BN+ReLU stem (stride 2 above 64 px, max-pool above 128 px), BasicBlocks
  w->w /1, w->2w /2, 2w->4w /2 (1x1 conv + BN shortcut when the shape changes), global average
  pool, linear; convolutions without bias; BN eps 1e-5, momentum 0.1;
- Adam (betas 0.9/0.999, eps 1e-8, no weight decay), cosine learning rate set every step;
- each epoch: a fresh permutation, batches of batch_size taken with index_select from the
  dataset already on the device, log_softmax + nll_loss, zero_grad/backward/step, loss and
  correct counts summed on the device and read once at the end of the epoch;
- samples/s per epoch over the training steps (the end-of-epoch read included), median of the
  epochs after the first.
"""

import argparse
import json
import math
import os
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class ResNet8(nn.Module):
    def __init__(self, num_classes, image_size, w):
        super().__init__()
        stride = 2 if image_size > 64 else 1
        self.pool = image_size > 128
        self.stem_conv = nn.Conv2d(3, w, 3, stride, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(w)
        self.blocks = nn.Sequential(
            BasicBlock(w, w, 1), BasicBlock(w, 2 * w, 2), BasicBlock(2 * w, 4 * w, 2)
        )
        self.fc = nn.Linear(4 * w, num_classes)
        # tch's defaults, which the Rust network keeps: Kaiming-uniform weights with the ReLU gain
        # (bound sqrt(6 / fan_in)) for convolutions and the linear layer, PyTorch's usual
        # uniform(+-1/sqrt(fan_in)) linear bias, BN scale 1 and shift 0. PyTorch's own default
        # (a=sqrt(5), a bound 2.45x smaller) would, under Adam, make every update relatively
        # larger and this learning rate too high.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")

    def forward(self, x):
        y = F.relu(self.stem_bn(self.stem_conv(x)))
        if self.pool:
            y = F.max_pool2d(y, 3, 2, 1)
        y = self.blocks(y)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


def read_raw(path, dtype):
    with open(path, "rb") as f:
        return torch.frombuffer(bytearray(f.read()), dtype=dtype)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work-dir", required=True)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=None, help="default: what meta.json says")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast of the forward pass (GPU)")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    meta = json.load(open(os.path.join(args.work_dir, "meta.json")))
    n, s = meta["samples"], meta["image_size"]
    bs, lr, epochs = meta["batch_size"], meta["learning_rate"], args.epochs or meta["epochs"]
    x = read_raw(os.path.join(args.work_dir, "train_images.f32"), torch.float32).view(n, 3, s, s)
    y = read_raw(os.path.join(args.work_dir, "train_labels.i64"), torch.int64)
    x, y = x.to(device), y.to(device)

    model = ResNet8(len(meta["classes"]), s, meta["base_width"]).to(device)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    batch = min(bs, n)
    steps_per_epoch = math.ceil(n / batch)
    total = epochs * steps_per_epoch
    step = 0
    per_epoch, loss, acc = [], float("nan"), float("nan")
    for _ in range(epochs):
        start = time.perf_counter()
        order = torch.randperm(n).to(device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        for i in range(steps_per_epoch):
            idx = order[i * batch : (i + 1) * batch]
            xs, ys = x.index_select(0, idx), y.index_select(0, idx)
            for g in opt.param_groups:
                g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.bf16 and device.type == "cuda"):
                logits = model(xs)
                l = F.nll_loss(F.log_softmax(logits, -1, dtype=torch.float32), ys)
            opt.zero_grad()
            l.backward()
            opt.step()
            with torch.no_grad():
                loss_sum += l.double() * len(idx)
                correct += (logits.argmax(-1) == ys).sum()
            step += 1
        loss, acc = loss_sum.item() / n, correct.item() / n  # waits for the device
        per_epoch.append(n / (time.perf_counter() - start))

    steady = per_epoch[1:] if len(per_epoch) > 1 else per_epoch
    print(
        json.dumps(
            {
                "implementation": "pytorch",
                "torch": torch.__version__,
                "device": str(device),
                "threads": torch.get_num_threads(),
                "samples": n,
                "image_size": s,
                "batch_size": bs,
                "epochs": epochs,
                "samples_per_sec_per_epoch": per_epoch,
                "samples_per_sec": statistics.median(steady),
                "final_loss": loss,
                "final_train_accuracy": acc,
            }
        )
    )


if __name__ == "__main__":
    main()
