"""unet-med: a U-Net for 2D and 3D medical image segmentation that plugs into MONAI."""

from unet_med import data
from unet_med.networks import UNet

__version__ = "0.1.0"

__all__ = ["UNet", "__version__", "data"]
