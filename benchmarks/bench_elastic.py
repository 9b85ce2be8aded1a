"""Times RandPaperElasticd against MONAI's Rand2DElasticd / Rand3DElasticd on an image and label pair.

Usage: ``PYTHONPATH=. python benchmarks/bench_elastic.py [--runs 7]``. Prints a markdown table of the median
time per sample over ``--runs`` runs (after one warm-up run), on CPU with PyTorch's default thread count.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from monai.transforms import Rand2DElasticd, Rand3DElasticd
from torch.nn.functional import grid_sample

from unet_med.transforms import RandPaperElasticd, sampling_grid

KEYS = ["image", "label"]
MODES = ["bilinear", "nearest"]


def median_seconds(function: Callable[[], object], runs: int) -> float:
    function()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sample(size: int, spatial_dims: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    shape = (1, *[size] * spatial_dims)
    return {
        "image": torch.rand(shape, generator=generator),
        "label": torch.randint(0, 3, shape, generator=generator).float(),
    }


def grid_sample_floor(data: dict[str, torch.Tensor]) -> Callable[[], object]:
    """Two plain grid_sample calls (image bilinear, label nearest) with a grid computed beforehand."""
    spatial = data["image"].shape[1:]
    grid = sampling_grid(10.0 * torch.randn(1, *[3] * len(spatial), len(spatial)), spatial)
    image, label = data["image"][None], data["label"][None]

    def resample() -> None:
        for values, mode in ((image, "bilinear"), (label, "nearest")):
            grid_sample(values, grid, mode=mode, padding_mode="reflection", align_corners=True)

    return resample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7, help="timed runs per row; the median is reported")
    runs = parser.parse_args().runs
    cases = {
        "3D, 128^3": (
            sample(128, 3),
            Rand3DElasticd(KEYS, sigma_range=(5, 8), magnitude_range=(100, 200), prob=1.0, mode=MODES),
            "Rand3DElasticd(sigma_range=(5, 8), magnitude_range=(100, 200))",
        ),
        "2D, 512^2": (
            sample(512, 2),
            Rand2DElasticd(KEYS, spacing=(20, 20), magnitude_range=(1, 2), prob=1.0, mode=MODES),
            "Rand2DElasticd(spacing=(20, 20), magnitude_range=(1, 2))",
        ),
    }
    print(f"{torch.get_num_threads()} threads, median of {runs} runs, image + label per sample\n")
    print("| case | transform | time per sample | vs RandPaperElasticd |")
    print("|---|---|---|---|")
    for case, (data, monai_transform, monai_name) in cases.items():
        ours = RandPaperElasticd(KEYS, prob=1.0, mode=MODES).set_random_state(0)
        monai_transform.set_random_state(0)
        ours_s = median_seconds(lambda ours=ours, data=data: ours(data), runs)
        rows = [
            ("RandPaperElasticd(sigma=10, grid_size=3)", ours_s),
            (monai_name, median_seconds(lambda t=monai_transform, data=data: t(data), runs)),
            ("two `grid_sample` calls, grid given", median_seconds(grid_sample_floor(data), runs)),
        ]
        for name, seconds in rows:
            print(f"| {case} | {name} | {seconds * 1e3:.1f} ms | {seconds / ours_s:.2f}x |")


if __name__ == "__main__":
    main()
