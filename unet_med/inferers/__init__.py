"""Inferers: overlap-tile inference, mirroring test-time augmentation, CPU fast paths for any inferer."""

from unet_med.inferers.cpu import CPUInferer, native_bf16
from unet_med.inferers.mirrored import MirroredInferer
from unet_med.inferers.overlap_tile import OverlapTileInferer

__all__ = ["CPUInferer", "MirroredInferer", "OverlapTileInferer", "native_bf16"]
