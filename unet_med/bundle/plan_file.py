"""The plan file: one YAML file of every planned value, each line commented with its reason.

Written by :func:`write_plan`, e.g. ``models/plan.yaml``::

    pixdim: [1.0, 1.0, 1.0]  # median spacing of the 200 cases (mm); no axis coarser than 3x the finest
    patch_size: [32, 48, 32]  # the median image (36 x 50 x 35 voxels) cut down to multiples of 8 ...
    network:
      features: [32, 64, 128, 256]  # widths double from 32 to the cap 320 ...

Comments are YAML comments, so the file loads back into plain values (:func:`load_plan`) and a user edits it
like any configuration: change a value (and its comment, if they like). :func:`load_plan` applies overrides
(what a command line sets wins over the file) and then validates every value, so that an edited plan that the
bundles could not run fails at once, with one line that names the file, the key and the value.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from unet_med.bundle.errors import BundleError
from unet_med.bundle.io import atomic_write

__all__ = ["FINGERPRINT_PERCENTILES", "NORMALIZATION_SCHEMES", "PLAN_VERSION", "apply_overrides", "load_plan",
           "read_plan_text", "render_plan", "round_floats", "validate_plan", "write_plan"]

PLAN_VERSION = 1
NORMALIZATION_SCHEMES = ("zscore", "ct")
CACHE_POLICIES = ("ram", "disk")
FINGERPRINT_PERCENTILES = ("percentile_00_5", "median", "percentile_99_5")


def round_floats(value: Any) -> Any:
    """``value`` with every float rounded to 6 significant digits (what the plan file keeps), tuples as lists."""
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, Mapping):
        return {key: round_floats(entry) for key, entry in value.items()}
    if isinstance(value, (list, tuple)):
        return [round_floats(entry) for entry in value]
    return value


def _flow(value: Any) -> str:
    """A value on one line, in YAML flow style (JSON is YAML), floats rounded as :func:`round_floats` does."""
    return json.dumps(round_floats(value), separators=(", ", ": "))


def _comment(reason: str | None) -> str:
    return f"  # {' '.join(reason.split())}" if reason else ""


def render_plan(plan: Mapping[str, Any], reasons: Mapping[str, str], header: str = "") -> str:
    """The plan as YAML text, each value followed by its reason as a comment.

    Args:
        plan: nested values; a mapping becomes a section, a list of mappings one line per item.
        reasons: one line per value, keyed by dotted path (``"network.features"``; list items
            ``"normalization.0"``).
        header: comment lines written first.

    Returns:
        The text.
    """
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]

    def emit(section: Mapping[str, Any], prefix: str, indent: str) -> None:
        for key, value in section.items():
            path = f"{prefix}{key}"
            if isinstance(value, Mapping):
                lines.append(f"{indent}{key}:{_comment(reasons.get(path))}")
                emit(value, f"{path}.", indent + "  ")
            elif isinstance(value, list) and value and all(isinstance(item, Mapping) for item in value):
                lines.append(f"{indent}{key}:{_comment(reasons.get(path))}")
                for index, item in enumerate(value):
                    lines.append(f"{indent}- {_flow(item)}{_comment(reasons.get(f'{path}.{index}'))}")
            else:
                lines.append(f"{indent}{key}: {_flow(value)}{_comment(reasons.get(path))}")

    emit(plan, "", "")
    return "\n".join(lines) + "\n"


def write_plan(path: str | os.PathLike, plan: Mapping[str, Any], reasons: Mapping[str, str], header: str = "") -> Path:
    """Validate the plan and write it atomically (see :func:`render_plan`); create the folder. Returns the path."""
    path = Path(path)
    validate_plan(plan, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as partial:
        partial.write_text(render_plan(plan, reasons, header))
    return path


def apply_overrides(plan: dict[str, Any], overrides: Mapping[str, Any], source: str | os.PathLike) -> dict[str, Any]:
    """A copy of ``plan`` with ``overrides`` set: they win over the file.

    Args:
        plan: the loaded plan.
        overrides: dotted keys (``"patch_size"``, ``"network.features"``) to values; a string value is read as
            YAML, so a command line's ``"[64,64,64]"`` becomes a list.
        source: the plan file, for errors.

    Raises:
        BundleError: for a key the plan does not have.
    """
    result = copy.deepcopy(plan)
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        section = result
        for part in parents:
            section = section.get(part) if isinstance(section, dict) else None
        if not isinstance(section, dict) or leaf not in section:
            raise BundleError(f"{source}: cannot override '{dotted}': the plan has no such value")
        section[leaf] = yaml.safe_load(value) if isinstance(value, str) else value
    return result


def load_plan(path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read a plan file, apply ``overrides`` (they win) and validate it.

    Args:
        path: the plan, e.g. ``models/plan.yaml``.
        overrides: see :func:`apply_overrides`.

    Returns:
        The plan as plain values.

    Raises:
        BundleError: one line naming the file and the first wrong value.
    """
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path}: no plan file: run python -m unet_med.bundle.plan DATASET_DIR --output {path}")
    try:
        plan = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise BundleError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(plan, dict):
        raise BundleError(f"{path}: a plan is a YAML mapping, found {type(plan).__name__}")
    plan = apply_overrides(plan, overrides or {}, path)
    validate_plan(plan, path)
    return plan


