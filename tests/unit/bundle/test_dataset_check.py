"""The dataset check on real NIfTI files: every problem at once, each with its file."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from unet_med.bundle import datalists as data
from unet_med.bundle.dataset_check import DatasetError, check_dataset, check_images, main

SHAPE = (8, 9, 6)


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), path)
    return path


def make_image(shape=SHAPE, dtype=np.float32, scale=1.0) -> np.ndarray:
    return (np.random.default_rng(0).random(shape) * scale + 0.1).astype(dtype)


def make_label(shape=SHAPE, dtype=np.uint8) -> np.ndarray:
    label = np.zeros(shape, dtype)
    label[2:4, 2:4], label[5:7, 5:7] = 1, 2
    return label


def write_dataset(folder: Path, cases: dict[str, tuple[np.ndarray | None, np.ndarray | None]], **affines) -> Path:
    """A Decathlon folder whose dataset.json lists ``cases``; ``None`` leaves a file out."""
    for name, (image, label) in cases.items():
        if image is not None:
            save_nifti(folder / "imagesTr" / f"{name}.nii.gz", image)
        if label is not None:
            save_nifti(folder / "labelsTr" / f"{name}.nii.gz", label, affines.get(name))
    training = [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in cases]
    labels = {"0": "background", "1": "anterior", "2": "posterior"}
    (folder / "dataset.json").write_text(json.dumps({"labels": labels, "training": training}))
    return folder


def test_sample_data_passes_for_both_bundles(samples):
    # The samples mix float32 and uint8 images whose intensities differ by orders of magnitude: that is fine.
    dtypes = {nib.load(item["image"]).get_data_dtype().name for item in data.decathlon_datalist(samples)}
    assert dtypes == {"float32", "uint8"}
    for spatial_dims in (3, 2):
        assert check_dataset(samples, spatial_dims=spatial_dims, num_classes=3) == data.decathlon_datalist(samples)


def test_every_problem_is_reported_at_once_with_its_file(tmp_path):
    shifted = np.eye(4)
    shifted[0, 3] = 0.5
    fraction, unknown = make_label().astype(np.float32), make_label()
    fraction[0, 0, 0], unknown[0, 0, 0] = 0.5, 5
    with_nan, with_inf = make_image(), make_image()
    with_nan[1, 1, 1], with_inf[2, 2, 2] = np.nan, np.inf
    folder = write_dataset(
        tmp_path,
        {
            "good_float": (make_image(scale=25000.0), make_label().astype(np.float32)),
            "good_uint8": (make_image(dtype=np.uint8, scale=200.0), make_label()),
            "no_label": (make_image(), None),
            "no_image": (None, make_label()),
            "truncated": (make_image(), make_label()),
            "not_nifti": (make_image(), make_label()),
            "shape": (make_image(), make_label((8, 9, 5))),
            "affine": (make_image(), make_label()),
            "fraction": (make_image(), fraction),
            "unknown": (make_image(), unknown),
            "nan": (with_nan, make_label()),
            "inf": (with_inf, make_label()),
            "zeros": (np.zeros(SHAPE, np.float32), make_label()),
            "zero_size": (make_image((0, 9, 6)), make_label((0, 9, 6))),
            "flat": (make_image((8, 9)), make_label((8, 9))),
            "slice": (make_image((8, 9, 1)), make_label((8, 9, 1))),
            "channels": (make_image((*SHAPE, 2)), make_label()),
        },
        affine=shifted,
    )
    images, labels = folder / "imagesTr", folder / "labelsTr"
    content = (images / "truncated.nii.gz").read_bytes()
    (images / "truncated.nii.gz").write_bytes(content[: len(content) // 2])
    (labels / "not_nifti.nii.gz").write_text("<html>404 Not Found</html>")
    save_nifti(images / "unlisted.nii.gz", make_image())
    save_nifti(labels / "orphan.nii.gz", make_label())
    (images / "._good_float.nii.gz").write_bytes(b"\x00\x05\x16\x07")  # macOS metadata files are skipped

    with pytest.raises(DatasetError) as error:
        check_dataset(folder, spatial_dims=3, num_classes=4)
    expected = [
        (folder / "dataset.json", "its labels are [0, 1, 2], but num_classes=4 expects 0 to 3"),
        (images / "unlisted.nii.gz", "image with no label: no training case of dataset.json lists it"),
        (labels / "orphan.nii.gz", "label with no image: no training case of dataset.json lists it"),
        (labels / "no_label.nii.gz", "missing label (dataset.json pairs it with"),
        (images / "no_image.nii.gz", "missing image (dataset.json pairs it with"),
        (images / "truncated.nii.gz", "truncated: the file ends before its data does"),
        (labels / "not_nifti.nii.gz", "not a NIfTI file"),
        (labels / "shape.nii.gz", "shape (8, 9, 5) differs from its image's (8, 9, 6)"),
        (labels / "affine.nii.gz", "affine differs from its image's by up to 0.5 mm (tolerance 0.001)"),
        (labels / "fraction.nii.gz", "non-integer label values, e.g. 0.5"),
        (labels / "unknown.nii.gz", "label values {5} are not in dataset.json's labels {0, 1, 2}"),
        (images / "nan.nii.gz", "1 NaN and 0 Inf voxels"),
        (images / "inf.nii.gz", "0 NaN and 1 Inf voxels"),
        (images / "zeros.nii.gz", "empty: every voxel is 0"),
        (images / "zero_size.nii.gz", "empty: zero-size volume (0 x 9 x 6)"),
        (labels / "zero_size.nii.gz", "empty: zero-size volume (0 x 9 x 6)"),
        (images / "flat.nii.gz", "2D file (8 x 9): the bundles read 3D volumes (save a 2D image as X x Y x 1)"),
        (labels / "flat.nii.gz", "2D file (8 x 9)"),
        (images / "slice.nii.gz", "a 2D slice (8 x 9 x 1): the 3D network needs volumes"),
        (labels / "slice.nii.gz", "a 2D slice (8 x 9 x 1)"),
        (images / "channels.nii.gz", "2 channel(s) (8 x 9 x 6 x 2), expected 1"),
    ]
    problems = error.value.problems
    for path, problem in expected:
        assert any(line.startswith(f"{path}: {problem}") for line in problems), (path, problem, problems)
    assert len(problems) == len(expected)
    assert not any("good_" in line for line in problems)
    assert str(error.value).startswith(f"{len(expected)} problems in {folder}:\n")


def test_single_slices_suit_the_2d_bundle_only(tmp_path):
    folder = write_dataset(tmp_path, {"slice": (make_image((8, 9, 1)), make_label((8, 9, 1)))})
    assert len(check_dataset(folder, spatial_dims=2)) == 1
    with pytest.raises(DatasetError, match=r"slice\.nii\.gz: a 2D slice"):
        check_dataset(folder, spatial_dims=3)


def test_folder_problems_are_one_line_naming_the_path(tmp_path):
    (tmp_path / "empty").mkdir()
    save_nifti(tmp_path / "scans" / "imagesTr" / "a.nii.gz", make_image())
    cases = [
        (tmp_path / "nowhere", "no such dataset folder"),
        (tmp_path / "empty", "is empty: expected imagesTr/, labelsTr/ and dataset.json"),
        (tmp_path / "scans", "no Decathlon dataset description at"),
    ]
    for folder, problem in cases:
        with pytest.raises(DatasetError, match=re.escape(str(folder))) as error:
            check_dataset(folder)
        assert problem in str(error.value) and "\n" not in str(error.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_is_named(tmp_path):
    folder = write_dataset(tmp_path, {"locked": (make_image(), make_label())})
    (folder / "labelsTr" / "locked.nii.gz").chmod(0)
    with pytest.raises(DatasetError, match=r"locked\.nii\.gz: cannot be read: permission denied"):
        check_dataset(folder)


def test_check_images_names_each_bad_input(tmp_path):
    good = save_nifti(tmp_path / "good.nii.gz", make_image())
    flat = save_nifti(tmp_path / "flat.nii.gz", make_image((8, 9)))
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[:300])
    check_images([{"image": str(good)}], spatial_dims=3)
    with pytest.raises(DatasetError) as error:
        check_images([{"image": str(p)} for p in (good, flat, truncated)], spatial_dims=3)
    assert error.value.problems == [
        f"{flat}: 2D file (8 x 9): the bundles read 3D volumes (save a 2D image as X x Y x 1)",
        f"{truncated}: truncated: the file ends before its data does",  # its gzip stream ends in the header
    ]


def test_corrupt_gzip_structured_voxels_and_float32_overflow_are_one_line_each(tmp_path, samples, corrupt_gzip):
    corrupt = tmp_path / "corrupt.nii.gz"
    shutil.copyfile(samples / "imagesTr" / "hippocampus_001.nii.gz", corrupt)
    corrupt_gzip(corrupt)
    decoded = np.asanyarray(nib.load(corrupt).dataobj)  # what a reader that stops at the data's end sees
    assert decoded.shape == nib.load(samples / "imagesTr" / "hippocampus_001.nii.gz").shape
    rgb = np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["G"] = 7
    rgb_path = save_nifti(tmp_path / "rgb.nii.gz", rgb)
    huge = save_nifti(tmp_path / "huge.nii.gz", make_image(dtype=np.float64) * 1e300)
    with pytest.raises(DatasetError) as error:
        check_images([{"image": str(path)} for path in (corrupt, rgb_path, huge)], spatial_dims=3)
    assert error.value.problems[0].startswith(f"{corrupt}: corrupt: its gzip stream fails its checks (CRC check")
    assert error.value.problems[1] == (
        f"{rgb_path}: voxels of data type [('R', 'u1'), ('G', 'u1'), ('B', 'u1')] (R, G, B fields): the bundles "
        "read one real number per voxel and channel (store channels on the 4th axis)"
    )
    assert error.value.problems[2] == f"{huge}: {np.prod(SHAPE)} voxels beyond float32's range (they would read as Inf)"
    assert len(error.value.problems) == 3


def test_check_images_reads_every_scan_format_and_names_a_bad_one(scan_formats, tmp_path):
    check_images([{"image": str(path)} for path in scan_formats.values()], spatial_dims=3)
    truncated = tmp_path / "truncated.nrrd"
    truncated.write_bytes(scan_formats["nrrd"].read_bytes()[:400])
    not_dicom = tmp_path / "notes"
    not_dicom.mkdir()
    (not_dicom / "readme.txt").write_text("no scan here")
    with pytest.raises(DatasetError) as error:
        check_images([{"image": str(path)} for path in (truncated, not_dicom, scan_formats["dicom"])], spatial_dims=3)
    assert len(error.value.problems) == 2
    assert error.value.problems[0].startswith(f"{truncated}: cannot be read, corrupt or truncated (RuntimeError: ")
    assert error.value.problems[1] == (
        f"{not_dicom}: no DICOM series in this folder (expected the slice files of one series)"
    )


def test_command_line(tmp_path, capsys, samples):
    assert main([str(samples), "--num-classes", "3"]) == 0
    assert f"{samples}: 10 cases, no problems" in capsys.readouterr().out
    shutil.copytree(samples, tmp_path / "copy")
    (tmp_path / "copy" / "labelsTr" / "hippocampus_004.nii.gz").unlink()
    assert main([str(tmp_path / "copy")]) == 1
    missing = tmp_path / "copy" / "labelsTr" / "hippocampus_004.nii.gz"
    assert capsys.readouterr().err.startswith(f"{missing}: missing label")
