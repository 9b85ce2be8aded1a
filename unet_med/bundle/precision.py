"""The bundles' ``amp`` option: mixed precision on CUDA, bfloat16 autocast on CPUs that compute it natively."""

from __future__ import annotations

import torch

from unet_med.bundle.errors import BundleError
from unet_med.bundle.flags import as_bool
from unet_med.inferers.cpu import native_bf16

__all__ = ["amp_mode", "cpu_autocast_dtype", "cuda_amp", "native_bf16", "precision_text"]


def amp_mode(amp: bool | str) -> str:
    """The ``amp`` option as ``auto``, ``true`` or ``false``; the bundles call it first to check the value.

    Args:
        amp: ``auto``, a ``bool``, or a word of :func:`~unet_med.bundle.flags.as_bool` (``yes``, ``0``, ...).

    Raises:
        BundleError: naming ``--amp`` and the value, if it is none of these (a ``ValueError``).
    """
    if str(amp).strip().lower() == "auto":
        return "auto"
    try:
        return "true" if as_bool(amp, "--amp") else "false"
    except BundleError:
        raise BundleError(f"--amp must be auto, true or false, got {amp!r}.") from None


def cpu_autocast_dtype(amp: bool | str) -> torch.dtype | None:
    """The dtype the network autocasts to on a CPU under the ``amp`` option, or ``None`` for float32.

    Args:
        amp: ``auto`` (bfloat16 only on a CPU with native bfloat16 units, :func:`native_bf16`: elsewhere it is
            emulated and many times slower than float32), ``true`` (bfloat16 even where it is emulated) or
            ``false`` (float32), as :func:`amp_mode` reads it.

    Returns:
        ``torch.bfloat16`` or ``None``.
    """
    mode = amp_mode(amp)
    return torch.bfloat16 if mode == "true" or (mode == "auto" and native_bf16()) else None


def cuda_amp(amp: bool | str, device: torch.device | str) -> bool:
    """Whether a MONAI engine on ``device`` runs CUDA automatic mixed precision under the ``amp`` option.

    MONAI's engines autocast only on CUDA (their gradient scaler warns and turns itself off elsewhere), so this
    is ``True`` exactly on a CUDA device under ``auto`` or ``true``; on a CPU see :func:`cpu_autocast_dtype`.
    """
    return amp_mode(amp) != "false" and torch.device(device).type == "cuda"


def precision_text(amp: bool | str, device: torch.device | str) -> str:
    """The device and the precision a run computes in, and why, for the console, the log and the summary.

    For example ``cpu, bfloat16 autocast (--amp auto: this CPU has native bfloat16 units)`` or
    ``cuda:0, float16 mixed precision (--amp auto)``.
    """
    mode, device = amp_mode(amp), torch.device(device)
    if device.type == "cuda":
        return f"{device}, {'float16 mixed precision' if cuda_amp(mode, device) else 'float32'} (--amp {mode})"
    native = native_bf16()
    if cpu_autocast_dtype(mode) is None:
        reason = "this CPU has no native bfloat16 units" if mode == "auto" else "float32 asked for"
        return f"{device}, float32 (--amp {mode}: {reason})"
    reason = "this CPU has native bfloat16 units" if native else "emulated on this CPU, many times slower"
    return f"{device}, bfloat16 autocast (--amp {mode}: {reason})"
