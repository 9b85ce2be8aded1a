"""Speed and memory of unet-med's UNet against MONAI's DynUNet and BasicUNet at the same configuration.

Each case runs in a fresh process, so its peak resident memory is its own. A training step is a forward pass,
Dice + cross-entropy, a backward pass and an SGD step; inference is one forward pass under ``torch.no_grad``.
Prints a markdown table with the median time per step and the ratio to MONAI's DynUNet in float32.

    python benchmarks/bench_networks.py              # 3D: batch 2, 96^3, 32..320 features, instance norm
    python benchmarks/bench_networks.py --dims 2     # 2D: the paper's 572^2 valid network, 64..1024 features
    python benchmarks/bench_networks.py --size 64 --steps 2   # a quicker look
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext

import torch

# name: (network, precision, memory format); bf16 runs the step under CPU autocast.
CASES = {
    "unet-med fp32": ("unet_med", "fp32", "contiguous"),
    "unet-med bf16": ("unet_med", "bf16", "contiguous"),
    "unet-med bf16 channels_last": ("unet_med", "bf16", "channels_last"),
    "DynUNet fp32": ("dynunet", "fp32", "contiguous"),
    "DynUNet bf16": ("dynunet", "bf16", "contiguous"),
    "BasicUNet fp32": ("basicunet", "fp32", "contiguous"),
}
REFERENCE = "DynUNet fp32"


def build(network: str, dims: int, paper: bool) -> torch.nn.Module:
    """The network of one case; ``paper`` selects the paper's 2D configuration (64..1024, no norm, ReLU)."""
    features = (64, 128, 256, 512, 1024) if paper else (32, 64, 128, 256, 320)
    norm = None if paper else ("instance", {"affine": True})
    if network == "unet_med":
        from unet_med import UNet

        if paper:
            return UNet(dims, 1, 2, features=features, conv_mode="valid", norm=None, act="relu")
        return UNet(dims, 1, 2, features=features, norm=norm)
    if network == "dynunet":
        from monai.networks.nets import DynUNet

        return DynUNet(
            dims,
            1,
            2,
            kernel_size=[3] * 5,
            strides=[1, 2, 2, 2, 2],
            upsample_kernel_size=[2, 2, 2, 2],
            filters=features,
            norm_name=norm or ("instance", {"affine": False}),
            act_name="relu" if paper else ("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
        )
    from monai.networks.nets import BasicUNet

    return BasicUNet(dims, 1, 2, features=(*features, features[0]), norm=norm or "instance")


def input_size(network: str, dims: int, size: int | None) -> int:
    """The paper's 572 for the valid network; MONAI's networks take the nearest size 16 divides (576)."""
    if size is not None:
        return size
    if dims == 2:
        return 572 if network == "unet_med" else 576
    return 96


def run_case(name: str, dims: int, size: int | None, steps: int, batch: int) -> dict:
    """Times one case in this process and returns its numbers."""
    from monai.losses import DiceCELoss

    network, precision, memory_format = CASES[name]
    torch.manual_seed(0)
    net = build(network, dims, paper=dims == 2)
    side = input_size(network, dims, size)
    x = torch.randn(batch, 1, *[side] * dims)
    layout = {2: torch.channels_last, 3: torch.channels_last_3d}[dims]
    if memory_format == "channels_last":
        net, x = net.to(memory_format=layout), x.to(memory_format=layout)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.99)
    with torch.no_grad():
        out_side = net.eval()(x[:1]).shape[-1]
    target = torch.randint(0, 2, (batch, 1, *[out_side] * dims))

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_function(net(x).float(), target)
        loss.backward()
        optimizer.step()

    def infer_step() -> None:
        with torch.no_grad(), autocast:
            net(x)

    timings = {}
    for label, step, mode in (("train", train_step, net.train), ("infer", infer_step, net.eval)):
        mode()
        step()  # warm-up: allocator and kernel selection
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        timings[label] = statistics.median(times)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB
    return {"case": name, "input": side, **timings, "peak_gib": peak_gib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", type=int, choices=(2, 3), default=3)
    parser.add_argument("--size", type=int, default=None, help="input side in voxels (default: 96 in 3D, 572 in 2D)")
    parser.add_argument("--batch", type=int, default=None, help="default: 2 in 3D, 1 in 2D")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per case after one warm-up")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES), metavar="CASE")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = parser.parse_args()
    batch = args.batch or (2 if args.dims == 3 else 1)
    if args.case:
        print(json.dumps(run_case(args.case, args.dims, args.size, args.steps, batch)))
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dims}D, batch {batch}")
    results = []
    for name in args.cases:
        command = [
            sys.executable,
            __file__,
            "--case",
            name,
            "--dims",
            str(args.dims),
            "--steps",
            str(args.steps),
            "--batch",
            str(batch),
        ] + (["--size", str(args.size)] if args.size else [])
        completed = subprocess.run(command, capture_output=True, text=True, check=True)
        results.append(json.loads(completed.stdout.strip().splitlines()[-1]))
        print(f"  done: {name}", file=sys.stderr)
    reference = next((r for r in results if r["case"] == REFERENCE), results[0])
    print("| case | input | train s/step | x DynUNet | infer s | x DynUNet | peak GiB | x DynUNet |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['case']} | {r['input']}^{args.dims} | {r['train']:.2f} | {r['train'] / reference['train']:.2f} "
            f"| {r['infer']:.2f} | {r['infer'] / reference['infer']:.2f} | {r['peak_gib']:.2f} "
            f"| {r['peak_gib'] / reference['peak_gib']:.2f} |"
        )


if __name__ == "__main__":
    main()
