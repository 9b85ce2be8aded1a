"""The bundles' ``amp`` option: mixed precision on CUDA, bfloat16 autocast on CPUs that compute it natively."""

from __future__ import annotations

import torch

from unet_med.bundle.flags import as_bool
from unet_med.inferers.cpu import native_bf16

__all__ = ["cpu_autocast_dtype", "cuda_amp", "native_bf16"]


def cpu_autocast_dtype(amp: bool | str) -> torch.dtype | None:
    """The dtype CPU inference autocasts to under the ``amp`` option, or ``None`` for float32.

    Args:
        amp: ``auto`` (bfloat16 only on a CPU with native bfloat16 units, :func:`native_bf16`: elsewhere it is
            emulated and many times slower than float32), or a flag that :func:`~unet_med.bundle.flags.as_bool`
            reads: ``true`` forces bfloat16 even where it is emulated, ``false`` keeps float32.

    Returns:
        ``torch.bfloat16`` or ``None``.
    """
    if str(amp).strip().lower() == "auto":
        return torch.bfloat16 if native_bf16() else None
    return torch.bfloat16 if as_bool(amp, "amp") else None


def cuda_amp(amp: bool | str, device: torch.device | str) -> bool:
    """Whether a MONAI engine on ``device`` runs CUDA automatic mixed precision under the ``amp`` option.

    MONAI's engines autocast only on CUDA, so ``auto`` means ``True`` exactly on a CUDA device; ``true`` and
    ``false`` are taken as they are (``true`` on a CPU changes nothing in the engine).
    """
    if str(amp).strip().lower() == "auto":
        return torch.device(device).type == "cuda"
    return as_bool(amp, "amp")
