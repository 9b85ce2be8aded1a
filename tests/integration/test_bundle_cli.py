"""The 3D and 2D bundles end to end on data_samples/ through the `python -m monai.bundle` command line."""

from __future__ import annotations

import csv
import json
import re
import shutil
import signal
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from monai.bundle import ConfigParser, ckpt_export

pytestmark = pytest.mark.bundle_cli

INFER_CASES = "hippocampus_00[13].nii.gz"
PATCHES = {"2d": [32, 32], "3d": [24, 32, 24]}  # smaller than the plan's, set on the command line


@pytest.fixture(scope="module", params=["2d", "3d"])
def trained(request, tmp_path_factory, bundle_dirs, bundle_cli):
    """Train a bundle for three short epochs (two training cases, one validation case) into a tmp folder.

    With a validation interval of 2, epoch 2 is validated for the interval and epoch 3 for being the last.
    Returns the bundle, the output folder and the run's stdout.
    """
    bundle, out = bundle_dirs[request.param], tmp_path_factory.mktemp(f"bundle_{request.param}")
    overrides = ["--epochs", "3", "--val_interval", "2", "--num_samples", "1", "--num_val", "1", "--amp", "false"]
    overrides += ["--patch_size", json.dumps(PATCHES[request.param])]
    overrides += ["--train#dataset#data", "$@datalists['training'][:2]"]
    result = bundle_cli(bundle, "configs/train.yaml", out, "runs", *overrides, run_id="training")
    return bundle, out, result.stdout


def test_training_writes_best_model_and_report(trained):
    bundle, out, stdout = trained
    assert "plan written to" in stdout and "pixdim" in stdout  # planned first, with the decision table
    plan = yaml.safe_load((out / "models" / "plan.yaml").read_text())
    checkpoint = torch.load(out / "models" / "model.pt", weights_only=True)
    assert checkpoint["plan"] == plan
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.yaml"))
    parser["ckpt_dir"] = str(out / "models")
    parser.get_parsed_content("network_def").load_state_dict(checkpoint["model"])
    for name in ("learning_curves.png", "validation_overlay.png"):
        assert (out / "runs" / name).stat().st_size > 1000
    assert list((out / "runs").glob("events.out.tfevents.*"))
    assert "Epoch: 3/3, Iter: " in (out / "runs" / "training.log").read_text()  # the plan's batch, 1 or 2 steps


def test_training_log_names_the_classes_and_validates_the_last_epoch(trained):
    _, out, stdout = trained
    with (out / "runs" / "training_log.csv").open() as file:
        header, *rows = list(csv.reader(file))
    assert header == ["epoch", "loss", "learning_rate", "dice Anterior", "dice Posterior", "val_mean_dice"]
    assert [row[0] for row in rows] == ["1", "2", "3"]
    assert rows[0][3:] == ["", "", ""]  # epoch 1: not validated
    for row in rows[1:]:  # epoch 2 by the interval, epoch 3 as the last
        assert all(0.0 <= float(value) <= 1.0 for value in row[3:])
    assert "Dice  Anterior " in stdout and "epoch 3/3  loss" in stdout
    assert "training finished: 3 of 3 epochs" in stdout and "best validation Dice (epoch " in stdout
    assert "next: evaluate  python -m monai.bundle run" in stdout


def test_resuming_a_finished_run_says_so(trained, bundle_cli):
    bundle, out, _ = trained
    overrides = ["--epochs", "3", "--resume", "true", "--num_val", "1", "--amp", "false"]
    result = bundle_cli(bundle, "configs/train.yaml", out, "runs", *overrides, run_id="training")
    assert ("nothing to train: the saved training state has finished all 3 of 3 epochs; to train longer, run again "
            "with --resume true --epochs <more than 3>") in result.stdout
    assert "best validation Dice" not in result.stdout  # that line alone, without scoring model.pt again


def test_evaluate_writes_dice_per_case_and_class(trained, bundle_cli):
    bundle, out, _ = trained
    result = bundle_cli(bundle, "['configs/train.yaml','configs/evaluate.yaml']", out, "eval", "--num_val", "1")
    per_case = list(csv.reader((out / "eval" / "dice_per_case.csv").open()))
    assert per_case[0] == ["case", "Anterior", "Posterior", "mean"] and len(per_case) == 2
    assert per_case[1][0].startswith("hippocampus_") and all(0.0 <= float(v) <= 1.0 for v in per_case[1][1:])
    metrics = list(csv.reader((out / "eval" / "metrics.csv").open()))
    assert metrics[0] == ["statistic", "Anterior", "Posterior", "mean"]
    assert [row[0] for row in metrics[1:]] == ["mean", "median", "std", "min", "max"]
    assert (out / "eval" / "dice_per_case.png").stat().st_size > 1000
    assert "evaluated 1 cases in " in result.stdout and "  Dice  Anterior " in result.stdout
    for table in out.rglob("*.csv"):  # every CSV of training and evaluation: plain numbers only
        text = table.read_text()
        assert "tensor" not in text and "[" not in text, table


