from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813 (SimpleITK's own convention)
import torch
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd

from unet_med.bundle.readers import SimpleITKReader, dicom_series_files, is_scan, read_scan


def load(path) -> torch.Tensor:
    """A scan as the inference config loads it: NIfTI through nibabel, the rest through SimpleITK; RAS."""
    reader = ["NibabelReader", SimpleITKReader()]
    chain = Compose([LoadImaged("image", reader=reader), EnsureChannelFirstd("image"), Orientationd("image", "RAS")])
    return chain({"image": str(path)})["image"]


@pytest.mark.parametrize("form", ["dicom", "nrrd", "mha"])
def test_every_format_gives_the_nifti_voxels_and_world_positions(scan_formats, form):
    nifti, other = load(scan_formats["nifti"]), load(scan_formats[form])
    assert other.shape == nifti.shape == (1, 51, 35, 35)  # the scan is 35 x 51 x 35; RAS swaps x and y
    torch.testing.assert_close(other.affine, nifti.affine, atol=1e-4, rtol=0)
    np.testing.assert_allclose(other.pixdim, (1.1, 0.9, 1.3), atol=1e-5)
    assert torch.equal(other.as_tensor().float(), nifti.as_tensor().float())
    assert other.meta["filename_or_obj"] == str(scan_formats[form])


def test_only_non_nifti_paths_are_claimed(scan_formats):
    reader = SimpleITKReader()
    assert reader.verify_suffix(str(scan_formats["dicom"])) and reader.verify_suffix("a/b.MHA")
    assert not reader.verify_suffix(str(scan_formats["nifti"]))
    assert all(is_scan(scan_formats[form]) for form in scan_formats)
    assert not is_scan(scan_formats["dicom"].parent.parent)  # a folder of files, no DICOM series


def test_several_series_in_one_folder_are_named(scan_formats, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for index, source in enumerate(dicom_series_files(scan_formats["dicom"])[:2]):
        image = sitk.ReadImage(source)
        image.SetMetaData("0020|000e", f"1.2.3.{index}")
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"{index}.dcm"))
        writer.Execute(image)
    with pytest.raises(ValueError, match=r"mixed: 2 DICOM series in one folder \(1\.2\.3\.0, 1\.2\.3\.1\)"):
        dicom_series_files(folder)
    with pytest.raises(ValueError, match="no DICOM series"):
        dicom_series_files(tmp_path)


@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage"])
def test_a_series_with_a_broken_slice_is_refused_naming_the_folder_and_the_gap(scan_formats, tmp_path, damage):
    folder = tmp_path / "series"
    shutil.copytree(scan_formats["dicom"], folder)
    broken = folder / "slice_010.dcm"
    if damage == "missing":
        broken.unlink()
    elif damage == "truncated":
        broken.write_bytes(broken.read_bytes()[:-500])
    else:
        broken.write_bytes(np.random.default_rng(0).bytes(3000))
    left_out = "" if damage == "missing" else "; not read as slices of it: slice_010.dcm"
    message = (f"{folder}: the DICOM series has a gap: slices slice_009.dcm and slice_011.dcm are 2.6 mm apart, "
               f"the others 1.3 mm (1 uneven step); a slice is missing or does not read{left_out}.")
    with pytest.raises(ValueError) as raised:
        read_scan(folder)
    assert str(raised.value) == message
    assert len(dicom_series_files(scan_formats["dicom"])) == 35  # the whole series reads


def test_two_slices_at_one_position_are_refused(scan_formats, tmp_path):
    folder = tmp_path / "series"
    shutil.copytree(scan_formats["dicom"], folder)
    image = sitk.ReadImage(str(folder / "slice_020.dcm"))
    image.SetMetaData("0020|0032", sitk.ReadImage(str(folder / "slice_019.dcm")).GetMetaData("0020|0032"))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(folder / "slice_020.dcm"))
    writer.Execute(image)
    with pytest.raises(ValueError, match=r"series: the DICOM series has a gap: .* are 0 mm apart, the others 1\.3 mm"):
        dicom_series_files(folder)


def test_loading_a_series_prints_no_nvimagecodec_notice(scan_formats, child_env):
    series = str(scan_formats["dicom"])
    script = (
        "from monai.transforms import LoadImaged\n"
        "from unet_med.bundle.readers import SimpleITKReader\n"
        f"LoadImaged('image', reader=['NibabelReader', SimpleITKReader()])({{'image': {series!r}}})\n"
    )
    result = subprocess.run([sys.executable, "-c", script], env=child_env, capture_output=True, text=True, check=True)
    assert "nvImageCodec" not in result.stderr + result.stdout
    assert result.stderr == ""
