"""unet-med: a U-Net for 2D and 3D medical image segmentation that plugs into MONAI.

Two layers: the research library (:mod:`unet_med.networks`, :mod:`unet_med.transforms`,
:mod:`unet_med.inferers`, :mod:`unet_med.losses`), re-exported here, and :mod:`unet_med.bundle`, what the MONAI
bundles run on. The library never imports the bundle layer.
"""

from unet_med.inferers import MirroredInferer, OverlapTileInferer
from unet_med.losses import WeightedCELoss, WeightedDiceCELoss
from unet_med.networks import UNet
from unet_med.transforms import BorderWeightMapd, RandPaperElastic, RandPaperElasticd

__version__ = "0.4.0"

__all__ = [
    "BorderWeightMapd",
    "MirroredInferer",
    "OverlapTileInferer",
    "RandPaperElastic",
    "RandPaperElasticd",
    "UNet",
    "WeightedCELoss",
    "WeightedDiceCELoss",
    "__version__",
]
