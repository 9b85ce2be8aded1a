"""Bad input at the command line: exit status 1, one `unet-med:` line naming the file or option, nothing lost."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from tests.integration.cli_output import one_line_error

pytestmark = pytest.mark.bundle_cli

SHORT = ["--epochs", "1", "--val_interval", "1", "--num_val", "1", "--amp", "false"]


def hashes(folder: Path) -> dict[str, str]:
    """The SHA-256 of every file under ``folder``, by relative path."""
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest() for path in files}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["--epochs", "0"], "unet-med: --epochs 0: expected a whole number of at least 1."),
        (["--epochs", "-1"], "unet-med: --epochs -1: expected a whole number of at least 1."),
        (["--epochs", "abc"], "unet-med: --epochs 'abc': expected a whole number of at least 1."),
        (["--learning_rate", "abc"], "unet-med: --learning_rate 'abc': expected a number above 0, such as 0.002."),
        (["--batch_size", "0"], "unet-med: --batch_size 0: expected a whole number of at least 1."),
        (["--val_interval", "0"], "unet-med: --val_interval 0: expected a whole number of at least 1."),
        (["--patch_size", "[32,48]"], "unet-med: --patch_size [32, 48]: expected 3 whole numbers of at least 1"),
        (["--amp", "maybe"], "unet-med: --amp must be auto, true or false, got 'maybe'."),
        (["--device", "cuda"], "unet-med: --device cuda: this machine has no usable CUDA GPU"),
        (["--num_workers", "-1"], "unet-med: --num_workers -1: expected a whole number of at least 0."),
        (["--epoch", "3"], "unet-med: --epoch: configs/train.yaml defines no such option; did you mean --epochs? "
                           "python -m unet_med.bundle.options configs/train.yaml lists them"),
        (["--foo", "1"], "unet-med: --foo: configs/train.yaml defines no such option; python -m"),
    ],
)
def test_a_wrong_option_is_one_line_before_anything_is_built(override, message, tmp_path, bundle_dirs, bundle_cli):
    if override[0] == "--device" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = bundle_cli(bundle_dirs["3d"], "configs/train.yaml", tmp_path, "runs", *override, check=False)
    assert one_line_error(result).startswith(message)
    assert not list(tmp_path.iterdir()), "nothing is written"


def test_a_checkpoint_holding_code_is_refused_and_never_run(tmp_path, bundle_dirs, bundle_cli):
    marker = tmp_path / "ran"

    class SystemCall:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    models = tmp_path / "models"
    models.mkdir()
    torch.save({"model": SystemCall()}, models / "checkpoint_latest.pt")
    before = hashes(tmp_path)
    result = bundle_cli(
        bundle_dirs["3d"], "configs/train.yaml", tmp_path, "runs", *SHORT, "--resume", "true", check=False
    )
    line = one_line_error(result)
    assert line.startswith(f"unet-med: {models / 'checkpoint_latest.pt'} is refused for safety: it holds code")
    assert "truncated" not in line and "weights_only" not in line
    assert not marker.exists()
    assert {name: h for name, h in hashes(tmp_path).items() if name in before} == before


def test_a_broken_symlink_is_named_by_its_own_path(tmp_path, samples, bundle_dirs, bundle_cli):
    data = tmp_path / "data"
    shutil.copytree(samples, data)
    link = data / "imagesTr" / "hippocampus_001.nii.gz"
    link.unlink()
    link.symlink_to(tmp_path / "gone.nii.gz")
    before = hashes(data)
    result = bundle_cli(
        bundle_dirs["3d"], "configs/train.yaml", tmp_path, "runs", "--dataset_dir", str(data), check=False
    )
    assert one_line_error(result) == (
        f"unet-med: {link}: a broken symbolic link: its target {tmp_path / 'gone.nii.gz'} does not exist"
    )
    assert hashes(data) == before and not (tmp_path / "models").exists()
    assert json.loads((data / "dataset.json").read_text())


def test_a_corrupt_or_overflowing_scan_is_refused_by_training_and_inference(
    tmp_path, samples, bundle_dirs, bundle_cli, corrupt_gzip
):
    bundle, data = bundle_dirs["3d"], tmp_path / "data"
    shutil.copytree(samples, data)
    two_cases = ["--dataset_dir", str(data), "--train#dataset#data", "$@datalists['training'][:2]"]
    bundle_cli(bundle, "configs/train.yaml", tmp_path, "runs", *SHORT, *two_cases)
    models = hashes(tmp_path / "models")
    corrupt = corrupt_gzip(data / "imagesTr" / "hippocampus_001.nii.gz")  # decodes to wrong values, CRC fails
    problem = f"{corrupt}: corrupt: its gzip stream fails its checks (CRC check failed 0x"

    result = bundle_cli(bundle, "configs/inference.yaml", tmp_path, "seg", "--datalist", str(corrupt), check=False)
    assert one_line_error(result).startswith(f"unet-med: {problem}")
    assert not (tmp_path / "seg").exists(), "no mask is written"

    result = bundle_cli(bundle, "configs/train.yaml", tmp_path, "runs", *SHORT, *two_cases, "--resume", "true",
                        check=False)
    assert one_line_error(result).startswith(f"unet-med: {problem}")
    assert hashes(tmp_path / "models") == models
    fresh = tmp_path / "fresh"  # no plan yet: refused before planning
    result = bundle_cli(bundle, "configs/train.yaml", fresh, "runs", *SHORT, *two_cases, check=False)
    assert one_line_error(result).startswith(f"unet-med: {problem}")
    assert not list(fresh.rglob("*")), "no plan, model or log"

    # finite intensities near float32's largest overflow in normalisation: the NaN prediction is no mask
    scan = nib.load(samples / "imagesTr" / "hippocampus_001.nii.gz")
    values = np.asarray(scan.dataobj, dtype=np.float32)
    values[values > values.mean()] = 3e38
    huge = tmp_path / "huge.nii"
    nib.save(nib.Nifti1Image(values, scan.affine), huge)
    result = bundle_cli(bundle, "configs/inference.yaml", tmp_path, "seg", "--datalist", str(huge), check=False)
    assert one_line_error(result).startswith(f"unet-med: {huge}: the network's prediction holds NaN or Inf values, "
                                             "so no mask is written for it")
    assert not (tmp_path / "seg").exists()


@pytest.mark.parametrize(
    ("cases", "learning_rate", "message"),
    [
        # the example: the loss stays finite (1e7 and more after the first steps) but has left its start
        (4, "1e4", "unet-med: training diverged in epoch 1: its mean loss "),
        # 1e20 makes AdamW's first steps overflow float32; two iterations an epoch: the second one's loss is NaN
        (2, "1e20", "unet-med: training diverged at epoch 1, iteration 2 of 2: the loss is nan; nothing of this epoch "
                    "was validated or saved (a smaller --learning_rate may help)."),
        # one iteration: its step leaves weights so large that the validation prediction overflows
        (1, "1e20", "unet-med: training diverged by epoch 1: the network's prediction for "),
    ],
)
def test_a_diverging_training_stops_in_one_line_and_saves_no_model(cases, learning_rate, message, tmp_path,
                                                                   bundle_dirs, bundle_cli):
    overrides = [*SHORT, "--num_samples", "1", "--batch_size", "1", "--learning_rate", learning_rate]
    overrides += ["--train#dataset#data", f"$@datalists['training'][:{cases}]"]
    result = bundle_cli(bundle_dirs["3d"], "configs/train.yaml", tmp_path, "runs", *overrides, check=False)
    assert one_line_error(result).startswith(message)
    assert sorted(path.name for path in (tmp_path / "models").iterdir()) == ["fingerprint.json", "plan.yaml"]


def test_a_one_case_data_set_is_refused_before_planning(tmp_path, samples, bundle_dirs, bundle_cli):
    data = tmp_path / "data"
    for kind in ("imagesTr", "labelsTr"):
        (data / kind).mkdir(parents=True)
        shutil.copy(samples / kind / "hippocampus_001.nii.gz", data / kind)
    description = json.loads((samples / "dataset.json").read_text())
    description["training"] = [case for case in description["training"] if "hippocampus_001." in case["image"]]
    description["numTraining"] = 1
    (data / "dataset.json").write_text(json.dumps(description))
    result = bundle_cli(
        bundle_dirs["3d"], "configs/train.yaml", tmp_path, "runs", "--dataset_dir", str(data), check=False
    )
    assert one_line_error(result) == (f"unet-med: {data / 'dataset.json'} lists 1 training case(s): training needs "
                                      "at least 2, cases to train on and one to validate on")
    assert "fingerprint" not in result.stdout + result.stderr and not (tmp_path / "models").exists()


def test_an_inversion_that_slabs_cannot_reproduce_is_one_line_before_any_scan(tmp_path, samples, bundle_dirs,
                                                                                bundle_cli, planned_models):
    """Cubic splines filter the whole volume: the slab-wise way back to the scan's grid refuses them."""
    shutil.copytree(planned_models["3d"], tmp_path / "models")
    config = yaml.safe_load((bundle_dirs["3d"] / "configs" / "inference.yaml").read_text())
    [spacing] = [i for i, t in enumerate(config["preprocessing"]["transforms"]) if "Spacingd" in t["_target_"]]
    scans = str(samples / "imagesTr" / "hippocampus_00[13].nii.gz")
    result = bundle_cli(bundle_dirs["3d"], "configs/inference.yaml", tmp_path, "pred", "--datalist", scans,
                        f"--preprocessing#transforms#{spacing}#mode", "3", check=False)
    assert one_line_error(result) == (
        "unet-med: InvertToLabelsd: the preprocessing's Spacingd has mode 3 and padding_mode 'border'; a slab at a "
        "time gives Invertd's labels for modes bilinear, nearest with padding_mode border, zeros only."
    )
    assert not (tmp_path / "pred").exists()
