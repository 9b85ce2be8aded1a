"""Networks: the U-Net and its geometry (margins, divisors, valid input sizes)."""

from unet_med.networks.geometry import ConvMode, UNetGeometry, geometry_of
from unet_med.networks.unet import UNet

__all__ = ["ConvMode", "UNet", "UNetGeometry", "geometry_of"]
