"""The training options of the bundles, checked before anything is built.

Values from ``python -m monai.bundle run ... --epochs 3`` arrive as ``fire`` parses them (``3`` an int, ``abc``
a string, ``[32,48,32]`` a list), and a wrong one would otherwise fail deep inside torch or ignite. Each check
raises a :class:`~unet_med.bundle.errors.BundleError` naming the option and what it takes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from unet_med.bundle.errors import BundleError

__all__ = ["check_device", "check_patch_size", "check_training_options", "positive_int", "positive_number"]


def positive_int(value: Any, option: str) -> int:
    """``value`` as an int of at least 1, or a :class:`BundleError` naming ``--option``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BundleError(f"--{option} {value!r}: expected a whole number of at least 1.")
    return value


def positive_number(value: Any, option: str) -> float:
    """``value`` as a finite float above 0, or a :class:`BundleError` naming ``--option``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise BundleError(f"--{option} {value!r}: expected a number above 0, such as 0.002.")
    return float(value)


def check_device(device: Any) -> torch.device:
    """The device ``--device`` names, if this machine has it.

    Args:
        device: a ``torch.device`` or a string such as ``"cpu"``, ``"cuda"``, ``"cuda:1"``.

    Raises:
        BundleError: for a string that names no device, or a CUDA device this machine lacks.
    """
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise BundleError(f"--device {device!r}: expected cpu, cuda or cuda:<index>.") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise BundleError(
                f"--device {device}: this machine has no usable CUDA GPU (torch {torch.__version__}, {build}); "
                "use --device cpu."
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise BundleError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s).")
    return resolved


def check_patch_size(patch_size: Any, spatial_dims: int) -> list[int]:
    """``--patch_size`` as a list of ``spatial_dims`` sizes of at least 1.

    Whether the network can take it (multiples of its strides) is the plan's check
    (:func:`unet_med.bundle.plan_file.validate_plan`), which knows the planned strides.

    Raises:
        BundleError: for a wrong length or a size below 1.
    """
    if (
        not isinstance(patch_size, Sequence)
        or isinstance(patch_size, str)
        or len(patch_size) != spatial_dims
        or not all(isinstance(size, int) and not isinstance(size, bool) and size >= 1 for size in patch_size)
    ):
        example = "[32,48,32]" if spatial_dims == 3 else "[48,64]"
        raise BundleError(
            f"--patch_size {patch_size!r}: expected {spatial_dims} whole numbers of at least 1 (one per axis of "
            f"the {spatial_dims}D network), such as {example}."
        )
    return list(patch_size)


def check_training_options(
    epochs: Any,
    val_interval: Any,
    batch_size: Any,
    learning_rate: Any,
    patch_size: Any,
    device: Any,
    spatial_dims: int,
) -> None:
    """Check the training options of a bundle's ``train.yaml``; see the ``check_*`` functions.

    ``epochs``, ``batch_size`` and ``patch_size`` may be ``None``: the plan's (``models/plan.yaml``) then; the
    plan file is validated when it is read.

    Raises:
        BundleError: naming the first wrong option and what it takes.
    """
    if epochs is not None:
        positive_int(epochs, "epochs")
    positive_int(val_interval, "val_interval")
    if batch_size is not None:
        positive_int(batch_size, "batch_size")
    positive_number(learning_rate, "learning_rate")
    check_device(device)
    if patch_size is not None:
        check_patch_size(patch_size, spatial_dims)
