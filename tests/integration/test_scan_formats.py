"""Bundle inference on one scan stored as NIfTI, DICOM series, NRRD and MetaImage, through `python -m monai.bundle`:
each prediction is a NIfTI file on its scan's grid (origin, spacing, direction), with the same labels at the same
world positions."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from unet_med.bundle.readers import SimpleITKReader, read_scan

pytestmark = pytest.mark.bundle_cli

# Distinct names: a prediction is named after its input without the extension.
INPUTS = {"nifti": "as_nifti.nii.gz", "dicom": "as_dicom", "nrrd": "as_nrrd.nrrd", "mha": "as_mha.mha"}


@pytest.fixture(scope="module", params=["2d", "3d"])
def predictions(request, tmp_path_factory, bundle_dirs, bundle_cli, scan_formats,
                planned_models) -> dict[str, nib.Nifti1Image]:
    """The bundle with seeded fresh weights run once on a folder holding the scan in every format."""
    bundle, out = bundle_dirs[request.param], tmp_path_factory.mktemp(f"formats_{request.param}")
    shutil.copytree(planned_models[request.param], out / "models")
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.yaml"))
    parser["ckpt_dir"] = str(out / "models")
    torch.manual_seed(0)
    weights = parser.get_parsed_content("network_def").state_dict()
    torch.save({"model": weights, "plan": parser.get_parsed_content("plan")}, out / "models" / "model.pt")
    scans = out / "scans"
    scans.mkdir()
    for form, name in INPUTS.items():
        copy = shutil.copytree if form == "dicom" else shutil.copyfile
        copy(scan_formats[form], scans / name)
    bundle_cli(bundle, "configs/inference.yaml", out, "pred", "--datalist", str(scans))
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
