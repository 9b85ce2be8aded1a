"""Fine-tuning (--pretrained) and test-time augmentation (--tta) through the 3D bundle's command line."""

from __future__ import annotations

import csv
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from unet_med.networks import UNet

pytestmark = pytest.mark.bundle_cli

SHORT = ["--epochs", "1", "--val_interval", "1", "--num_samples", "1", "--num_val", "1", "--amp", "false"]
SHORT += ["--train#dataset#data", "$@datalists['training'][:2]"]


@pytest.fixture(scope="module")
def source(tmp_path_factory, bundle_dirs, bundle_cli):
    """A 3-class model of the 3D bundle, trained for one epoch on data_samples/: its output folder."""
    out = tmp_path_factory.mktemp("source")
    bundle_cli(bundle_dirs["3d"], "configs/train.yaml", out, "runs", *SHORT, run_id="training")
    return out


@pytest.fixture(scope="module")
def two_classes(tmp_path_factory, samples):
    """data_samples/ with its two hippocampus labels merged into one: a 2-class data set (background, hippocampus)."""
    folder = tmp_path_factory.mktemp("two_classes")
    shutil.copytree(samples / "imagesTr", folder / "imagesTr")
    (folder / "labelsTr").mkdir()
    for path in sorted((samples / "labelsTr").glob("*.nii.gz")):
        label = nib.load(path)
        merged = (np.asarray(label.dataobj) > 0).astype(np.uint8)
        nib.save(nib.Nifti1Image(merged, label.affine, label.header), folder / "labelsTr" / path.name)
    description = json.loads((samples / "dataset.json").read_text())
    description["labels"] = {"0": "background", "1": "hippocampus"}
    (folder / "dataset.json").write_text(json.dumps(description))
    return folder


def test_fine_tuning_a_three_class_model_onto_two_classes(source, two_classes, tmp_path, bundle_dirs, bundle_cli):
    pretrained = source / "models" / "model.pt"
    overrides = ["--dataset_dir", str(two_classes), "--pretrained", str(pretrained)]  # the plan gives 2 classes
    result = bundle_cli(bundle_dirs["3d"], "configs/train.yaml", tmp_path, "runs", *SHORT, *overrides)
    line = (
        f"pretrained: 48 of 50 tensors from {pretrained}; re-initialised (other shape): "
        "head.weight [3,16,1,1,1] -> [2,16,1,1,1], head.bias [3] -> [2]"
    )
    assert line in result.stdout + result.stderr
    tuned = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert tuned["plan"]["num_classes"] == 2 and tuned["model"]["head.weight"].shape == (2, 16, 1, 1, 1)
    with (tmp_path / "runs" / "training_log.csv").open() as file:
        assert next(csv.reader(file))[3:] == ["dice hippocampus", "val_mean_dice"]


def test_resuming_a_fine_tuning_ignores_the_weights(source, two_classes, tmp_path, bundle_dirs, bundle_cli):
    pretrained = source / "models" / "model.pt"
    overrides = ["--dataset_dir", str(two_classes), "--pretrained", str(pretrained)]  # the plan gives 2 classes
    bundle_cli(bundle_dirs["3d"], "configs/train.yaml", tmp_path, "runs", *SHORT, *overrides)
    longer = [*SHORT, *overrides, "--epochs", "2", "--resume", "true"]
    result = bundle_cli(bundle_dirs["3d"], "configs/train.yaml", tmp_path, "runs", *longer)
    assert f"pretrained: {pretrained} not loaded: --resume true continues" in result.stdout + result.stderr


def test_weights_of_another_depth_are_refused_in_one_line(tmp_path, bundle_dirs, bundle_cli):
    pretrained = tmp_path / "shallow.pt"
    torch.save(UNet(spatial_dims=3, in_channels=1, out_channels=3, features=[16, 32, 64]).state_dict(), pretrained)
    overrides = ["--pretrained", str(pretrained)]
    result = bundle_cli(bundle_dirs["3d"], "configs/train.yaml", tmp_path, "runs", *SHORT, *overrides, check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"unet-med: {pretrained} holds the weights of another network (another depth")
    assert sum(line.startswith("unet-med:") for line in lines) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "models" / "model.pt").exists() and not (tmp_path / "runs").exists()


def test_tta_in_inference_and_evaluation(tmp_path, samples, bundle_dirs, bundle_cli, planned_models):
    """A random network is far from mirror-symmetric: --tta true must change its labels, and run in evaluation."""
    shutil.copytree(planned_models["3d"], tmp_path / "models")  # the plan and fresh weights of its network
    case = samples / "imagesTr" / "hippocampus_001.nii.gz"
    labels = {}
    for tta in ("false", "true"):
        bundle_cli(
            bundle_dirs["3d"], "configs/inference.yaml", tmp_path, f"pred_{tta}", "--datalist", str(case), "--tta", tta
        )
        labels[tta] = np.asarray(nib.load(tmp_path / f"pred_{tta}" / "hippocampus_001_seg.nii.gz").dataobj)
    assert labels["true"].shape == labels["false"].shape == nib.load(case).shape
    assert (labels["true"] != labels["false"]).mean() > 0.01
    configs = "['configs/train.yaml','configs/evaluate.yaml']"
    bundle_cli(bundle_dirs["3d"], configs, tmp_path, "eval", "--num_val", "1", "--tta", "true")
    assert len(list(csv.reader((tmp_path / "eval" / "dice_per_case.csv").open()))) == 2
    refused = bundle_cli(
        bundle_dirs["3d"],
        "configs/inference.yaml",
        tmp_path,
        "pred_x",
        "--datalist",
        str(case),
        "--tta",
        "maybe",
        check=False,
    )
    assert refused.returncode == 1 and "tta must be true or false, got 'maybe'" in refused.stderr
