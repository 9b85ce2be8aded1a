import numpy as np
import pytest
import torch
import yaml
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from torch.nn.functional import grid_sample

from unet_med import RandPaperElastic, RandPaperElasticd
from unet_med.transforms import cubic_interpolation_matrix, dense_displacement, sampling_grid, warp


def cube_pair(size=(24, 24, 24), lo=8, hi=14):
    label = torch.zeros(1, *size, dtype=torch.uint8)
    label[(0, *[slice(lo, hi)] * len(size))] = 1
    image = label.float() * 100.0 + torch.linspace(0, 1, size[-1])
    return image, label


def centroid(mask: torch.Tensor) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid(*[torch.arange(s) for s in mask.shape[1:]], indexing="ij"))
    weights = mask[0].float()
    return (coords * weights).flatten(1).sum(1) / weights.sum()


@pytest.mark.parametrize(
    "kwargs", [{"prob": 0.0}, {"prob": 1.0, "sigma": 0.0}, {"prob": 1.0, "max_displacement": 0}]
)
def test_identity(kwargs):
    image, label = cube_pair()
    out = RandPaperElasticd(["image", "label"], **kwargs)({"image": image, "label": label})
    assert torch.equal(out["image"], image) and torch.equal(out["label"], label)


def test_zero_field_resamples_to_the_input():
    image = torch.randn(2, 3, 20, 17)
    grid = sampling_grid(torch.zeros(2, 3, 3, 2), image.shape[2:])
    torch.testing.assert_close(warp(image, grid), image, atol=1e-5, rtol=0)


def test_interpolation_passes_through_control_points_and_keeps_linear_functions():
    matrix = cubic_interpolation_matrix(3, 9, torch.float64)
    torch.testing.assert_close(matrix.sum(1), torch.ones(9, dtype=torch.float64))
    # Linear ramps come out exactly, the border segments included.
    ramp = cubic_interpolation_matrix(4, 10, torch.float64) @ torch.tensor(
        [0.0, 3.0, 6.0, 9.0], dtype=torch.float64
    )
    torch.testing.assert_close(ramp, torch.arange(10, dtype=torch.float64))
    control = torch.randn(1, 3, 4, 2, dtype=torch.float64)
    field = dense_displacement(control, (9, 13))
    torch.testing.assert_close(field[:, ::4, ::4], control)


@pytest.mark.parametrize("spatial", [(40, 36), (20, 22, 18)])
def test_labels_stay_in_their_set_and_image_and_label_move_together(spatial):
    image, label = cube_pair(spatial, 12, 20)
    label = label.long() * 7
    t = RandPaperElasticd(["image", "label"], prob=1.0, sigma=3.0, mode=["bilinear", "nearest"])
    t.set_random_state(3)
    out = t({"image": image, "label": label})
    assert set(out["label"].unique().tolist()) <= {0, 7}
    assert out["label"].dtype == torch.long
    assert not torch.equal(out["label"], label)
    moved = centroid(out["label"] > 0) - centroid(label > 0)
    assert moved.abs().max() > 0.3
    torch.testing.assert_close(centroid(out["image"] > 50), centroid(out["label"] > 0), atol=0.3, rtol=0)


def test_same_seed_same_output_and_array_version_agrees():
    image, _ = cube_pair((32, 32))
    outs = [
        RandPaperElasticd("image", prob=1.0, mode="bicubic").set_random_state(5)({"image": image})["image"]
        for _ in range(2)
    ]
    assert torch.equal(outs[0], outs[1])
    other = RandPaperElasticd("image", prob=1.0, mode="bicubic").set_random_state(6)({"image": image})[
        "image"
    ]
    assert not torch.equal(outs[0], other)
    array = RandPaperElastic(prob=1.0, mode="bicubic").set_random_state(5)
    torch.testing.assert_close(array(image), outs[0])


def test_control_displacements_have_std_sigma_and_are_clipped():
    t = RandPaperElastic(prob=1.0, sigma=10.0).set_random_state(0)
    draws = []
    for _ in range(100):
        t.randomize(3)
        draws.append(t.control)
    draws = np.stack(draws)
    assert draws.shape == (100, 3, 3, 3, 3)
    assert abs(draws.std() - 10.0) < 1.0
    t = RandPaperElastic(prob=1.0, sigma=10.0, max_displacement=4.0, grid_size=(4, 5)).set_random_state(0)
    t.randomize(2)
    assert t.control.shape == (4, 5, 2) and np.abs(t.control).max() <= 4.0


def test_field_is_smooth():
    torch.manual_seed(0)
    control = 10.0 * torch.randn(1, 3, 3, 2)
    field = dense_displacement(control, (129, 129))
    spread = (control.max() - control.min()).item()
    # Neighbouring voxels differ by a small fraction of the control spread: no jumps.
    bound = 1.25 * spread * 2 / 128
    for axis in (1, 2):
        assert field.diff(dim=axis).abs().max() <= bound
    assert spread > 20.0  # the bound is far below a jump between control values


