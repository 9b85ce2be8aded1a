"""Plan training and inference from a data set's fingerprint: every value with the rule and the reason behind it.

A command, as well as what the bundles run when they find no plan::

    python -m unet_med.bundle.plan /data/Task04_Hippocampus --output models/plan.yaml --device cpu

checks the data set (:func:`unet_med.bundle.dataset_check.check_dataset`), fingerprints it
(:mod:`unet_med.bundle.fingerprint`, cached beside the plan), plans, prints a table of the decisions and writes
the plan file (:mod:`unet_med.bundle.plan_file`). The rules, in the order they are applied:

- **Spacing**: the median per axis (half the cases are finer, half coarser: the least resampling overall). If
  the coarsest median axis is more than 3x the finest, that axis takes its 10th percentile instead (not finer
  than the other axes): interpolating few thick slices to the median's would invent more than it keeps.
- **Normalisation**, per channel: a channel named CT is clipped to the foreground's 0.5 / 99.5 percentiles
  and z-scored with the data set's foreground mean and std (Hounsfield units mean the same in every scan);
  any other channel is z-scored per case (MRI intensities have no unit), over the nonzero voxels when cropping
  to nonzero shrinks the median image below 3/4 (then the zero background would dominate the statistics).
- **Network**: an axis whose spacing is more than twice the finest (of the axes still large enough to pool) is
  not pooled and its kernel is 1 until pooling the others catches up, 3 from then on (a 3x3 kernel across 3 mm
  slices mixes tissue the in-plane kernel keeps apart); an axis is pooled while its map has at least 8 voxels,
  so the coarsest map has about 4 voxels per axis; widths double from 32 to a cap of 320 (3D) / 512 (2D),
  nnU-Net's. On a CPU the widths double from 16 to 128 (3D) / 256 (2D): on the hippocampus 16..128 with
  32x48x32 patches reached the same Dice per epoch as 32..256 with 40x56x40 patches at 1/3.4 of the time.
- **Patch**: the median image in the target spacing (the aspect and, if memory allows, all of a typical
  case), cut down to multiples of the network's total stride per axis (never larger than the median image);
  while the estimated training memory of 2 patches exceeds ``memory_budget`` (or, on a CPU, a step of 4
  patches would count more than ``max_step_gflop`` operations), the axis longest relative to the median image
  loses one stride. The CPU limit is counted, not timed, so that the same data give the same plan on any
  machine whatever its load; the plan states the time it expects.
- **Batch**: on a GPU as many patches as the memory budget holds; on a CPU 4 (2 cases x 2 patches, the
  hippocampus setting whose Dice the rules above keep); always at least 2 and at most 5% of the data set's
  voxels per step (more adds near-duplicate patches, not information).
- **Inference, cache, epochs, configurations**: see :func:`make_plan`.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unet_med.bundle import cost
from unet_med.bundle.datalists import check_output_dir, decathlon_datalist
from unet_med.bundle.dataset_check import DatasetError, check_dataset
from unet_med.bundle.errors import BundleError
from unet_med.bundle.fingerprint import Fingerprint, channel_names, compute_fingerprint
from unet_med.bundle.plan_file import FINGERPRINT_PERCENTILES, PLAN_VERSION, round_floats, write_plan
from unet_med.bundle.scan_check import FACTOR, trained_on

__all__ = ["PlanSettings", "check_plan_output", "decision_table", "main", "make_plan", "network_topology",
           "plan_dataset", "target_spacing"]

ANISOTROPY_RATIO = 3.0
POOL_SPACING_RATIO = 2.0
MIN_FEATURE_MAP = 4
NONZERO_CROP_RATIO = 0.75
MAX_BATCH_VOXEL_FRACTION = 0.05
MAX_SPACING_SPREAD = 10.0
PATCHES_PER_CASE = 2
CPU_PATCHES_PER_STEP = 4
VAL_FRACTION = 0.2
MAX_EPOCHS = 1000
# Training throughput, operations per second, from end to end (loading, augmentation and validation included):
# CPU: the hippocampus run of 16 epochs of 80 steps of 71 GFLOP in 40 min on a 2-core AVX2 EPYC (38 GFLOP/s),
# rounded down; GPU: an assumed 20 TFLOP/s for mixed precision on a current data-centre GPU.
NOMINAL_FLOPS = {"cpu": 35e9, "cuda": 20e12}
MIN_PATCH = {3: 16, 2: 32}
MAX_LEVELS = {3: 6, 2: 8}
WIDTHS = {("cuda", 3): (32, 320), ("cuda", 2): (32, 512), ("cpu", 3): (16, 128), ("cpu", 2): (16, 256)}


@dataclass(frozen=True)
class PlanSettings:
    """What the planner is asked to plan for.

    Attributes:
        device: ``"cpu"`` or ``"cuda"``: the device training runs on (not necessarily this machine's).
        spatial_dims: 3 (volumes) or 2 (slices of the volumes' last axis, as the 2D bundle reads them).
        memory_budget_gb: memory for one training step's activations and weights, GB (default: 8 on either
            device: nnU-Net's GPU reference, which leaves room on a 16 GB GPU for cuDNN workspaces and on a 24 GB
            machine for the cached data and the loader workers).
        ram_budget_gb: memory the preprocessed data set may take in RAM (default: a quarter of this machine's).
        max_step_gflop: on a CPU, the most operations (GFLOP, forward and backward) a training step may count:
            250 by default, 3.5x the hippocampus step of 4 patches 32x48x32 at widths 16..128 (71 GFLOP, about
            2 s on 2 cores), so that a CT patch stays near 64 voxels per axis.
        time_budget_hours: training time the epochs are planned for (default 1 h on a CPU, 24 h on a GPU).
        flops_per_second: the device's training throughput for the time estimates; ``None``: a nominal rate
            (``NOMINAL_FLOPS``), so that the same data give the same plan on any machine.
        measure: time the device instead (:func:`unet_med.bundle.cost.measure_flops_per_second`): this
            machine's rate now, which varies with its load; a GPU plan made without a GPU keeps the nominal rate.
    """

    device: str = "cpu"
    spatial_dims: int = 3
    memory_budget_gb: float = 8.0
    ram_budget_gb: float | None = None
    max_step_gflop: float = 250.0
    time_budget_hours: float | None = None
    flops_per_second: float | None = None
    measure: bool = False

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise BundleError(f"device must be cpu or cuda, got {self.device!r}")
        if self.spatial_dims not in (2, 3):
            raise BundleError(f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        for name in ("memory_budget_gb", "ram_budget_gb", "max_step_gflop", "time_budget_hours",
                     "flops_per_second"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise BundleError(f"{name} must be positive, got {value}")


class _Decisions:
    """Plan values and their reasons, set together."""

    def __init__(self) -> None:
        self.plan: dict[str, Any] = {}
        self.reasons: dict[str, str] = {}

    def set(self, key: str, value: Any, reason: str) -> None:
        *parents, leaf = key.split(".")
        section = self.plan
        for part in parents:
            section = section.setdefault(part, {})
        section[leaf] = round_floats(value)
        self.reasons[key] = reason


def _mm(values: Sequence[float]) -> str:
    return " x ".join(f"{v:.3g}" for v in values)


def _voxels(values: Sequence[float]) -> str:
    return " x ".join(f"{v:.0f}" for v in values)


def target_spacing(fingerprint: Fingerprint, source: str | os.PathLike) -> tuple[np.ndarray, str]:
    """The planned spacing (mm per axis) and its reason.

    Raises:
        BundleError: if a case's spacing is more than ``MAX_SPACING_SPREAD`` times off the median on some axis
            (a header in other units, or a case from another data set).
    """
    spacings = fingerprint.spacings()
    median = np.median(spacings, axis=0)
    spread = np.maximum(spacings / median, median / spacings).max(axis=1)
    outliers = np.flatnonzero(spread > MAX_SPACING_SPREAD)
    if outliers.size:
        case = fingerprint.cases[outliers[0]]
        others = f" (and {outliers.size - 1} more cases)" if outliers.size > 1 else ""
        raise BundleError(
            f"{case.image}: spacing {_mm(case.spacing)} mm is more than {MAX_SPACING_SPREAD:g}x off the data set's "
            f"median {_mm(median)} mm{others}: fix its header or leave it out of {source}"
        )
    target = median.copy()
    coarse = int(np.argmax(target))
    ratio = target[coarse] / target.min()
    reason = f"median spacing of the {len(spacings)} cases (mm)"
    if ratio > ANISOTROPY_RATIO:
        others = np.delete(target, coarse)
        target[coarse] = max(float(np.percentile(spacings[:, coarse], 10)), float(others.max()))
        reason += (f"; axis {coarse} is {ratio:.1f}x coarser than the finest (> {ANISOTROPY_RATIO:g}), so it takes "
                   f"its 10th percentile {target[coarse]:.3g} mm: fewer slices interpolated")
    return target, reason


def network_topology(
    patch: Sequence[int], spacing: Sequence[float], max_levels: int
) -> tuple[list[list[int]], list[list[int]]]:
    """Per-level strides and kernels for a patch at a spacing.

    At each level, the axes whose maps have at least ``2 * MIN_FEATURE_MAP`` voxels may be pooled; of those, an
    axis is pooled if its spacing is at most twice the finest of them. An axis's kernel is 1 until its spacing
    first comes within twice that finest spacing, and 3 from then on (an axis that stops pooling because its
    map is small keeps its 3).

    Args:
        patch: voxels per axis.
        spacing: mm per axis at the top level.
        max_levels: the most levels.

    Returns:
        ``(strides, kernels)``: ``levels - 1`` strides and ``levels`` kernels, one int per axis each.
    """
    size, current = list(patch), list(spacing)
    strides: list[list[int]] = []
    kernels: list[list[int]] = []
    kernel = [1] * len(size)
    while True:
        poolable = [n >= 2 * MIN_FEATURE_MAP for n in size]
        finest = min((c for c, can in zip(current, poolable) if can), default=min(current))
        fine_enough = [c <= POOL_SPACING_RATIO * finest for c in current]
        kernel = [3 if k == 3 or fine else 1 for k, fine in zip(kernel, fine_enough)]
        kernels.append(kernel)
        stride = [2 if can and fine else 1 for can, fine in zip(poolable, fine_enough)]
        if max(stride) == 1 or len(kernels) == max_levels:
            return strides, kernels
        strides.append(stride)
        size = [n // s for n, s in zip(size, stride)]
        current = [c * s for c, s in zip(current, stride)]


def _fit_topology(patch: list[int], spacing: Sequence[float], max_levels: int) -> tuple[list[int], list, list]:
    """Cut ``patch`` down to multiples of its network's total strides, until the network no longer changes."""
    while True:
        strides, kernels = network_topology(patch, spacing, max_levels)
        total = [math.prod(stride[axis] for stride in strides) for axis in range(len(patch))]
        cut = [max(step, n // step * step) for n, step in zip(patch, total)]
        if cut == patch:
            return patch, strides, kernels
        patch = cut


def _widths(levels: int, device: str, dims: int) -> list[int]:
    base, cap = WIDTHS[(device, dims)]
    return [min(base * 2**level, cap) for level in range(levels)]


def _nbytes_gb(value: float) -> float:
    return value / 1e9


def _three_digits(value: float) -> float:
    """An estimate to 3 significant digits: what it can claim."""
    return float(f"{value:.3g}")


@dataclass
class _Candidate:
    patch: list[int]
    strides: list
    kernels: list
    features: list[int]

    def memory(self, batch: int, in_channels: int, classes: int) -> float:
        return cost.training_memory_bytes(self.patch, batch, self.features, self.strides, self.kernels, in_channels,
                                          classes)

    def flops(self, batch: int, in_channels: int, classes: int) -> float:
        return cost.training_flops(self.patch, batch, self.features, self.strides, self.kernels, in_channels, classes)


def _candidate(patch: list[int], spacing: Sequence[float], settings: PlanSettings) -> _Candidate:
    patch, strides, kernels = _fit_topology(patch, spacing, MAX_LEVELS[settings.spatial_dims])
    return _Candidate(patch, strides, kernels, _widths(len(kernels), settings.device, settings.spatial_dims))


def _throughput(settings: PlanSettings, features: list[int], in_channels: int, classes: int) -> tuple[float, str]:
    """The device's training throughput and how it was obtained."""
    if settings.flops_per_second is not None:
        return settings.flops_per_second, f"{settings.flops_per_second / 1e9:.3g} GFLOP/s as given"
    nominal = NOMINAL_FLOPS[settings.device]
    nominal_how = {"cpu": f"the nominal {nominal / 1e9:g} GFLOP/s of a 2-core AVX2 CPU (the hippocampus run's)",
                   "cuda": f"an assumed {nominal / 1e12:g} TFLOP/s"}[settings.device]
    if not settings.measure:
        return nominal, nominal_how
    import torch

    if settings.device == "cuda" and not torch.cuda.is_available():
        return nominal, f"{nominal_how} (no GPU here to time)"
    rate = cost.measure_flops_per_second(settings.spatial_dims, features, in_channels, classes, settings.device)
    threads = f", {torch.get_num_threads()} threads" if settings.device == "cpu" else ""
    return rate, f"{rate / 1e9:.3g} GFLOP/s measured by a timed UNet step on this {settings.device}{threads}"


def make_plan(
    fingerprint: Fingerprint, settings: PlanSettings, source: str | os.PathLike = "the data set"
) -> tuple[dict[str, Any], dict[str, str]]:
    """Plan from a fingerprint.

    Args:
        fingerprint: the data set's.
        settings: device, dimensions and budgets.
        source: the data set, named in errors.

    Returns:
        ``(plan, reasons)``: nested plain values and one line per value keyed by dotted path.

    Raises:
        BundleError: for spacings that differ wildly, or a memory budget too small for the smallest sensible
            patch (one line each).
    """
    dims, device = settings.spatial_dims, settings.device
    decisions = _Decisions()
    channels, classes = len(fingerprint.channel_names), len(fingerprint.labels)
    cases = len(fingerprint.cases)
    decisions.set("version", PLAN_VERSION, "plan file format")
    decisions.set("dataset_dir", fingerprint.dataset_dir, f"the data set planned for; training cases: {cases}")
    decisions.set("device", device, "the device planned for: widths, patch and batch weigh its memory and speed")
    decisions.set("spatial_dims", dims, "3: volumes; 2: slices along the last (RAS superior) axis")
    names_reason = ("dataset.json's channel names" if fingerprint.names_given
                    else "dataset.json names no channels: generic names, each z-scored per case")
    decisions.set("channel_names", list(fingerprint.channel_names), names_reason)
    decisions.set("in_channels", channels, "image channels, one per name")
    decisions.set("num_classes", classes, "dataset.json's labels, background included")

    spacing, spacing_reason = target_spacing(fingerprint, source)
    decisions.set("pixdim", [float(s) for s in spacing], spacing_reason)

    cropped = fingerprint.cropped_shapes()
    crop_ratio = float(np.median(np.prod(cropped, axis=1) / np.prod(fingerprint.shapes(), axis=1)))
    for index, (name, stats) in enumerate(zip(fingerprint.channel_names, fingerprint.intensity)):
        if name.strip().upper() == "CT":
            clip = [stats["percentile_00_5"], stats["percentile_99_5"]]
            entry = {"scheme": "ct", "clip": clip, "mean": stats["mean"], "std": max(stats["std"], 1e-6)}
            reason = (f"{name}: HU mean the same in every scan: clip to the foreground's 0.5/99.5 percentiles, "
                      "z-score with the data set's foreground mean/std")
        else:
            nonzero = crop_ratio < NONZERO_CROP_RATIO
            entry = {"scheme": "zscore", "nonzero": nonzero}
            reason = (f"{name}: intensities without a unit: z-score per case; cropping to nonzero keeps "
                      f"{crop_ratio:.0%} of the median image, so "
                      + ("statistics over nonzero voxels only" if nonzero else "over all voxels"))
        decisions.plan.setdefault("normalization", []).append(round_floats(entry))
        decisions.reasons[f"normalization.{index}"] = reason
    decisions.reasons["normalization"] = "one entry per channel"

    median_shape = np.median(cropped * fingerprint.spacings() / spacing, axis=0)
    in_plane = median_shape[:dims]
    axes_spacing = list(spacing[:dims])
    median_patch = [max(1, int(n)) for n in in_plane]
    candidate = _candidate(list(median_patch), axes_spacing, settings)
    budget = settings.memory_budget_gb * 1e9
    rate, rate_how = _throughput(settings, candidate.features, channels, classes)
    min_patch = [min(MIN_PATCH[dims], n) for n in median_patch]

    def too_costly(c: _Candidate) -> bool:
        if c.memory(2, channels, classes) > budget:
            return True
        return device == "cpu" and c.flops(CPU_PATCHES_PER_STEP, channels, classes) > settings.max_step_gflop * 1e9

    shrunk_for = ""
    while too_costly(candidate):
        shrunk_for = "memory" if candidate.memory(2, channels, classes) > budget else "operations"
        total = [math.prod(s[a] for s in candidate.strides) for a in range(dims)]
        order = np.argsort([-p / m for p, m in zip(candidate.patch, median_patch)])
        axis = next((int(a) for a in order if candidate.patch[a] - total[a] >= min_patch[a]), None)
        if axis is None:
            break
        smaller = list(candidate.patch)
        smaller[axis] -= total[axis]
        candidate = _candidate(smaller, axes_spacing, settings)
    memory_two = candidate.memory(2, channels, classes)
    if memory_two > budget:
        raise BundleError(
            f"memory_budget {settings.memory_budget_gb:g} GB is too small for {source}: the smallest sensible patch "
            f"{_voxels(candidate.patch)} with 2 patches per step needs {_nbytes_gb(memory_two):.2f} GB"
        )
    patch_reason = (f"the median image ({_voxels(in_plane)} voxels at the planned spacing) cut to multiples of the "
                    f"network's strides")
    if shrunk_for:
        limit = (f"the {settings.memory_budget_gb:g} GB memory budget" if shrunk_for == "memory"
                 else f"a CPU step of {settings.max_step_gflop:g} GFLOP")
        patch_reason += f", shrunk along its longest axis relative to the median image to fit {limit}"
        if too_costly(candidate):
            step = candidate.flops(CPU_PATCHES_PER_STEP, channels, classes) / 1e9
            patch_reason += f" (the smallest sensible patch still counts {step:.3g} GFLOP)"
    decisions.set("patch_size", candidate.patch, patch_reason)

    width_reason = {"cuda": "double from 32 to nnU-Net's cap", "cpu": "double from 16 to a CPU cap: same Dice "
                    "per epoch as 32..256 on the hippocampus at 1/3.4 of the time"}[device]
    decisions.set("network.features", candidate.features,
                  f"one per level, until the coarsest map is about {MIN_FEATURE_MAP} voxels; widths {width_reason}")
    decisions.set("network.strides", candidate.strides,
                  f"per pooling and axis: an axis more than {POOL_SPACING_RATIO:g}x coarser than the finest is not "
                  f"pooled (1) until the others catch up")
    decisions.set("network.kernel_size", candidate.kernels,
                  "per level and axis: 1 across an axis more than 2x coarser than the finest, else 3")
    decisions.reasons["network"] = "unet_med.networks.UNet's arguments"

    data_voxels = float(np.sum(np.prod(cropped * fingerprint.spacings() / spacing, axis=1)))
    patch_voxels = math.prod(candidate.patch)
    by_data = max(2, int(MAX_BATCH_VOXEL_FRACTION * data_voxels // patch_voxels))
    if device == "cuda":
        by_memory = 2
        while candidate.memory(by_memory + 1, channels, classes) <= budget and by_memory <= by_data:
            by_memory += 1
        patches, batch_why = by_memory, f"as many as the {settings.memory_budget_gb:g} GB budget holds"
    else:
        patches, batch_why = CPU_PATCHES_PER_STEP, "the CPU setting measured on the hippocampus"
    if patches > by_data:
        patches, batch_why = by_data, f"capped at {MAX_BATCH_VOXEL_FRACTION:.0%} of the data set's voxels"
    batch_size = max(1, patches // PATCHES_PER_CASE)
    patches = batch_size * PATCHES_PER_CASE
    decisions.set("batch_size", batch_size, f"cases per step; {patches} patches per step: {batch_why} (at least 2)")
    decisions.set("num_samples", PATCHES_PER_CASE,
                  "patches cropped from each loaded case: halves the loading per patch")

    overlap = 0.5 if device == "cuda" else 0.25
    overlap_why = ("nnU-Net's: each voxel seen by several windows, blended" if device == "cuda" else
                   f"on a CPU: about {(1 / (1 - 0.25)) ** dims:.1f}x the windows of no overlap instead of "
                   f"{(1 / (1 - 0.5)) ** dims:.0f}x")
    decisions.set("inference.sw_batch_size", patches,
                  "windows per forward pass: the training batch (no gradients kept, so it fits with room to spare)")
    decisions.set("inference.overlap", overlap, overlap_why)
    decisions.reasons["inference"] = "sliding-window inference (MONAI's SlidingWindowInferer, gaussian blending)"

    preprocessed = data_voxels * (4 * channels + 1)
    ram_budget = (settings.ram_budget_gb * 1e9 if settings.ram_budget_gb is not None
                  else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 4)
    in_ram = preprocessed <= ram_budget
    decisions.set("cache.policy", "ram" if in_ram else "disk",
                  f"preprocessed cases take {_nbytes_gb(preprocessed):.3g} GB (float32 images, uint8 labels), "
                  + (f"within the RAM budget of {_nbytes_gb(ram_budget):.1f} GB: CacheDataset" if in_ram else
                     f"more than the RAM budget of {_nbytes_gb(ram_budget):.1f} GB: PersistentDataset on disk"))
    decisions.set("cache.preprocessed_gb", _three_digits(_nbytes_gb(preprocessed)), "float32 images and uint8 labels")
    decisions.reasons["cache"] = "where the deterministic preprocessing is kept between epochs"

    step_flops = candidate.flops(patches, channels, classes)
    step_seconds = step_flops / rate
    training_cases = max(1, cases - max(1, round(VAL_FRACTION * cases))) if cases > 1 else 1
    steps = math.ceil(training_cases / batch_size)
    epoch_seconds = steps * step_seconds
    hours = settings.time_budget_hours or (1.0 if device == "cpu" else 24.0)
    epochs = int(min(MAX_EPOCHS, max(1, hours * 3600 // max(epoch_seconds, 1e-9))))
    decisions.set("cost.memory_gb", _three_digits(_nbytes_gb(candidate.memory(patches, channels, classes))),
                  "estimated training memory: activations autograd keeps, weights, gradients, AdamW moments")
    decisions.set("cost.step_gflop", _three_digits(step_flops / 1e9), "convolutions of one forward + backward step")
    decisions.set("cost.step_seconds", _three_digits(step_seconds), f"the step's operations at {rate_how}")
    split = (f"{steps} steps ({training_cases} of {cases} cases train, {VAL_FRACTION:.0%} validate)" if cases > 1
             else "1 step (one case: nothing to validate on)")
    decisions.set("cost.epoch_seconds", _three_digits(epoch_seconds),
                  f"{split}; compute only: loading, augmentation and validation come on top")
    decisions.reasons["cost"] = "what a step and an epoch will cost (estimates, not limits)"
    decisions.set("epochs", epochs,
                  f"what fits {hours:g} h at the estimated epoch cost, at most nnU-Net's {MAX_EPOCHS}")

    image_fraction = patch_voxels / max(1.0, float(np.prod(in_plane)))
    slices = float(median_shape[2])
    configs = ["2d"] + (["3d"] if slices >= MIN_PATCH[3] else [])
    config_reason = ("2d always (slices of any volume); " + (
        f"3d: the median image has {slices:.0f} slices" if "3d" in configs
        else f"no 3d: the median image has only {slices:.0f} slices"))
    if dims == 3 and image_fraction < 0.25:
        config_reason += (f"; the patch covers {image_fraction:.0%} of the median image: nnU-Net would add a "
                          "low-resolution cascade, which unet-med does not plan")
    decisions.set("configurations", configs, config_reason)

    ranges = trained_on(fingerprint.spacings(), fingerprint.shapes())
    for name, what in (("spacing", "voxel spacing"), ("size", "size (shape x spacing)")):
        decisions.set(f"trained_on.{name}", ranges[name],
                      f"the smallest and the largest {what} per RAS axis of the {cases} cases (mm)")
    decisions.reasons["trained_on"] = (f"the scans planned from: inference warns about a scan more than {FACTOR:g}x "
                                       "outside a range on an axis (--strict_scans true refuses it)")
    _record_fingerprint(decisions, fingerprint)
    return decisions.plan, decisions.reasons


def _record_fingerprint(decisions: _Decisions, fingerprint: Fingerprint) -> None:
    """Record what the plan was made from, for training to compare a data set with (:mod:`.plan_data`)."""
    decisions.set("fingerprint.median_spacing", [float(s) for s in fingerprint.median_spacing()],
                  "median spacing of the cases planned from (mm)")
    decisions.plan["fingerprint"]["intensity"] = [
        round_floats({key: stats[key] for key in FINGERPRINT_PERCENTILES})
        for stats in fingerprint.intensity
    ]
    for index, name in enumerate(fingerprint.channel_names):
        decisions.reasons[f"fingerprint.intensity.{index}"] = f"{name}: foreground intensity percentiles"
    decisions.reasons["fingerprint.intensity"] = "one entry per channel"
    decisions.reasons["fingerprint"] = ("the data planned from: training refuses a data set whose spacing, channels "
                                        "or CT intensities differ")


def _first_image_channels(datalist: Sequence[dict[str, str]]) -> int:
    """Channels of the first image's header; 1 if it cannot be read (the data check then says why)."""
    import nibabel as nib

    try:
        shape = nib.load(datalist[0]["image"]).shape
    except Exception:  # nibabel raises many types for missing or broken files
        return 1
    return shape[3] if len(shape) == 4 else 1


def plan_dataset(
    dataset_dir: str | os.PathLike,
    output: str | os.PathLike = "models/plan.yaml",
    settings: PlanSettings | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Check, fingerprint (cached as ``fingerprint.json`` beside ``output``), plan and write the plan file.

    Args:
        dataset_dir: the Decathlon folder.
        output: the plan file to write.
        settings: what to plan for (default: :class:`PlanSettings`).
        workers: processes fingerprinting.
        progress: show the fingerprint's progress bar.

    Returns:
        ``(plan, reasons)`` as written.

    Raises:
        BundleError: the data check's problems (:class:`~unet_med.bundle.dataset_check.DatasetError`), or one
            line for a case or setting the planner refuses.
    """
    settings = settings or PlanSettings()
    names = channel_names(dataset_dir)
    in_channels = len(names) if names else _first_image_channels(decathlon_datalist(dataset_dir, check_files=False))
    datalist = check_dataset(dataset_dir, settings.spatial_dims, in_channels)
    output = Path(output)
    fingerprint = compute_fingerprint(dataset_dir, output.with_name("fingerprint.json"), workers, datalist=datalist,
                                      progress=progress)
    plan, reasons = make_plan(fingerprint, settings, dataset_dir)
    header = (f"Planned by python -m unet_med.bundle.plan on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n"
              "Every value has its reason; edit a value to override the rule (the bundles check the file).")
    write_plan(output, plan, reasons, header)
    return plan, reasons


def check_plan_output(output: str | os.PathLike, from_model: str | os.PathLike | None = None) -> None:
    """Refuse a planner ``--output`` that cannot be written, or that belongs to another trained model.

    A plan beside a ``model.pt`` is that model's plan: evaluation, inference and ``--resume`` read it and refuse
    a plan the model was not trained with, so a new plan goes elsewhere (the bundles' training, not the
    planner, replaces a model and its plan together, with ``--overwrite true``). Only that model's own plan
    (``--from_model`` naming it) may be written there.

    Raises:
        BundleError: one line naming ``--output`` and the problem, before anything is read.
    """
    output = Path(output)
    if output.is_dir():
        raise BundleError(f"--output {output} is a folder: name the plan file, e.g. {output / 'plan.yaml'}")
    try:
        check_output_dir(output.parent)
    except BundleError as err:
        raise BundleError(f"--output {output}: {err}") from None
    model = output.parent / "model.pt"
    if model.is_file() and not (from_model is not None and Path(from_model).resolve() == model.resolve()):
        raise BundleError(
            f"--output {output}: {model} is a trained model and this is its plan (evaluation, inference and --resume "
            f"read it): plan into another folder, e.g. --output {output.parent.parent / 'new_plan' / output.name}; "
            f"model.pt keeps the plan it was trained with, and --from_model {model} --output {output} writes it back"
        )


def decision_table(plan: dict[str, Any], reasons: dict[str, str], width: int | None = None) -> str:
    """The plan's main decisions as a text table under a heading: decision, value, reason.

    Values are never cut; a reason longer than its column wraps onto indented lines below it.

    Args:
        plan: the plan.
        reasons: the reason of each dotted key.
        width: the width of the lines (default: the terminal's, 120 when it has none).
    """
    keys = ["pixdim", "normalization", "patch_size", "network.features", "network.strides", "network.kernel_size",
            "batch_size", "inference.overlap", "cache.policy", "cost.memory_gb", "cost.epoch_seconds", "epochs",
            "configurations"]
    rows = [("decision", "value", "reason")]
    for key in keys:
        value: Any = plan
        for part in key.split("."):
            value = value[part]
        if key == "normalization":
            value = [entry["scheme"] for entry in value]
            reason = "; ".join(reasons[f"normalization.{i}"] for i in range(len(value)))
        else:
            reason = reasons.get(key, "")
        rows.append((key, str(value).replace(" ", ""), reason))
    first = max(len(row[0]) for row in rows)
    second = max(len(row[1]) for row in rows)
    indent = first + second + 4
    reason_width = max(40, (width or shutil.get_terminal_size((120, 24)).columns) - indent)
    lines = []
    for key, value, reason in rows:
        wrapped = textwrap.wrap(reason, reason_width) or [""]
        lines.append(f"{key:<{first}}  {value:<{second}}  {wrapped[0]}".rstrip())
        lines += [" " * indent + more for more in wrapped[1:]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Plan from the command line; print the decisions; return 0, or 1 with the problem on stderr."""
    parser = argparse.ArgumentParser(prog="python -m unet_med.bundle.plan", description=__doc__.splitlines()[0])
    parser.add_argument("dataset_dir", nargs="?", help="Decathlon folder: dataset.json, imagesTr/, labelsTr/")
    parser.add_argument("--from_model", default=None,
                        help="instead of planning, write the plan this trained model.pt records to --output")
    parser.add_argument("--output", default="models/plan.yaml", help="plan file to write (default models/plan.yaml)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="device to plan for (default: cuda if this machine has one)")
    parser.add_argument("--memory_budget", type=float, default=8.0, help="GB for a training step (default 8)")
    parser.add_argument("--dims", type=int, choices=(2, 3), default=3, help="network dimensions (default 3)")
    parser.add_argument("--workers", type=int, default=None, help="fingerprinting processes (default: CPUs)")
    parser.add_argument("--measure", action="store_true",
                        help="estimate times from a timed training step on this machine, not the nominal rate")
    args = parser.parse_args(argv)
    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if (args.dataset_dir is None) == (args.from_model is None):
        print("unet-med: give DATASET_DIR to plan from a data set, or --from_model MODEL to write back the plan a "
              "trained model records", file=sys.stderr)
        return 1
    try:
        check_plan_output(args.output, args.from_model)
        if args.from_model is not None:
            from unet_med.bundle.planned import restore_plan

            restore_plan(args.from_model, args.output)
            print(f"the plan {args.from_model} was trained with written to {args.output}")
            return 0
        settings = PlanSettings(device=device, spatial_dims=args.dims, memory_budget_gb=args.memory_budget,
                                measure=args.measure)
        plan, reasons = plan_dataset(args.dataset_dir, args.output, settings, args.workers)
    except DatasetError as err:
        print(err, file=sys.stderr)
        return 1
    except ValueError as err:
        print(f"unet-med: {err}", file=sys.stderr)
        return 1
    print(decision_table(plan, reasons))
    print(f"plan written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
