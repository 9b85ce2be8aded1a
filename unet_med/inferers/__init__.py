"""Inferers: overlap-tile inference for valid-mode (and same-mode) networks, and mirroring test-time augmentation."""

from unet_med.inferers.mirrored import MirroredInferer
from unet_med.inferers.overlap_tile import OverlapTileInferer

__all__ = ["MirroredInferer", "OverlapTileInferer"]
