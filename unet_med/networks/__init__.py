"""Networks: the U-Net and the helpers that size its inputs."""

from unet_med.networks import sizing
from unet_med.networks.unet import UNet

__all__ = ["UNet", "sizing"]
