"""bfloat16 autocast against float32 on this CPU: a training step and an inference window of the planned UNet.

The network is the hippocampus plan's for a CPU (features 16..128, 4 levels, 3 classes, patches of 32 x 48 x 32,
4 per step); a training step is forward, Dice + cross-entropy, backward and an AdamW step. bfloat16 pays only on
CPUs with bfloat16 units (AVX512-BF16 or AMX, printed with the flags): elsewhere PyTorch emulates it.

    python benchmarks/bench_cpu_precision.py
    python benchmarks/bench_cpu_precision.py --patch 96 80 20 --features 16 32 64 128 128 --batch 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from contextlib import nullcontext

import torch
from machine import cpu_description
from monai.losses import DiceCELoss

from unet_med.inferers import native_bf16
from unet_med.networks import UNet

# name: (autocast dtype, channels-last)
CASES = {"float32": (None, False), "float32, channels-last": (None, True), "bfloat16 autocast": (torch.bfloat16, False)}


def time_case(name: str, args: argparse.Namespace) -> tuple[float, float]:
    """Median seconds of a training step and of an inference pass of one batch, after one warm-up each."""
    dtype, channels_last = CASES[name]
    torch.manual_seed(0)
    net = UNet(3, 1, args.classes, features=args.features)
    x = torch.randn(args.batch, 1, *args.patch)
    target = torch.randint(0, args.classes, (args.batch, 1, *args.patch))
    if channels_last:
        net, x = net.to(memory_format=torch.channels_last_3d), x.to(memory_format=torch.channels_last_3d)
    autocast = torch.autocast("cpu", dtype=dtype) if dtype else nullcontext()
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            logits = net(x)
        loss_function(logits.float(), target).backward()
        optimizer.step()

    def infer_step() -> None:
        with torch.inference_mode(), autocast:
            net(x)

    medians = []
    for step, mode in ((train_step, net.train), (infer_step, net.eval)):
        mode()
        step()
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        medians.append(statistics.median(times))
    return medians[0], medians[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patch", type=int, nargs=3, default=[32, 48, 32])
    parser.add_argument("--features", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1, help="timed steps after one warm-up")
    args = parser.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    print(cpu_description())
    print(f"torch {torch.__version__}, native bfloat16: {native_bf16()}, load average "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(f"UNet {args.features}, batch {args.batch} x {' x '.join(map(str, args.patch))}")
    print("| case | train s/step | x float32 | inference s | x float32 |")
    print("|---|---|---|---|---|", flush=True)
    reference = None
    for name in CASES:
        train, infer = time_case(name, args)
        reference = reference or (train, infer)
        print(f"| {name} | {train:.2f} | {train / reference[0]:.2f} | {infer:.2f} | {infer / reference[1]:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
