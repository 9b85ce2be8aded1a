"""Plans of real data sets next to published ones, and the planner's memory estimate against a measured step.

    python benchmarks/bench_plan.py --hippocampus /data/Task04_Hippocampus --ct /data/ct_example
    python benchmarks/bench_plan.py --memory      # estimate vs measured peak memory of CPU training steps

Prints, for the hippocampus (MSD Task04), our GPU and CPU plans beside nnU-Net's published Task04 plan
(3d_fullres: patch 40x56x40, batch 9, 1 mm, features 32..320); for the CT example, the full plan. With
``--memory``, each configuration's training step (forward, Dice + cross-entropy, backward, AdamW step) runs in a
fresh process on the CPU: its peak resident memory above the process's memory after building the network is
compared with :func:`unet_med.bundle.cost.training_memory_bytes`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NNUNET_TASK04 = {"patch_size": [40, 56, 40], "batch": 9, "pixdim": [1.0, 1.0, 1.0], "features": "32..320"}
MEMORY_CASES = [  # (patch, batch, features, classes)
    ([32, 48, 32], 4, [16, 32, 64, 128], 3),
    ([32, 48, 32], 2, [32, 64, 128, 256], 3),
    ([64, 64, 64], 2, [32, 64, 128, 256, 320], 2),
    ([96, 96, 32], 2, [16, 32, 64, 128, 128], 8),
]


def plan_of(dataset: str, device: str, folder: Path) -> tuple[dict, dict, float]:
    from unet_med.bundle.plan import PlanSettings, plan_dataset

    start = time.perf_counter()
    plan, reasons = plan_dataset(dataset, folder / f"plan_{device}.yaml", PlanSettings(device=device), progress=False)
    return plan, reasons, time.perf_counter() - start


def features_range(features: list[int]) -> str:
    return f"{features[0]}..{features[-1]} ({len(features)} levels)"


def hippocampus_table(dataset: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        gpu, _, gpu_seconds = plan_of(dataset, "cuda", Path(folder))
        cpu, _, cpu_seconds = plan_of(dataset, "cpu", Path(folder))
    print(f"## {dataset}: our plans (GPU {gpu_seconds:.0f} s with the data check and fingerprinting, CPU "
          f"{cpu_seconds:.0f} s with the data check, the cached fingerprint and a timed step) beside nnU-Net's "
          "published Task04 3d_fullres plan\n")
    print("| | nnU-Net Task04 | ours, GPU | ours, CPU |")
    print("|---|---|---|---|")
    rows = [
        ("spacing (mm)", NNUNET_TASK04["pixdim"], gpu["pixdim"], cpu["pixdim"]),
        ("patch", NNUNET_TASK04["patch_size"], gpu["patch_size"], cpu["patch_size"]),
        ("patches per step", NNUNET_TASK04["batch"], gpu["batch_size"] * gpu["num_samples"],
         cpu["batch_size"] * cpu["num_samples"]),
        ("features", NNUNET_TASK04["features"], features_range(gpu["network"]["features"]),
         features_range(cpu["network"]["features"])),
        ("strides", "2,2,2 x3", gpu["network"]["strides"], cpu["network"]["strides"]),
        ("normalisation", "z-score", gpu["normalization"], cpu["normalization"]),
        ("estimated memory (GB)", "", gpu["cost"]["memory_gb"], cpu["cost"]["memory_gb"]),
        ("estimated step (s)", "", gpu["cost"]["step_seconds"], cpu["cost"]["step_seconds"]),
        ("estimated epoch (s)", "", gpu["cost"]["epoch_seconds"], cpu["cost"]["epoch_seconds"]),
        ("epochs", 1000, gpu["epochs"], cpu["epochs"]),
        ("cache", "", gpu["cache"]["policy"], cpu["cache"]["policy"]),
        ("sliding window overlap", 0.5, gpu["inference"]["overlap"], cpu["inference"]["overlap"]),
    ]
    for name, *values in rows:
        print(f"| {name} | " + " | ".join(json.dumps(v).replace('"', "") for v in values) + " |")
    print()


def ct_plan(dataset: str) -> None:
    from unet_med.bundle.plan import decision_table

    with tempfile.TemporaryDirectory() as folder:
        for device in ("cpu", "cuda"):
            plan, reasons, seconds = plan_of(dataset, device, Path(folder))
            print(f"## {dataset}, planned for {device} ({seconds:.1f} s)\n")
            print("```")
            print(decision_table(plan, reasons, width=200))
            print((Path(folder) / f"plan_{device}.yaml").read_text())
            print("```\n")


def measure_step(patch: list[int], batch: int, features: list[int], classes: int) -> float:
    """Peak memory (bytes) that one training step adds to a process that has built the network (run in a child)."""
    import torch
    from monai.losses import DiceCELoss

    from unet_med.networks import UNet

    torch.manual_seed(0)
    network = UNet(3, 1, classes, features=features)
    optimizer = torch.optim.AdamW(network.parameters())
    loss = DiceCELoss(to_onehot_y=True, softmax=True)
    image = torch.randn(batch, 1, *patch)
    label = torch.randint(0, classes, (batch, 1, *patch))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    loss(network(image), label).backward()
    optimizer.step()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before


def memory_table() -> None:
    from unet_med.bundle.cost import training_memory_bytes

    print(f"## Memory: estimate against a measured CPU training step ({time.strftime('%Y-%m-%d', time.gmtime())})\n")
    print("| patch | batch | features | classes | estimated (GB) | measured (GB) | estimate / measured |")
    print("|---|---|---|---|---|---|---|")
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    for patch, batch, features, classes in MEMORY_CASES:
        strides, kernels = [[2, 2, 2]] * (len(features) - 1), [[3, 3, 3]] * len(features)
        estimate = training_memory_bytes(patch, batch, features, strides, kernels, 1, classes)
        result = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps([patch, batch, features, classes])],
            capture_output=True, text=True, env=env, check=True,
        )
        measured = float(result.stdout.strip().splitlines()[-1])
        print(f"| {'x'.join(map(str, patch))} | {batch} | {features_range(features)} | {classes} | "
              f"{estimate / 1e9:.2f} | {measured / 1e9:.2f} | {estimate / measured:.2f} |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hippocampus", help="the MSD Task04 folder")
    parser.add_argument("--ct", help="a CT Decathlon folder, e.g. /data/ct_example")
    parser.add_argument("--memory", action="store_true", help="estimate vs measured memory of training steps")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(measure_step(*json.loads(args.child)))
        return
    import torch

    from unet_med.bundle.cost import measure_flops_per_second

    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}")
    rate = measure_flops_per_second(3, [16, 32, 64, 128], 1, 3)
    print(f"measured now (what --measure would use): {rate / 1e9:.3g} GFLOP/s for a 16..128 UNet step on 32^3; "
          "the plans below use the nominal rates\n")
    if args.hippocampus:
        hippocampus_table(args.hippocampus)
    if args.ct:
        ct_plan(args.ct)
    if args.memory:
        memory_table()


if __name__ == "__main__":
    main()
