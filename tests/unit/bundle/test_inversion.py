"""The inference configs' way back to the scan's grid: slab by slab, the labels of ``Invertd`` + argmax."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import AsDiscreted, Compose, EnsureChannelFirstd, Invertd, LoadImaged, Orientationd, Spacingd

from unet_med.bundle.errors import BundleError
from unet_med.bundle.inversion import SLAB_BYTES, InvertToLabelsd

# The scan: stored left-posterior-superior (not the RAS the preprocessing turns it to), thin slices in plane and
# thick along z, its foreground inside an empty margin that the preprocessing crops away.
SCAN_AFFINE = np.array([[-0.7, 0.0, 0.0, 10.0], [0.0, -0.8, 0.0, -5.0], [0.0, 0.0, 2.5, 3.0], [0.0, 0.0, 0.0, 1.0]])
PIXDIM = (1.9, 1.7, 3.0)
CLASSES = 4
MEMORY_CLASSES = 8  # the CT example's
# top-two probability gaps below this are ties that rounding may break either way
TIE = 1e-5


def write_scan(path: Path, shape: tuple[int, int, int], affine: np.ndarray = SCAN_AFFINE) -> Path:
    """A NIfTI scan of noise around 5 in a box, 0 around it."""
    image = np.zeros(shape, np.float32)
    box = tuple(slice(n // 8, n - n // 8) for n in shape)
    image[box] = np.random.default_rng(0).normal(5.0, 1.0, size=image[box].shape)
    nib.save(nib.Nifti1Image(image, affine), path)
    return path


def bundle_transforms(bundle: Path, pixdim: tuple[float, ...]) -> tuple[Compose, InvertToLabelsd]:
    """The bundle's preprocessing and its inversion, as ``configs/inference.yaml`` builds them for a plan."""
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.yaml"))
    parser["plan"] = {"pixdim": list(pixdim), "normalization": [{"scheme": "zscore", "nonzero": True}],
                      "spatial_dims": parser["spatial_dims"]}
    preprocessing = parser.get_parsed_content("preprocessing")
    steps = [i for i, t in enumerate(parser["postprocessing"]["transforms"]) if "InvertToLabelsd" in t["_target_"]]
    assert len(steps) == 1
    inversion = parser.get_parsed_content(f"postprocessing#transforms#{steps[0]}")
    assert inversion.transform is preprocessing
    return preprocessing, inversion


def predicted(preprocessing: Compose, scan: Path, smooth: bool = False) -> dict:
    """The preprocessed scan and class probabilities on its grid, as the evaluator hands them on.

    Random per voxel, where neighbours' argmax mostly differ; or ``smooth``: each class nearest to a point of its
    own, regions whose voxels share their argmax but near the regions' borders.
    """
    data = preprocessing({"image": str(scan)})
    shape = data["image"].shape[1:]
    torch.manual_seed(0)
    if smooth:
        grid = torch.stack(torch.meshgrid(*[torch.linspace(0, 1, n) for n in shape], indexing="ij"))
        centres = torch.rand(CLASSES, len(shape), *[1] * len(shape))
        logits = -20 * ((grid[None] - centres) ** 2).sum(dim=1)
    else:
        logits = 3 * torch.randn(CLASSES, *shape)
    return {**data, "pred": MetaTensor(torch.softmax(logits, dim=0), meta=data["image"].meta)}


def invertd_then_argmax(preprocessing: Compose, data: dict) -> tuple[MetaTensor, torch.Tensor]:
    """Today's reference: the probabilities on the scan's grid by ``Invertd``, and their argmax."""
    inverted = Invertd("pred", preprocessing, orig_keys="image", nearest_interp=False)(data)
    return AsDiscreted("pred", argmax=True)(inverted)["pred"], inverted["pred"]


def tie_free(probabilities: torch.Tensor) -> torch.Tensor:
    """Where the two highest probabilities differ by more than rounding, ``(1, *spatial)``."""
    top = probabilities.topk(2, dim=0).values
    return (top[0] - top[1] > TIE)[None]


@pytest.mark.parametrize("smooth", [False, True], ids=["random", "smooth"])
@pytest.mark.parametrize("slab_bytes", [1, SLAB_BYTES], ids=["one slice per slab", "default slabs"])
@pytest.mark.parametrize("name", ["2d", "3d"])
def test_labels_and_metadata_are_those_of_invertd_then_argmax(tmp_path, bundle_dirs, name, slab_bytes, smooth):
    preprocessing, inversion = bundle_transforms(bundle_dirs[name], PIXDIM)
    inversion.slab_bytes = slab_bytes
    scan = write_scan(tmp_path / "scan.nii.gz", (40, 36, 23))
    data = predicted(preprocessing, scan, smooth)
    reference, probabilities = invertd_then_argmax(preprocessing, dict(data))

    labels = inversion(dict(data))["pred"]

    assert labels.dtype == torch.uint8 and labels.shape == reference.shape == (1, 40, 36, 23)
    tie_free_voxels = tie_free(probabilities)
    assert tie_free_voxels.float().mean() > 0.3  # the foreground, away from the crop's zeros
    assert torch.equal(labels[tie_free_voxels], reference[tie_free_voxels].to(torch.uint8))
    assert set(labels.unique().tolist()) == set(range(CLASSES))
    torch.testing.assert_close(labels.affine, reference.affine)
    torch.testing.assert_close(labels.affine, torch.as_tensor(SCAN_AFFINE))
    assert labels.applied_operations == reference.applied_operations == []
    assert labels.meta["filename_or_obj"] == reference.meta["filename_or_obj"] == str(scan)
    assert labels.meta.keys() == reference.meta.keys()


