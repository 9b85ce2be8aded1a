"""Bad input at the command line: exit status 1, one `unet-med:` line naming the file or option, nothing lost."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

pytestmark = pytest.mark.bundle_cli

SHORT = ["--epochs", "1", "--val_interval", "1", "--num_val", "1", "--amp", "false"]


def hashes(folder: Path) -> dict[str, str]:
    """The SHA-256 of every file under ``folder``, by relative path."""
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest() for path in files}


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The run's error line, after checking that it failed with status 1, one line and no traceback."""
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("unet-med: ")]
    assert len(lines) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


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
