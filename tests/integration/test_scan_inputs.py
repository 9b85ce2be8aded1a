"""Scans the bundles cannot vouch for, through `python -m monai.bundle run` inference: a DICOM series with a gap is
refused in one line, a scan unlike the training scans is segmented with a warning line, or refused with
`--strict_scans true`, before anything is written."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.integration.cli_output import one_line_error

pytestmark = pytest.mark.bundle_cli


@pytest.fixture
def out(tmp_path, planned_models) -> Path:
    """A run folder with the 3D bundle's planned model (data_samples: 1 mm, 31 to 52 mm per axis)."""
    shutil.copytree(planned_models["3d"], tmp_path / "models")
    return tmp_path


def test_a_dicom_series_with_a_missing_slice_is_refused_naming_the_gap(out, scan_formats, bundle_dirs, bundle_cli):
    series = out / "scans" / "series"
    shutil.copytree(scan_formats["dicom"], series)
    (series / "slice_010.dcm").unlink()
    result = bundle_cli(bundle_dirs["3d"], "configs/inference.yaml", out, "pred", "--datalist", str(out / "scans"),
                        check=False)
    assert one_line_error(result) == (
        f"unet-med: {series}: the DICOM series has a gap: slices slice_009.dcm and slice_011.dcm are 2.6 mm apart, "
        "the others 1.3 mm (1 uneven step); a slice is missing or does not read")
    assert not (out / "pred").exists()


@pytest.fixture
def coarse_scan(out) -> Path:
    """A body-sized scan of 3 mm voxels (40 x 30 x 12 voxels, 120 x 90 x 36 mm), unlike the hippocampus crops."""
    scans = out / "scans"
    scans.mkdir()
    data = np.random.default_rng(0).integers(-1000, 1200, size=(40, 30, 12)).astype(np.int16)
    nib.save(nib.Nifti1Image(data, np.diag([3.0, 3.0, 3.0, 1.0])), scans / "abdomen.nii.gz")
    return scans / "abdomen.nii.gz"


def test_a_scan_unlike_the_training_scans_is_segmented_with_a_warning(out, coarse_scan, bundle_dirs, bundle_cli):
    result = bundle_cli(bundle_dirs["3d"], "configs/inference.yaml", out, "pred", "--datalist", str(coarse_scan))
    warnings = [line for line in result.stdout.splitlines() if "unlike the scans the model was trained on" in line]
    assert len(warnings) == 1, result.stdout[-3000:]
    assert warnings[0].endswith(
        f"WARNING  {coarse_scan}: unlike the scans the model was trained on: spacing 3 x 3 x 3 mm (trained on "
        "1 x 1 x 1 mm); size 120 x 90 x 36 mm (trained on 33-39 x 47-52 x 31-40 mm); its segmentation may be wrong "
        "(--strict_scans true refuses such scans).")
    assert nib.load(out / "pred" / "abdomen_seg.nii.gz").shape == (40, 30, 12)
    assert "nvImageCodec" not in result.stdout + result.stderr


def test_strict_scans_refuses_it_before_anything_is_written(out, coarse_scan, bundle_dirs, bundle_cli):
    result = bundle_cli(bundle_dirs["3d"], "configs/inference.yaml", out, "pred", "--datalist", str(coarse_scan),
                        "--strict_scans", "true", check=False)
    assert one_line_error(result) == (
        f"unet-med: {coarse_scan}: unlike the scans the model was trained on: spacing 3 x 3 x 3 mm (trained on "
        "1 x 1 x 1 mm); size 120 x 90 x 36 mm (trained on 33-39 x 47-52 x 31-40 mm) (--strict_scans true refuses it).")
    assert not (out / "pred").exists()


@pytest.fixture
def coarse_dataset(tmp_path, samples) -> Path:
    """data_samples with 2.5 mm voxels (87 x 127 x 87 mm scans): the hippocampus crops' voxels stretched."""
    folder = tmp_path / "coarse"
    shutil.copytree(samples, folder)
    for path in [*(folder / "imagesTr").glob("*.nii.gz"), *(folder / "labelsTr").glob("*.nii.gz")]:
        image = nib.load(path)
        affine = image.affine.copy()
        affine[:3, :3] *= 2.5
        nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), affine, image.header), path)
    return folder


@pytest.mark.parametrize("strict", ["false", "true"])
def test_evaluation_warns_about_or_refuses_cases_unlike_the_training_scans(out, coarse_dataset, bundle_dirs,
                                                                           bundle_cli, strict):
    config = "['configs/train.yaml','configs/evaluate.yaml']"
    result = bundle_cli(bundle_dirs["3d"], config, out, "eval", "--dataset_dir", str(coarse_dataset), "--num_val", "1",
                        "--amp", "false", "--strict_scans", strict, check=False)
    unlike = (": unlike the scans the model was trained on: spacing 2.5 x 2.5 x 2.5 mm (trained on 1 x 1 x 1 mm); "
              "size ")
    if strict == "true":
        line = one_line_error(result)
        assert line.startswith(f"unet-med: {coarse_dataset / 'imagesTr'}/") and unlike in line
        assert line.endswith("(--strict_scans true refuses it).")
        assert not (out / "eval").exists()
    else:
        assert result.returncode == 0, result.stderr[-3000:]
        warnings = [line for line in result.stdout.splitlines() if unlike in line]
        assert len(warnings) == 1 and "WARNING" in warnings[0], result.stdout[-3000:]
        assert (out / "eval" / "metrics.csv").exists()
