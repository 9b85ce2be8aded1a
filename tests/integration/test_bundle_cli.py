"""The 3D and 2D bundles end to end on data_samples/ through the `python -m monai.bundle` command line."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from monai.bundle import ckpt_export

from unet_med.networks import UNet

pytestmark = pytest.mark.bundle_cli

INFER_CASES = "hippocampus_00[13].nii.gz"


@pytest.fixture(scope="module", params=["2d", "3d"])
def trained(request, tmp_path_factory, bundle_dirs, bundle_cli):
    """Train a bundle for one short epoch (two training cases, one validation case) into a tmp folder."""
    bundle, out = bundle_dirs[request.param], tmp_path_factory.mktemp(f"bundle_{request.param}")
    overrides = ["--epochs", "1", "--val_interval", "1", "--num_samples", "2", "--num_val", "1", "--amp", "false"]
    overrides += ["--train#dataset#data", "$@datalists['training'][:2]"]
    bundle_cli(bundle, "configs/train.yaml", out, "runs", *overrides, run_id="training")
    return bundle, out


def test_training_writes_best_model_and_report(trained):
    bundle, out = trained
    state = torch.load(out / "models" / "model.pt", weights_only=True)
    network_def = yaml.safe_load((bundle / "configs" / "train.yaml").read_text())["network_def"]
    kwargs = {k: v for k, v in network_def.items() if k != "_target_"} | {"out_channels": 3}
    UNet(**kwargs).load_state_dict(state)
    for name in ("learning_curves.png", "validation_overlay.png"):
        assert (out / "runs" / name).stat().st_size > 1000
    rows = list(csv.DictReader((out / "runs" / "training_log.csv").open()))
    assert len(rows) == 1 and 0.0 <= float(rows[0]["val_mean_dice"]) <= 1.0
    assert list((out / "runs").glob("events.out.tfevents.*"))


def test_evaluate_writes_dice_per_case_and_class(trained, bundle_cli):
    bundle, out = trained
    bundle_cli(bundle, "['configs/train.yaml','configs/evaluate.yaml']", out, "eval", "--num_val", "1")
    raw = list(csv.reader((out / "eval" / "val_mean_dice_raw.csv").open()))
    assert raw[0] == ["filename", "class0", "class1", "mean"] and len(raw) == 2
    assert "hippocampus_" in raw[1][0] and all(0.0 <= float(v) <= 1.0 for v in raw[1][1:])
    summary = list(csv.reader((out / "eval" / "val_mean_dice_summary.csv").open()))
    assert summary[0][:2] == ["class", "mean"]
    assert [row[0] for row in summary[1:]] == ["class0", "class1", "mean"]
    assert "val_mean_dice" in (out / "eval" / "metrics.csv").read_text()


def test_inference_writes_labels_in_input_space(trained, bundle_cli, samples):
    bundle, out = trained
    images = samples / "imagesTr"
    bundle_cli(bundle, "configs/inference.yaml", out, "pred", "--datalist", str(images / INFER_CASES))
    for case in ("hippocampus_001", "hippocampus_003"):
        source = nib.load(images / f"{case}.nii.gz")
        pred = nib.load(out / "pred" / f"{case}_seg.nii.gz")
        assert pred.shape[:3] == source.shape
        np.testing.assert_allclose(pred.affine, source.affine, atol=1e-5)
        assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}
    assert len(list((out / "pred").iterdir())) == 2


def test_torchscript_export_runs(trained):
    bundle, out = trained
    configs = bundle / "configs"
    ckpt_export(
        net_id="network_def",
        filepath=str(out / "model.ts"),
        ckpt_file=str(out / "models" / "model.pt"),
        meta_file=str(configs / "metadata.json"),
        config_file=str(configs / "inference.yaml"),
    )
    net = torch.jit.load(out / "model.ts")
    shape = json.loads((configs / "metadata.json").read_text())["network_data_format"]["inputs"]["image"]
    with torch.no_grad():
        logits = net(torch.randn(1, 1, *shape["spatial_shape"]))
    assert logits.shape == (1, 3, *shape["spatial_shape"])
