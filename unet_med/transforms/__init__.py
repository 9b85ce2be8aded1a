"""Transforms from the U-Net paper: its elastic deformation and its border weight map."""

from unet_med.transforms.elastic import (
    RandPaperElastic,
    RandPaperElasticd,
    cubic_interpolation_matrix,
    dense_displacement,
    sampling_grid,
    warp,
)
from unet_med.transforms.weight_map import BorderWeightMapd, border_weight_map

__all__ = [
    "BorderWeightMapd",
    "RandPaperElastic",
    "RandPaperElasticd",
    "border_weight_map",
    "cubic_interpolation_matrix",
    "dense_displacement",
    "sampling_grid",
    "warp",
]