def test_inference_writes_labels_in_input_space(trained, bundle_cli, samples):
    bundle, out, _ = trained
    images = samples / "imagesTr"
    bundle_cli(bundle, "configs/inference.yaml", out, "pred", "--datalist", str(images / INFER_CASES))
    for case in ("hippocampus_001", "hippocampus_003"):
        source = nib.load(images / f"{case}.nii.gz")
        pred = nib.load(out / "pred" / f"{case}_seg.nii.gz")
        assert pred.shape[:3] == source.shape
        np.testing.assert_allclose(pred.affine, source.affine, atol=1e-5)
        assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}
    assert len(list((out / "pred").iterdir())) == 2


def test_command_line_values_win_and_are_written_into_the_plan(trained):
    bundle, out, _ = trained
    text = (out / "models" / "plan.yaml").read_text()
    patch = PATCHES["3d" if "3d" in bundle.name else "2d"]
    assert f"patch_size: {json.dumps(patch)}  # set on the command line (the file had " in text
    assert "num_samples: 1  # set on the command line (the file had 2)" in text
    assert "epochs: 3  # set on the command line" in text
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.yaml"))
    parser["ckpt_dir"] = str(out / "models")
    assert list(parser.get_parsed_content("inferer#inferer").roi_size) == patch


def test_inference_refuses_a_model_of_another_plan(trained, bundle_cli, samples, tmp_path):
    bundle, out, _ = trained
    models = tmp_path / "models"
    shutil.copytree(out / "models", models, ignore=shutil.ignore_patterns("cache", "previous"))
    plan = models / "plan.yaml"
    plan.write_text(plan.read_text().replace("pixdim: [1.0, 1.0, 1.0]", "pixdim: [1.5, 1.5, 1.5]"))
    datalist = ["--datalist", str(samples / "imagesTr" / INFER_CASES)]
    result = bundle_cli(bundle, "configs/inference.yaml", tmp_path, "pred", *datalist, check=False)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("unet-med: ")]
    assert lines == [f"unet-med: {models / 'model.pt'}: trained with another plan than {plan}: pixdim = [1.0, 1.0, "
                     "1.0] in the model, [1.5, 1.5, 1.5] in the plan; use the plan this model was trained with "
                     f"(python -m unet_med.bundle.plan --from_model {models / 'model.pt'} --output {plan} writes it "
                     "back), or train again"], result.stderr[-3000:]
    assert not (tmp_path / "pred").exists()


def test_torchscript_export_runs(trained):
    bundle, out, _ = trained
    configs = bundle / "configs"
    ckpt_export(
        net_id="network_def",
        filepath=str(out / "model.ts"),
        ckpt_file=str(out / "models" / "model.pt"),
        meta_file=str(configs / "metadata.json"),
        config_file=str(configs / "inference.yaml"),
        key_in_ckpt="model",
        ckpt_dir=str(out / "models"),
    )
    net = torch.jit.load(out / "model.ts")
    shape = json.loads((configs / "metadata.json").read_text())["network_data_format"]["inputs"]["image"]
    with torch.no_grad():
        logits = net(torch.randn(1, 1, *shape["spatial_shape"]))
    assert logits.shape == (1, 3, *shape["spatial_shape"])


def test_ctrl_c_prints_the_summary(tmp_path, bundle_dirs, child_env):
    """SIGINT (what Ctrl-C sends) to a real training process in its second epoch: it ends with the summary."""
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.yaml"]
    command += ["--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "runs"), "--epochs", "8"]
    command += ["--val_interval", "1", "--batch_size", "1", "--num_samples", "1", "--num_val", "1", "--amp", "false"]
    command += ["--train#dataset#data", "$@datalists['training'][:2]"]
    output = []
    # As from a terminal: a runner started in the background (a shell's `&`) passes SIGINT on ignored.
    with subprocess.Popen(command, cwd=bundle_dirs["3d"], env=child_env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)) as process:
        for line in process.stdout:
            output.append(line)
            if "Epoch: 2/8, Iter: 1/2" in line:  # epoch 1 trained and validated, epoch 2 under way
                process.send_signal(signal.SIGINT)
                break
        output += process.stdout.readlines()
    text = "".join(output)
    assert process.returncode == -signal.SIGINT, text[-3000:]  # 130 in a shell
    assert "Traceback" not in text, text[-3000:]
    # what comes before: the plan table with the command line's epochs, the precision, no echo or false resume
    assert re.search(r"^epochs +8 +set on the command line \(the file had \d+\)$", text, re.MULTILINE), text[:5000]
    assert "training on cpu, float32 (--amp false: float32 asked for)" in text
    assert "input summary" not in text and "Engine run resuming" not in text, text[:5000]
    assert "training interrupted after 1 of 8 epochs" in text and "continue it with --resume true" in text, text[-3000:]
    assert "best validation Dice (epoch 1): Anterior " in text
    assert f"model         {tmp_path / 'models' / 'model.pt'}" in text
    assert (tmp_path / "runs" / "learning_curves.png").is_file()