def read_plan_text(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, str], str]:
    """A plan file as :func:`write_plan` wrote it: its values, the reasons of its comments, its header.

    The reasons are read back by the file's layout (a key per line, two spaces per section level, ``- `` for
    list items, ``  # `` before the reason): what :func:`write_plan` needs to write the file again with a few
    values changed. A line whose comment a user removed simply has no reason.

    Returns:
        ``(plan, reasons, header)``; ``reasons`` keyed by dotted path as :func:`render_plan` takes them.
    """
    text = Path(path).read_text()
    plan = yaml.safe_load(text)
    reasons: dict[str, str] = {}
    header: list[str] = []
    parents: list[str] = []
    items: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            if not reasons and not parents:
                header.append(line[2:] if line.startswith("# ") else line[1:])
            continue
        content, _, reason = line.partition("  # ")
        depth = (len(content) - len(content.lstrip(" "))) // 2
        stripped = content.strip()
        if not stripped:
            continue
        if stripped.startswith("- "):
            section = ".".join(parents[:depth + 1])
            index = items.get(section, 0)
            items[section] = index + 1
            key = f"{section}.{index}"
        else:
            name = stripped.split(":", 1)[0]
            parents[depth:] = [name]
            key = ".".join(parents[:depth + 1])
        if reason:
            reasons[key] = reason.strip()
    return plan, reasons, "\n".join(header)


def _per_axis(value: Any, dims: int) -> list[int] | None:
    """``value`` as one int per axis (an int stands for every axis), or ``None`` if it is neither."""
    if isinstance(value, int) and not isinstance(value, bool):
        return [value] * dims
    if isinstance(value, list) and len(value) == dims and all(isinstance(v, int) and not isinstance(v, bool)
                                                             for v in value):
        return value
    return None


def _positive_numbers(value: Any, count: int) -> bool:
    return (isinstance(value, list) and len(value) == count
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value))


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def validate_plan(plan: Mapping[str, Any], source: str | os.PathLike) -> None:
    """Refuse a plan the bundles could not run.

    Checks the version, the configuration, spacing, per-channel normalisation, the network's widths, strides and
    kernels (``UNet``'s contract: ``features`` one per level; ``strides`` one per pooling, each an int or one int
    per axis; ``kernel_size`` an int or one per level, each an odd int or one per axis), a patch the network can
    take (every axis a multiple of its total stride), batch, inference, cache and epochs.

    Raises:
        BundleError: ``"<file>: <key> = <value>: <problem>"``, for the first problem found.
    """

    def fail(key: str, value: Any, problem: str) -> None:
        raise BundleError(f"{source}: {key} = {_flow(value)}: {problem}")

    for key in ("version", "spatial_dims", "in_channels", "num_classes", "pixdim", "normalization", "patch_size",
                "network", "batch_size", "num_samples", "inference", "cache", "epochs"):
        if key not in plan:
            raise BundleError(f"{source}: '{key}' is missing")
    if plan["version"] != PLAN_VERSION:
        fail("version", plan["version"], f"this unet-med reads plan version {PLAN_VERSION}")
    dims = plan["spatial_dims"]
    if dims not in (2, 3):
        fail("spatial_dims", dims, "must be 2 or 3")
    if not _positive_numbers(plan["pixdim"], 3):
        fail("pixdim", plan["pixdim"], "must be 3 positive spacings in mm")
    for key in ("in_channels", "num_classes", "batch_size", "num_samples", "epochs"):
        if not _positive_int(plan[key]):
            fail(key, plan[key], "must be a positive integer")
    if plan["num_classes"] < 2:
        fail("num_classes", plan["num_classes"], "must count the background and at least one class")
    _validate_normalization(plan["normalization"], plan["in_channels"], fail)
    strides = _validate_network(plan["network"], dims, fail)
    patch = plan["patch_size"]
    if not (isinstance(patch, list) and len(patch) == dims and all(_positive_int(p) for p in patch)):
        fail("patch_size", patch, f"must be {dims} positive integers (voxels per axis)")
    total = [math.prod(stride[axis] for stride in strides) for axis in range(dims)]
    if any(size % step for size, step in zip(patch, total)):
        fail("patch_size", patch, f"the network's strides need multiples of {total} per axis")
    inference = plan["inference"]
    if not isinstance(inference, Mapping) or not _positive_int(inference.get("sw_batch_size")):
        fail("inference.sw_batch_size", inference.get("sw_batch_size"), "must be a positive integer")
    overlap = inference.get("overlap")
    if not isinstance(overlap, (int, float)) or isinstance(overlap, bool) or not 0 <= overlap < 1:
        fail("inference.overlap", overlap, "must lie in [0, 1)")
    cache = plan["cache"]
    if not isinstance(cache, Mapping) or cache.get("policy") not in CACHE_POLICIES:
        fail("cache.policy", cache.get("policy") if isinstance(cache, Mapping) else cache,
             f"must be one of {', '.join(CACHE_POLICIES)}")
    if "trained_on" in plan:
        _validate_trained_on(plan["trained_on"], fail)
    if "fingerprint" in plan:
        _validate_fingerprint(plan["fingerprint"], plan["in_channels"], fail)


