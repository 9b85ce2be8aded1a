import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from unet_med.transforms import BorderWeightMapd, border_weight_map


def brute_force(instances, w0, sigma, spacing):
    """Eq. 2 with every distance measured directly, to every voxel of every object."""
    coords = np.stack(np.meshgrid(*[np.arange(s) for s in instances.shape], indexing="ij"), -1) * spacing
    ids = [i for i in np.unique(instances) if i > 0]
    distances = np.stack(
        [np.linalg.norm(coords[..., None, :] - coords[instances == i], axis=-1).min(-1) for i in ids], -1
    )
    distances.sort(-1)
    border = w0 * np.exp(-((distances[..., 0] + distances[..., 1]) ** 2) / (2 * sigma**2))
    foreground = instances > 0
    n = instances.size
    w_c = np.where(foreground, n / (2 * foreground.sum()), n / (2 * (~foreground).sum()))
    return w_c + border * ~foreground


def two_squares(size=40, gap=2):
    label = np.zeros((size, size), dtype=np.int64)
    label[10:20, 5:15] = 1
    label[10:20, 15 + gap : 25 + gap] = 2
    return label


def test_gap_between_touching_squares_gets_about_w0():
    label = two_squares()
    weight = border_weight_map(label, w0=10.0, sigma=5.0)
    w_c_background = label.size / (2 * (label == 0).sum())
    gap = weight[10:20, 15:17]
    # d1 + d2 = 3 pixels in the gap: 10 * exp(-9 / 50) = 8.35 above w_c.
    np.testing.assert_allclose(gap, w_c_background + 10 * np.exp(-9 / 50), rtol=1e-5)
    # Away from the gap the border term falls off.
    above = weight[9::-1, 15]
    assert np.all(np.diff(above) < 0) and above[0] < gap.min()
    assert weight[0, 39] < w_c_background + 0.01
    # Object voxels carry w_c only.
    np.testing.assert_allclose(weight[label > 0], label.size / (2 * (label > 0).sum()), rtol=1e-6)


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (1.0, 2.5)])
def test_matches_direct_computation(spacing):
    rng = np.random.default_rng(0)
    label = np.zeros((14, 12), dtype=np.int64)
    label[2:5, 1:4] = 3
    label[6:9, 6:11] = 8
    label[11:13, 2:4] = 5
    label[rng.random(label.shape) > 0.97] = 0
    expected = brute_force(label, 10.0, 5.0, np.asarray(spacing))
    np.testing.assert_allclose(border_weight_map(label, spacing=spacing), expected, rtol=1e-5)


def test_truncation_error_is_bounded():
    label = np.zeros((8, 90), dtype=np.int64)
    label[2:6, 0:3] = 1
    label[2:6, 40:43] = 2
    label[2:6, 87:90] = 3
    exact = brute_force(label, 10.0, 3.0, np.ones(2))
    np.testing.assert_allclose(border_weight_map(label, sigma=3.0), exact, atol=10.0 * 1e-4, rtol=0)


def test_no_class_balance_and_single_object():
    label = two_squares()
    weight = border_weight_map(label, class_balance=False)
    np.testing.assert_allclose(weight[label > 0], 1.0)
    single = border_weight_map((label == 1).astype(int))
    assert np.unique(single).size == 2  # w_c of each class, no border term


def test_dict_transform_2d_binary_mask_and_metadata():
    label = two_squares()
    mask = MetaTensor(
        torch.from_numpy(label > 0).float()[None], affine=torch.diag(torch.tensor([2.0, 2, 1, 1]))
    )
    out = BorderWeightMapd("label", weight_key="w")({"label": mask})
    assert (
        isinstance(out["w"], MetaTensor) and out["w"].shape == (1, 40, 40) and out["w"].dtype == torch.float32
    )
    torch.testing.assert_close(out["w"].affine, mask.affine)
    # The mask's two squares touch nowhere, so its components are the two instances.
    np.testing.assert_allclose(out["w"][0].numpy(), border_weight_map(label), rtol=1e-6)
    in_mm = BorderWeightMapd("label", sigma=10.0, sigma_units="mm")({"label": mask})["weight"]
    torch.testing.assert_close(in_mm.as_tensor(), out["w"].as_tensor())


def test_3d():
    label = torch.zeros(1, 24, 24, 24, dtype=torch.int32)
    label[0, 6:12, 6:18, 6:18] = 4
    label[0, 13:19, 6:18, 6:18] = 9
    weight = BorderWeightMapd("label")({"label": label})["weight"]
    assert weight.shape == (1, 24, 24, 24)
    w_c = label.numel() / (2 * (label == 0).sum().item())
    # One plane between the cubes: d1 = d2 = 1.
    torch.testing.assert_close(weight[0, 12, 8:16, 8:16], torch.full((8, 8), w_c + 10 * np.exp(-4 / 50)))
    assert weight[0, 12, 12, 12] > weight[0, 3, 12, 12] > weight[0, 0, 12, 12]


def test_a_label_with_no_voxels_gives_an_empty_map():
    assert border_weight_map(np.zeros((0, 5), dtype=int)).shape == (0, 5)
    assert BorderWeightMapd("label")({"label": torch.zeros(1, 0, 5, 5)})["weight"].shape == (1, 0, 5, 5)


def test_invalid_arguments():
    for sigma in (0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="sigma must be a finite number above 0"):
            BorderWeightMapd("label", sigma=sigma)
    with pytest.raises(ValueError, match="weight_key"):
        BorderWeightMapd(["a", "b"])
    with pytest.raises(ValueError, match=r"\(1, \*S\)"):
        BorderWeightMapd("label")({"label": torch.zeros(2, 8, 8)})
