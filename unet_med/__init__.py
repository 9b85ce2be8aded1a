"""unet-med: a U-Net for 2D and 3D medical image segmentation that plugs into MONAI."""

from unet_med import data
from unet_med.inferers import OverlapTileInferer
from unet_med.losses import WeightedCELoss, WeightedDiceCELoss
from unet_med.networks import UNet
from unet_med.transforms import BorderWeightMapd, RandPaperElastic, RandPaperElasticd

__version__ = "0.1.0"

__all__ = [
    "BorderWeightMapd",
    "OverlapTileInferer",
    "RandPaperElastic",
    "RandPaperElasticd",
    "UNet",
    "WeightedCELoss",
    "WeightedDiceCELoss",
    "__version__",
    "data",
]
