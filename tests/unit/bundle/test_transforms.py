from __future__ import annotations

import numpy as np
import torch
from monai.transforms import EnsureChannelFirstd, LoadImaged, Spacingd

from unet_med.bundle.transforms import IsolatedSpacingd


def loaded(samples) -> dict:
    """A sample scan as MONAI Label's pre-transforms hold it: metadata dict and the scan's path beside the image."""
    path = str(samples / "imagesTr" / "hippocampus_001.nii.gz")
    data = LoadImaged("image", image_only=False)({"image": path, "image_path": path})
    return EnsureChannelFirstd("image")(data)


def test_resamples_like_spacingd_and_leaves_the_image_items_alone(samples):
    data = loaded(samples)
    affine = data["image_meta_dict"]["affine"].clone()
    out = IsolatedSpacingd("image", pixdim=(2.0, 1.5, 1.0))(data)
    plain = Spacingd("image", pixdim=(2.0, 1.5, 1.0))({"image": data["image"]})
    torch.testing.assert_close(out["image"].as_tensor(), plain["image"].as_tensor())
    np.testing.assert_allclose(out["image"].pixdim, (2.0, 1.5, 1.0))
    assert out["image_path"] == data["image_path"]
    assert out["image_meta_dict"] is data["image_meta_dict"]
    torch.testing.assert_close(out["image_meta_dict"]["affine"], affine)


def test_inverts_to_the_scan_grid(samples):
    data = loaded(samples)
    spacing = IsolatedSpacingd("image", pixdim=(2.0, 1.5, 1.0))
    restored = spacing.inverse(spacing(data))
    assert restored["image"].shape == data["image"].shape
    torch.testing.assert_close(restored["image"].affine, data["image"].affine)
