"""Bundle inference on one scan stored as NIfTI, DICOM series, NRRD and MetaImage, through `python -m monai.bundle`:
each prediction is a NIfTI file on its scan's grid (origin, spacing, direction), with the same labels at the same
world positions; with `--dicom_seg true`, a DICOM SEG of a series holds the NIfTI prediction's labels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import highdicom
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.bundle import ConfigParser

from unet_med.bundle.readers import SimpleITKReader, read_scan

pytestmark = pytest.mark.bundle_cli

# Distinct names: a prediction is named after its input without the extension.
INPUTS = {"nifti": "as_nifti.nii.gz", "dicom": "as_dicom", "nrrd": "as_nrrd.nrrd", "mha": "as_mha.mha"}


def write_seeded_weights(bundle: Path, out: Path, planned_models: Path) -> None:
    """``planned_models`` copied to ``out/models`` with seeded fresh weights, the same every time."""
    shutil.copytree(planned_models, out / "models")
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.yaml"))
    parser["ckpt_dir"] = str(out / "models")
    torch.manual_seed(0)
    weights = parser.get_parsed_content("network_def").state_dict()
    torch.save({"model": weights, "plan": parser.get_parsed_content("plan")}, out / "models" / "model.pt")


@pytest.fixture(scope="module", params=["2d", "3d"])
def predictions(request, tmp_path_factory, bundle_dirs, bundle_cli, scan_formats,
                planned_models) -> dict[str, nib.Nifti1Image]:
    """The bundle with seeded fresh weights run once on a folder holding the scan in every format."""
    bundle, out = bundle_dirs[request.param], tmp_path_factory.mktemp(f"formats_{request.param}")
    write_seeded_weights(bundle, out, planned_models[request.param])
    scans = out / "scans"
    scans.mkdir()
    for form, name in INPUTS.items():
        copy = shutil.copytree if form == "dicom" else shutil.copyfile
        copy(scan_formats[form], scans / name)
    # float32 windows: the formats store the voxels in other orders, and on a CPU with bfloat16 units `amp auto`
    # rounds the seeded network's near-tied logits differently per memory layout (0.2% of the labels); this test
    # is about the grid, not the precision.
    bundle_cli(bundle, "configs/inference.yaml", out, "pred", "--datalist", str(scans), "--amp", "false")
    stems = {form: name.split(".")[0] for form, name in INPUTS.items()}
    assert sorted(path.name for path in (out / "pred").iterdir()) == sorted(f"{s}_seg.nii.gz" for s in stems.values())
    return {form: nib.load(out / "pred" / f"{stem}_seg.nii.gz") for form, stem in stems.items()}


@pytest.mark.parametrize("form", ["dicom", "nrrd", "mha"])
def test_prediction_is_on_the_scan_grid_with_the_nifti_labels(predictions, scan_formats, form):
    prediction, reference = predictions[form], predictions["nifti"]
    scan = read_scan(scan_formats[form])
    assert prediction.shape == scan.GetSize()
    _, meta = SimpleITKReader().get_data(scan)
    np.testing.assert_allclose(prediction.affine, meta["affine"], atol=1e-4)  # origin, spacing and direction

    # The same label at every world position, whatever order the format stores the voxels in.
    canonical, expected = nib.as_closest_canonical(prediction), nib.as_closest_canonical(reference)
    np.testing.assert_allclose(canonical.affine, expected.affine, atol=1e-4)
    labels = np.asarray(canonical.dataobj)
    np.testing.assert_array_equal(labels, np.asarray(expected.dataobj))
    assert len(np.unique(labels)) > 1, "a single class everywhere proves nothing"


def test_dicom_seg_of_a_series_holds_the_nifti_prediction(tmp_path, bundle_dirs, bundle_cli, scan_formats, samples,
                                                          planned_models):
    bundle = bundle_dirs["3d"]
    write_seeded_weights(bundle, tmp_path, planned_models["3d"])
    bundle_cli(bundle, "configs/inference.yaml", tmp_path, "pred", "--datalist", str(scan_formats["dicom"]),
               "--dicom_seg", "true")
    assert sorted(path.name for path in (tmp_path / "pred").iterdir()) == ["scan_seg.dcm", "scan_seg.nii.gz"]
    nifti = nib.load(tmp_path / "pred" / "scan_seg.nii.gz")
    labels, world_to_voxel = np.asarray(nifti.dataobj), np.linalg.inv(nifti.affine)
    assert len(np.unique(labels)) == 3, "every class is predicted somewhere, or the comparison proves little"

    seg = highdicom.seg.segread(tmp_path / "pred" / "scan_seg.dcm")
    names = json.loads((samples / "dataset.json").read_text())["labels"]
    assert [segment.SegmentLabel for segment in seg.SegmentSequence] == [names["1"], names["2"]]
    seen = set()
    for file in scan_formats["dicom"].iterdir():
        source = pydicom.dcmread(file, stop_before_pixels=True)
        position = np.asarray(source.ImagePositionPatient, dtype=float) * [-1, -1, 1]  # LPS to the NIfTI's RAS
        i, j, k = np.rint(world_to_voxel[:3, :3] @ position + world_to_voxel[:3, 3]).astype(int)
        assert (i, j) == (0, 0)
        frame = seg.get_pixels_by_source_instance(
            [source.SOPInstanceUID], combine_segments=True, assert_missing_frames_are_empty=True
        )[0]
        np.testing.assert_array_equal(frame, labels[:, :, k].T, err_msg=file.name)  # rows are y, columns x
        seen.add(k)
    assert seen == set(range(labels.shape[2]))
