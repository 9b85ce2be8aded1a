from __future__ import annotations

import logging
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd

from unet_med.bundle.plan import PlanSettings, plan_dataset
from unet_med.bundle.plan_file import validate_plan
from unet_med.bundle.readers import SimpleITKReader
from unet_med.bundle.scan_check import ScanCheckd, refuse_unlike_scans, scan_differences, with_scan_check


@pytest.fixture(scope="module")
def plan(tmp_path_factory, samples) -> dict:
    """The plan of data_samples (10 hippocampus MRI cases, 1 mm, 31 to 52 mm per axis)."""
    output = tmp_path_factory.mktemp("plan") / "plan.yaml"
    return plan_dataset(samples, output, PlanSettings(device="cpu", spatial_dims=3), workers=1, progress=False)[0]


def loader(plan: dict, strict: bool | str = False) -> Compose:
    """What the inference config runs up to the check: load, channel first, RAS, the check."""
    return Compose([LoadImaged("image", reader=["NibabelReader", SimpleITKReader()], image_only=True),
                    EnsureChannelFirstd("image"),
                    Orientationd("image", axcodes="RAS"), ScanCheckd("image", plan, strict)])


def abdominal_ct_like(path) -> str:
    """A NIfTI file with the abdominal CT example's grid: 122 x 101 x 30 voxels of 3 mm, LPS, HU values."""
    affine = np.diag([-3.0, -3.0, 3.0, 1.0])
    data = np.random.default_rng(0).integers(-1000, 1200, size=(122, 101, 30)).astype(np.int16)
    nib.save(nib.Nifti1Image(data, affine), path)
    return str(path)


def test_the_plan_records_the_ranges_of_its_scans(plan):
    assert plan["trained_on"] == {"spacing": [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]],
                                  "size": [[33.0, 47.0, 31.0], [39.0, 52.0, 40.0]]}
    broken = {**plan, "trained_on": {**plan["trained_on"], "size": [[40.0, 47.0, 31.0], [39.0, 52.0, 40.0]]}}
    with pytest.raises(ValueError, match=r"^plan.yaml: trained_on.size = \[\[40.0, 47.0, 31.0\], "
                       r"\[39.0, 52.0, 40.0\]\]: must be \[\[3 smallest\], \[3 largest\]\] positive values in mm$"):
        validate_plan(broken, "plan.yaml")


def test_scans_like_the_training_ones_pass_in_silence(plan, samples, caplog):
    check = loader(plan, strict=True)
    with caplog.at_level(logging.WARNING):
        for image in sorted((samples / "imagesTr").glob("*.nii.gz")):
            check({"image": str(image)})
    assert not caplog.records


def test_a_scan_within_twice_the_ranges_passes_and_beyond_them_is_named(plan):
    ranges = plan["trained_on"]
    assert scan_differences([2.0, 0.5, 1.0], [20, 100, 20], ranges) == []  # 40 x 50 x 20 mm: within 2x
    assert scan_differences([1.0, 1.0, 2.1], [35, 50, 18], ranges) == [
        "spacing 1 x 1 x 2.1 mm (trained on 1 x 1 x 1 mm)"]
    assert scan_differences([1.0, 1.0, 1.0], [35, 50, 81], ranges) == [
        "size 35 x 50 x 81 mm (trained on 33-39 x 47-52 x 31-40 mm)"]


def test_a_2d_model_compares_the_in_plane_axes_only(plan):
    assert scan_differences([1.0, 1.0, 1.0], [35, 50, 1], plan["trained_on"]) == [
        "size 35 x 50 x 1 mm (trained on 33-39 x 47-52 x 31-40 mm)"]
    assert scan_differences([1.0, 1.0, 1.0], [35, 50, 1], plan["trained_on"], axes=2) == []  # one slice
    assert scan_differences([1.0, 3.0, 1.0], [35, 17, 1], plan["trained_on"], axes=2) == [
        "spacing 1 x 3 x 1 mm (trained on 1 x 1 x 1 mm)"]


def test_an_abdominal_ct_is_flagged_against_a_hippocampus_plan(plan, tmp_path, caplog):
    ct = abdominal_ct_like(tmp_path / "abdomen.nii.gz")
    with caplog.at_level(logging.WARNING, logger="unet_med.bundle.scan_check"):
        loader(plan)({"image": ct})
    assert [record.getMessage() for record in caplog.records] == [
        f"{ct}: unlike the scans the model was trained on: spacing 3 x 3 x 3 mm (trained on 1 x 1 x 1 mm); "
        "size 366 x 303 x 90 mm (trained on 33-39 x 47-52 x 31-40 mm); its segmentation may be wrong "
        "(--strict_scans true refuses such scans)."]


def test_strict_scans_refuses_every_unlike_scan_before_anything_runs(plan, samples, tmp_path):
    ct = abdominal_ct_like(tmp_path / "abdomen.nii.gz")
    thick = tmp_path / "thick.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((35, 50, 12), np.float32), np.diag([1.0, 1.0, 3.0, 1.0])), thick)
    datalist = [{"image": str(samples / "imagesTr" / "hippocampus_001.nii.gz")}, {"image": ct}, {"image": str(thick)}]
    refuse_unlike_scans(datalist, loader(plan, "false"))
    with pytest.raises(ValueError) as refused:
        refuse_unlike_scans(datalist, loader(plan, "true"))
    assert str(refused.value).splitlines() == [
        f"{ct}: unlike the scans the model was trained on: spacing 3 x 3 x 3 mm (trained on 1 x 1 x 1 mm); "
        "size 366 x 303 x 90 mm (trained on 33-39 x 47-52 x 31-40 mm) (--strict_scans true refuses it).",
        f"{thick}: unlike the scans the model was trained on: spacing 1 x 1 x 3 mm (trained on 1 x 1 x 1 mm) "
        "(--strict_scans true refuses it)."]
    with pytest.raises(ValueError, match="--strict_scans"):
        loader(plan, "maybe")


def test_a_plan_without_ranges_checks_nothing(plan, tmp_path):
    ct = abdominal_ct_like(tmp_path / "abdomen.nii.gz")
    older = {key: value for key, value in plan.items() if key != "trained_on"}
    refuse_unlike_scans([{"image": ct}], loader(older, "true"))


def test_evaluation_puts_the_check_right_after_the_reorientation(plan):
    loading = [LoadImaged("image"), EnsureChannelFirstd("image"), Orientationd("image", axcodes="RAS")]
    checked = with_scan_check(loading, plan, "true")
    assert checked[:3] == loading and isinstance(checked[3], ScanCheckd) and checked[3].strict
    with pytest.raises(ValueError, match="no Orientationd"):
        with_scan_check(loading[:2], plan, "false")


def test_a_dicom_series_of_another_modality_is_named(plan, scan_formats, tmp_path, caplog):
    ct = tmp_path / "ct_series"
    shutil.copytree(scan_formats["dicom"], ct)
    for file in ct.iterdir():
        dataset = pydicom.dcmread(file)
        dataset.Modality = "CT"
        dataset.save_as(file)
    assert plan["channel_names"] == ["MRI"]
    with caplog.at_level(logging.WARNING, logger="unet_med.bundle.scan_check"):
        loader(plan)({"image": str(scan_formats["dicom"])})  # MR, 0.9 x 1.1 x 1.3 mm: like the training scans
        assert not caplog.records
        loader(plan)({"image": str(ct)})
    assert [record.getMessage() for record in caplog.records] == [
        f"{ct}: unlike the scans the model was trained on: modality CT (trained on MRI); its segmentation may be "
        "wrong (--strict_scans true refuses such scans)."]
