"""Inferers: overlap-tile inference for valid-mode (and same-mode) networks, and CPU fast paths for any inferer."""

from unet_med.inferers.cpu import CPUInferer, native_bf16
from unet_med.inferers.overlap_tile import OverlapTileInferer

__all__ = ["CPUInferer", "OverlapTileInferer", "native_bf16"]