def test_without_resampling_the_labels_are_the_argmax(tmp_path, bundle_dirs):
    """A scan at the plan's spacing: ``Spacingd`` leaves the grid alone, and so does the inversion."""
    preprocessing, inversion = bundle_transforms(bundle_dirs["3d"], (0.7, 0.8, 2.5))
    data = predicted(preprocessing, write_scan(tmp_path / "scan.nii.gz", (40, 36, 23)))
    reference, _ = invertd_then_argmax(preprocessing, dict(data))
    assert torch.equal(inversion(dict(data))["pred"], reference.to(torch.uint8))


@pytest.mark.parametrize(("mode", "padding_mode"), [("nearest", "border"), ("bilinear", "zeros")])
def test_other_resamplings_give_the_labels_of_invertd_then_argmax(tmp_path, mode, padding_mode):
    """Resampling that the bundles do not use goes back through MONAI's own resampler, slab by slab."""
    preprocessing = Compose([
        LoadImaged("image", image_only=True), EnsureChannelFirstd("image"), Orientationd("image", axcodes="RAS"),
        Spacingd("image", pixdim=PIXDIM, mode=mode, padding_mode=padding_mode),
    ])
    data = predicted(preprocessing, write_scan(tmp_path / "scan.nii.gz", (40, 36, 23)))
    reference, probabilities = invertd_then_argmax(preprocessing, dict(data))
    labels = InvertToLabelsd("pred", preprocessing, slab_bytes=1)(dict(data))["pred"]
    tie_free_voxels = tie_free(probabilities)
    assert tie_free_voxels.float().mean() > 0.5
    assert torch.equal(labels[tie_free_voxels], reference[tie_free_voxels].to(torch.uint8))
    torch.testing.assert_close(labels.affine, torch.as_tensor(SCAN_AFFINE))


def test_refuses_a_preprocessing_without_spacing():
    with pytest.raises(BundleError, match="one Spacingd, it holds 0"):
        InvertToLabelsd("pred", Compose([LoadImaged("image")]))


@pytest.mark.parametrize(("mode", "padding_mode"), [(3, "border"), ("bilinear", "reflection")])
def test_refuses_a_resampling_that_slabs_do_not_reproduce(mode, padding_mode):
    """Splines filter the whole volume and reflection reads beyond the slab: refused before any scan is read."""
    spacing = Spacingd("image", pixdim=PIXDIM, mode=mode, padding_mode=padding_mode)
    with pytest.raises(BundleError, match=f"mode {mode!r} and padding_mode {padding_mode!r}"):
        InvertToLabelsd("pred", Compose([LoadImaged("image"), spacing]))


# Runs in a child process: the peak resident memory of the inversion alone (VmHWM reset before it), in bytes.
MEASURE = textwrap.dedent("""
    import json, re, sys
    import torch
    from monai.data import MetaTensor
    sys.path.insert(0, sys.argv[3])
    from test_inversion import MEMORY_CLASSES, bundle_transforms
    from pathlib import Path

    def status(field):
        return int(re.search(field + r":\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024

    torch.set_num_threads(1)
    preprocessing, inversion = bundle_transforms(Path(sys.argv[1]), (3.0, 3.0, 3.0))
    data = preprocessing({"image": sys.argv[2]})
    logits = torch.randn(MEMORY_CLASSES, *data["image"].shape[1:])
    data["pred"] = MetaTensor(torch.softmax(logits, dim=0), meta=data["image"].meta)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = status("VmRSS")
    labels = inversion(data)["pred"]
    print(json.dumps({"peak": status("VmHWM") - before, "shape": list(labels.shape)}))
""")


def test_peak_memory_is_a_small_multiple_of_the_scan(tmp_path, bundle_dirs, child_env):
    """Back from 3 mm to a 0.75 x 0.75 x 1.5 mm scan: ``Invertd`` would hold every class there in float32."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak")
    shape = (320, 320, 160)
    scan = write_scan(tmp_path / "scan.nii.gz", shape, np.diag([0.75, 0.75, 1.5, 1.0]))
    completed = subprocess.run(
        [sys.executable, "-c", MEASURE, str(bundle_dirs["3d"]), str(scan), str(Path(__file__).parent)],
        capture_output=True, text=True, env={**child_env, "OMP_NUM_THREADS": "1"}, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["shape"] == [1, *shape]
    scan_bytes = 4 * np.prod(shape)  # the scan in float32
    full_probabilities = MEMORY_CLASSES * scan_bytes
    # the uint8 label map (a quarter of the scan), one slab's buffers (about 4 x SLAB_BYTES) and room for the
    # allocator: far below the full-size probabilities that Invertd makes
    bound = scan_bytes + 6 * SLAB_BYTES
    assert result["peak"] < bound < full_probabilities / 2
