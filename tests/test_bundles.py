"""The 3D and 2D bundles end to end on data_samples/: the `python -m monai.bundle` CLI and MONAI's checks."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from monai.bundle import ConfigWorkflow, ckpt_export, verify_metadata, verify_net_in_out

from unet_med.networks import UNet

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "bundles" / "schema" / "meta_schema.json"
BUNDLES = {dims: ROOT / "bundles" / f"unet_med_{dims}_segmentation" for dims in ("3d", "2d")}
IMAGES = ROOT / "data_samples" / "imagesTr"
INFER_GLOB = str(IMAGES / "hippocampus_00[13].nii.gz")


def bundle_cli(
    bundle: Path,
    config: str,
    out: Path,
    output: str,
    *overrides: str,
    run_id: str = "",
    launcher: Sequence[str] = (sys.executable,),
) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle run`` in ``bundle``; weights go to out/models, outputs to out/output.

    ``launcher`` starts the module: the Python interpreter, or e.g. torchrun and its options.
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    paths = ["--ckpt_dir", str(out / "models"), "--output_dir", str(out / output)]
    command = [*launcher, "-m", "monai.bundle", "run", *filter(None, [run_id])]
    command += ["--config_file", config, *paths, *overrides]
    result = subprocess.run(command, cwd=bundle, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module", params=sorted(BUNDLES))
def trained(request, tmp_path_factory) -> tuple[Path, Path]:
    """Train a bundle for one short epoch (two training cases, one validation case) into a tmp folder."""
    bundle, out = BUNDLES[request.param], tmp_path_factory.mktemp(f"bundle_{request.param}")
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


def test_evaluate_writes_dice_per_case_and_class(trained):
    bundle, out = trained
    bundle_cli(bundle, "['configs/train.yaml','configs/evaluate.yaml']", out, "eval", "--num_val", "1")
    raw = list(csv.reader((out / "eval" / "val_mean_dice_raw.csv").open()))
    assert raw[0] == ["filename", "class0", "class1", "mean"] and len(raw) == 2
    assert "hippocampus_" in raw[1][0] and all(0.0 <= float(v) <= 1.0 for v in raw[1][1:])
    summary = list(csv.reader((out / "eval" / "val_mean_dice_summary.csv").open()))
    assert summary[0][:2] == ["class", "mean"]
    assert [row[0] for row in summary[1:]] == ["class0", "class1", "mean"]
    assert "val_mean_dice" in (out / "eval" / "metrics.csv").read_text()


def test_inference_writes_labels_in_input_space(trained):
    bundle, out = trained
    bundle_cli(bundle, "configs/inference.yaml", out, "pred", "--datalist", INFER_GLOB)
    for case in ("hippocampus_001", "hippocampus_003"):
        source = nib.load(IMAGES / f"{case}.nii.gz")
        pred = nib.load(out / "pred" / f"{case}_seg.nii.gz")
        assert pred.shape[:3] == source.shape
        np.testing.assert_allclose(pred.affine, source.affine, atol=1e-5)
        assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}
    assert len(list((out / "pred").iterdir())) == 2


@pytest.mark.parametrize("name", sorted(BUNDLES))
def test_inference_refuses_output_beside_inputs(name):
    configs = BUNDLES[name] / "configs"
    workflow = ConfigWorkflow(
        config_file=str(configs / "inference.yaml"),
        workflow_type="infer",
        bundle_root=str(BUNDLES[name]),
        output_dir=str(IMAGES),
        datalist=INFER_GLOB,
    )
    with pytest.raises(RuntimeError) as error:
        workflow.initialize()
    assert "holds the input" in str(error.value.__cause__)


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


@pytest.mark.filterwarnings("ignore:No hash value")
@pytest.mark.parametrize("name", sorted(BUNDLES))
def test_metadata_verifies_against_project_schema(name):
    meta = BUNDLES[name] / "configs" / "metadata.json"
    verify_metadata(meta_file=str(meta), filepath=str(SCHEMA))
    content = json.loads(meta.read_text())
    assert content["version"] in content["changelog"]
    assert content["network_data_format"]["outputs"]["pred"]["channel_def"] == {
        "0": "background",
        "1": "anterior",
        "2": "posterior",
    }
    assert len(content["network_data_format"]["inputs"]["image"]["spatial_shape"]) == int(name[0])


@pytest.mark.parametrize("name", sorted(BUNDLES))
def test_network_matches_metadata(name):
    configs = BUNDLES[name] / "configs"
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(configs / "metadata.json"),
        config_file=str(configs / "inference.yaml"),
        device="cpu",
        n=1,
        any=1,
    )


@pytest.mark.parametrize("name", sorted(BUNDLES))
def test_network_def_same_in_train_and_inference(name):
    configs = BUNDLES[name] / "configs"
    train, infer = (yaml.safe_load((configs / f).read_text()) for f in ("train.yaml", "inference.yaml"))
    assert train["network_def"] == infer["network_def"]
    assert train["network_def"]["_target_"] == "unet_med.networks.UNet"


@pytest.mark.parametrize("name", sorted(BUNDLES))
@pytest.mark.parametrize(("workflow_type", "config"), [("train", "train.yaml"), ("infer", "inference.yaml")])
def test_workflow_has_required_properties(name, workflow_type, config):
    configs = BUNDLES[name] / "configs"
    workflow = ConfigWorkflow(
        config_file=str(configs / config),
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        workflow_type=workflow_type,
        bundle_root=str(BUNDLES[name]),
    )
    workflow.initialize()
    assert not workflow.check_properties()