def _validate_trained_on(ranges: Any, fail: Any) -> None:
    """Check the ranges of the scans planned from: ``[[min per axis], [max per axis]]`` mm each."""
    for name in ("spacing", "size"):
        bounds = ranges.get(name) if isinstance(ranges, Mapping) else None
        if not (isinstance(bounds, list) and len(bounds) == 2 and all(_positive_numbers(b, 3) for b in bounds)
                and all(low <= high for low, high in zip(*bounds))):
            fail(f"trained_on.{name}", bounds, "must be [[3 smallest], [3 largest]] positive values in mm")


def _validate_fingerprint(fingerprint: Any, channels: int, fail: Any) -> None:
    """The data the plan was made from (optional: plans before it have none): a spacing and per channel percentiles."""
    if not isinstance(fingerprint, Mapping):
        fail("fingerprint", fingerprint, "must be a section with median_spacing and intensity")
    if not _positive_numbers(fingerprint.get("median_spacing"), 3):
        fail("fingerprint.median_spacing", fingerprint.get("median_spacing"), "must be 3 positive spacings in mm")
    intensity = fingerprint.get("intensity")
    if not isinstance(intensity, list) or len(intensity) != channels:
        fail("fingerprint.intensity", intensity, f"needs one entry per channel (in_channels = {channels})")
    for index, entry in enumerate(intensity):
        if not (isinstance(entry, Mapping) and all(isinstance(entry.get(key), (int, float)) and not isinstance(
                entry.get(key), bool) for key in FINGERPRINT_PERCENTILES)):
            fail(f"fingerprint.intensity.{index}", entry, f"must give {', '.join(FINGERPRINT_PERCENTILES)} as numbers")


def _validate_normalization(normalization: Any, channels: int, fail: Any) -> None:
    if not isinstance(normalization, list) or len(normalization) != channels:
        fail("normalization", normalization, f"needs one entry per channel (in_channels = {channels})")
    for index, entry in enumerate(normalization):
        key = f"normalization.{index}"
        scheme = entry.get("scheme") if isinstance(entry, Mapping) else None
        if scheme not in NORMALIZATION_SCHEMES:
            fail(f"{key}.scheme", scheme, f"unknown normalisation; one of {', '.join(NORMALIZATION_SCHEMES)}")
        if scheme == "ct":
            clip, std = entry.get("clip"), entry.get("std")
            if not (isinstance(clip, list) and len(clip) == 2 and all(isinstance(c, (int, float)) for c in clip)
                    and clip[0] < clip[1]):
                fail(f"{key}.clip", clip, "must be [low, high] with low < high (HU)")
            if not isinstance(entry.get("mean"), (int, float)):
                fail(f"{key}.mean", entry.get("mean"), "must be a number")
            if not isinstance(std, (int, float)) or std <= 0:
                fail(f"{key}.std", std, "must be a positive number")
        elif not isinstance(entry.get("nonzero"), bool):
            fail(f"{key}.nonzero", entry.get("nonzero"), "must be true or false")


def _validate_network(network: Any, dims: int, fail: Any) -> list[list[int]]:
    """Check features, strides and kernel_size; return the strides one int per axis."""
    if not isinstance(network, Mapping):
        fail("network", network, "must be a section with features, strides and kernel_size")
    features = network.get("features")
    if not (isinstance(features, list) and len(features) >= 1 and all(_positive_int(f) for f in features)):
        fail("network.features", features, "must list a positive width per level")
    strides = network.get("strides")
    if not isinstance(strides, list) or len(strides) != len(features) - 1:
        fail("network.strides", strides, f"needs one entry per pooling: len(features) - 1 = {len(features) - 1}")
    per_axis = [_per_axis(stride, dims) for stride in strides]
    if any(stride is None or min(stride) < 1 for stride in per_axis):
        fail("network.strides", strides, f"each entry must be a positive int or {dims} of them")
    kernels = network.get("kernel_size")
    entries = [kernels] * len(features) if isinstance(kernels, int) else kernels
    if not isinstance(entries, list) or len(entries) != len(features):
        fail("network.kernel_size", kernels, f"must be an int or one entry per level ({len(features)})")
    for kernel in entries:
        axes = _per_axis(kernel, dims)
        if axes is None or any(k < 1 or k % 2 == 0 for k in axes):
            fail("network.kernel_size", kernels, f"each entry must be an odd int or {dims} odd ints")
    return per_axis
