"""Inferers: overlap-tile inference for valid-mode (and same-mode) networks."""

from unet_med.inferers.overlap_tile import OverlapTileInferer

__all__ = ["OverlapTileInferer"]
