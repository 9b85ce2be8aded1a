"""The bundles on bad input: one clear error naming each path, before anything is built or written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import pytest
import torch
from monai.bundle import ConfigWorkflow

import unet_med.bundle.lock
from unet_med.bundle.dataset_check import DatasetError
from unet_med.bundle.io import CheckpointError
from unet_med.networks import UNet

BUNDLE_NAMES = ["2d", "3d"]


def workflow(bundle: Path, config: str, workflow_type: str, **overrides) -> ConfigWorkflow:
    return ConfigWorkflow(
        config_file=str(bundle / "configs" / config),
        workflow_type=workflow_type,
        bundle_root=str(bundle),
        **{key: str(value) if isinstance(value, Path) else value for key, value in overrides.items()},
    )


def error_of(step) -> BaseException:
    """The error that ``step()`` raises, under MONAI's "Failed to evaluate" wrappers."""
    with pytest.raises(Exception) as raised:
        step()
    error = raised.value
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def damaged_samples(samples: Path, folder: Path) -> Path:
    """A copy of ``samples`` with a truncated image, a missing label and a single-slice case."""
    shutil.copytree(samples, folder)
    truncated = folder / "imagesTr" / "hippocampus_003.nii.gz"
    truncated.write_bytes(truncated.read_bytes()[:20000])
    (folder / "labelsTr" / "hippocampus_004.nii.gz").unlink()
    for kind in ("imagesTr", "labelsTr"):
        volume = nib.load(folder / kind / "hippocampus_001.nii.gz")
        nib.save(volume.slicer[:, :, 17:18], folder / kind / "hippocampus_slice.nii.gz")
    description = json.loads((folder / "dataset.json").read_text())
    description["training"].append(
        {"image": "./imagesTr/hippocampus_slice.nii.gz", "label": "./labelsTr/hippocampus_slice.nii.gz"}
    )
    (folder / "dataset.json").write_text(json.dumps(description))
    return folder


@pytest.mark.parametrize("name", BUNDLE_NAMES)
def test_bad_dataset_stops_training_before_anything_is_built(name, tmp_path, samples, bundle_dirs):
    dataset = damaged_samples(samples, tmp_path / "data")
    train = workflow(bundle_dirs[name], "train.yaml", "train", dataset_dir=dataset, ckpt_dir=tmp_path / "models",
                     output_dir=tmp_path / "runs")
    error = error_of(train.initialize)  # planning checks the data first
    assert isinstance(error, DatasetError)
    expected = [
        f"{dataset}/imagesTr/hippocampus_003.nii.gz: truncated: the file ends before its data does",
        f"{dataset}/labelsTr/hippocampus_004.nii.gz: missing label (dataset.json pairs it with",
    ]
    if name == "3d":  # the 2D bundle trains on slices: a one-slice volume suits it
        expected += [f"{dataset}/{kind}/hippocampus_slice.nii.gz: a 2D slice" for kind in ("imagesTr", "labelsTr")]
    assert len(error.problems) == len(expected)
    assert all(any(line.startswith(start) for line in error.problems) for start in expected), error.problems
    built = train.parser.ref_resolver.resolved_content.keys()
    assert not {"network", "train::dataset", "validate::dataset"} & built
    unet_med.bundle.lock.release()  # what the process's exit does after a refused run
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("name", BUNDLE_NAMES)
def test_output_folders_that_cannot_be_written_are_named(name, tmp_path, bundle_dirs, planned_models):
    blocker = tmp_path / "file"
    blocker.write_text("")
    for config, workflow_type, folder in [
        ("train.yaml", "train", "ckpt_dir"),
        ("train.yaml", "train", "output_dir"),
        ("inference.yaml", "infer", "output_dir"),
    ]:
        models = {"ckpt_dir": planned_models[name]} if workflow_type == "infer" else {}
        run = workflow(bundle_dirs[name], config, workflow_type, **{folder: blocker / "sub"}, **models)
        error = error_of(run.initialize)
        assert str(error) == f"output folder {blocker / 'sub'} cannot be created: {blocker} is a file."


@pytest.mark.parametrize("name", BUNDLE_NAMES)
def test_inference_refuses_unreadable_inputs_and_colliding_outputs(name, tmp_path, samples, bundle_dirs,
                                                                  planned_models):
    good = samples / "imagesTr" / "hippocampus_001.nii.gz"
    truncated = tmp_path / "inputs" / "hippocampus_003.nii.gz"
    truncated.parent.mkdir()
    truncated.write_bytes((samples / "imagesTr" / "hippocampus_003.nii.gz").read_bytes()[:20000])
    twin = tmp_path / "twin" / "hippocampus_001.nii"
    twin.parent.mkdir()
    nib.save(nib.load(good), twin)

    bundle, out = bundle_dirs[name], tmp_path / "out"
    models = planned_models[name]
    infer = workflow(bundle, "inference.yaml", "infer", output_dir=out, datalist=[str(good), str(truncated)],
                     ckpt_dir=models)
    error = error_of(infer.initialize)
    assert isinstance(error, DatasetError)
    assert str(error) == f"{truncated}: truncated: the file ends before its data does"

    infer = workflow(bundle, "inference.yaml", "infer", output_dir=out, datalist=[str(good), str(twin)],
                     ckpt_dir=models)
    assert "have the same name, so their outputs would overwrite each other" in str(error_of(infer.initialize))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", BUNDLE_NAMES)
def test_dicom_seg_output_refuses_an_input_that_is_not_a_dicom_series(name, tmp_path, samples, scan_formats,
                                                                      bundle_dirs, planned_models):
    nifti = samples / "imagesTr" / "hippocampus_001.nii.gz"
    inputs = [str(scan_formats["dicom"]), str(nifti)]
    for flag, message in [
        ("true", f"--dicom_seg true: {nifti} is not a DICOM series folder"),
        ("maybe", "--dicom_seg must be true or false, got 'maybe'."),
    ]:
        infer = workflow(bundle_dirs[name], "inference.yaml", "infer", output_dir=tmp_path, datalist=inputs,
                         dicom_seg=flag, ckpt_dir=planned_models[name])
        assert str(error_of(infer.initialize)).startswith(message)
    assert not list(tmp_path.iterdir())


def test_inference_without_trained_model_names_the_checkpoint(tmp_path, bundle_dirs):
    infer = workflow(bundle_dirs["3d"], "inference.yaml", "infer", ckpt_dir=tmp_path, output_dir=tmp_path / "out")
    error = error_of(infer.initialize)
    assert isinstance(error, CheckpointError) and str(error) == f"no checkpoint file at {tmp_path}/model.pt."


@pytest.mark.parametrize("name", BUNDLE_NAMES)
def test_unusable_pretrained_weights_stop_training_before_anything_is_built(name, tmp_path, bundle_dirs):
    shallow = tmp_path / "shallow.pt"
    torch.save(UNet(2 if name == "2d" else 3, 1, 3, features=(16, 32)).state_dict(), shallow)
    for pretrained, message in [(tmp_path / "absent.pt", "no checkpoint file at"), (shallow, "another depth")]:
        train = workflow(bundle_dirs[name], "train.yaml", "train", pretrained=pretrained, ckpt_dir=tmp_path / "models",
                         output_dir=tmp_path / "runs")
        error = error_of(train.initialize)
        assert isinstance(error, CheckpointError) and str(pretrained) in str(error) and message in str(error)
        built = train.parser.ref_resolver.resolved_content.keys()
        assert not {"network", "train::dataset"} & built
        assert not (tmp_path / "models" / "model.pt").exists()  # only the plan, which training would write too