def test_mm_sigma_gives_isotropic_physical_displacement():
    spacing = torch.tensor([1.0, 1.0, 4.0])
    image = MetaTensor(torch.zeros(1, 17, 17, 9), affine=torch.diag(torch.cat([spacing, torch.ones(1)])))
    t = RandPaperElastic(prob=1.0, sigma=5.0, sigma_units="mm").set_random_state(1)
    sizes = torch.tensor(image.shape[1:], dtype=torch.float32)
    samples = []
    for _ in range(150):
        t.randomize(3)
        grid = t.grid(image)[0].flip(-1)  # components back in spatial axis order
        identity = torch.stack(
            torch.meshgrid(*[torch.linspace(-1, 1, int(s)) for s in sizes], indexing="ij"), -1
        )
        voxels = (grid - identity) * (sizes - 1) / 2
        samples.append(voxels[::8, ::8, ::4] * spacing)  # at the control points, in mm
    std_mm = torch.stack(samples).reshape(-1, 3).std(0)
    torch.testing.assert_close(std_mm, torch.full((3,), 5.0), atol=0.5, rtol=0)
    with pytest.raises(ValueError, match="MetaTensor"):
        t(torch.zeros(1, 8, 8, 8))


def test_metatensor_metadata_kept():
    affine = torch.tensor(
        [[0.0, 2.0, 0, 5], [1.5, 0, 0, -3], [0, 0, 3.0, 1], [0, 0, 0, 1]], dtype=torch.float64
    )
    image = MetaTensor(torch.rand(1, 16, 16, 12), affine=affine, meta={"filename_or_obj": "scan.nii.gz"})
    out = RandPaperElasticd("image", prob=1.0, sigma=2.0, sigma_units="mm")({"image": image})["image"]
    assert isinstance(out, MetaTensor)
    torch.testing.assert_close(out.affine, affine)
    assert out.meta["filename_or_obj"] == "scan.nii.gz"
    assert not torch.equal(out.as_tensor(), image.as_tensor())


def test_slabs_give_the_single_call_output():
    torch.manual_seed(0)
    image = torch.rand(1, 2, 41, 40, 40)
    grid = sampling_grid(3.0 * torch.randn(1, 3, 3, 3, 3), image.shape[2:])
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = warp(image, grid)
    finally:
        torch.set_num_threads(threads)
    expected = grid_sample(image, grid, padding_mode="reflection", align_corners=True)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_invalid_arguments():
    for sigma in (float("inf"), float("nan"), -1.0):
        with pytest.raises(ValueError, match=f"sigma must be a finite number of at least 0, got {sigma}"):
            RandPaperElasticd("image", sigma=sigma)
    with pytest.raises(ValueError, match="max_displacement"):
        RandPaperElastic(max_displacement=float("nan"))
    with pytest.raises(ValueError, match="mode"):
        RandPaperElasticd("image", mode="trilinear")
    with pytest.raises(ValueError, match="grid_size"):
        RandPaperElastic(grid_size=1)
    with pytest.raises(ValueError, match="bicubic"):
        RandPaperElastic(prob=1.0, mode="bicubic")(torch.zeros(1, 8, 8, 8))
    with pytest.raises(ValueError, match="grid_size"):
        RandPaperElastic(prob=1.0, grid_size=(3, 3))(torch.zeros(1, 8, 8, 8))
    with pytest.raises(ValueError, match="spatial shape"):
        RandPaperElasticd(["a", "b"], prob=1.0)({"a": torch.zeros(1, 8, 8), "b": torch.zeros(1, 8, 9)})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_matches_cpu():
    image, label = cube_pair()
    data = {"image": image, "label": label}
    cpu = RandPaperElasticd(["image", "label"], prob=1.0, mode=["bilinear", "nearest"]).set_random_state(2)(
        data
    )
    gpu_data = {k: v.cuda() for k, v in data.items()}
    gpu = RandPaperElasticd(["image", "label"], prob=1.0, mode=["bilinear", "nearest"]).set_random_state(2)(
        gpu_data
    )
    assert gpu["image"].is_cuda
    torch.testing.assert_close(gpu["image"].cpu(), cpu["image"], atol=1e-3, rtol=0)


def test_compose_from_bundle_yaml():
    config = yaml.safe_load(
        """
        transforms:
          _target_: Compose
          transforms:
            - _target_: unet_med.transforms.RandPaperElasticd
              keys: [image, label]
              prob: 1.0
              sigma: 4.0
              grid_size: [3, 4, 3]
              mode: [bilinear, nearest]
              padding_mode: [reflection, zeros]
        """
    )
    compose = ConfigParser(config).get_parsed_content("transforms")
    compose.set_random_state(0)
    image, label = cube_pair()
    out = compose({"image": image, "label": label})
    assert out["image"].shape == image.shape
    assert set(out["label"].unique().tolist()) <= {0, 1}
    assert not torch.equal(out["image"], image)
