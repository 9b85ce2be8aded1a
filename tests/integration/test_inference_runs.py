"""Inference and evaluation through the command line: a device that is not there, earlier predictions in the
output folder, cut-short writes, and what a run shows while it runs and when it ends."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from tests.integration.cli_output import one_line_error
from unet_med.bundle.io import PARTIAL_PREFIX
from unet_med.bundle.lock import LOCK_NAME

pytestmark = pytest.mark.bundle_cli

EVALUATE = "['configs/train.yaml','configs/evaluate.yaml']"
CASES = "hippocampus_00[13].nii.gz"


def contents(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder``, by relative path."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture
def out(tmp_path, planned_models) -> Path:
    """A run folder whose ``models/`` holds the 3D bundle's planned model."""
    shutil.copytree(planned_models["3d"], tmp_path / "models")
    return tmp_path


@pytest.mark.parametrize("config", ["configs/inference.yaml", EVALUATE])
def test_device_cuda_without_cuda_is_one_line_before_anything_is_built(config, tmp_path, bundle_dirs, bundle_cli):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = bundle_cli(bundle_dirs["3d"], config, tmp_path, "out", "--device", "cuda", check=False)
    assert one_line_error(result).startswith(
        "unet-med: --device cuda: this machine has no usable CUDA GPU (torch "
    ) and one_line_error(result).endswith("; use --device cpu.")
    assert not list(tmp_path.iterdir()), "nothing is written"


def test_earlier_predictions_are_refused_and_moved_aside_with_overwrite(out, samples, bundle_dirs, bundle_cli):
    datalist = ["--datalist", str(samples / "imagesTr" / CASES)]
    bundle_cli(bundle_dirs["3d"], "configs/inference.yaml", out, "pred", *datalist)
    pred = out / "pred"
    first = contents(pred)
    assert sorted(first) == ["hippocampus_001_seg.nii.gz", "hippocampus_003_seg.nii.gz"]
    (pred / "hippocampus_001_seg.nii.gz").touch()  # as if written earlier than the other one

    refused = bundle_cli(bundle_dirs["3d"], "configs/inference.yaml", out, "pred", *datalist, check=False)
    assert one_line_error(refused) == (
        f"unet-med: output_dir {pred} already holds 2 prediction(s) of an earlier run (hippocampus_001_seg.nii.gz, "
        f"hippocampus_003_seg.nii.gz); --overwrite true moves them into {pred / 'previous'} first, or choose another "
        "--output_dir."
    )
    assert contents(pred) == first, "nothing is changed"

    bundle_cli(bundle_dirs["3d"], "configs/inference.yaml", out, "pred", *datalist, "--overwrite", "true")
    (kept,) = (pred / "previous").iterdir()
    assert contents(kept) == first, "the earlier predictions are kept aside, unchanged"
    assert sorted(path.name for path in pred.iterdir()) == [*sorted(first), "previous"]


def test_a_cut_short_write_is_cleaned_up_and_the_run_sums_up(out, samples, bundle_dirs, bundle_cli):
    pred = out / "pred"
    pred.mkdir()
    stale = pred / f"{PARTIAL_PREFIX}0a1b2c-hippocampus_001_seg.nii.gz"  # what a killed write leaves
    stale.write_bytes(b"half a file")
    (pred / "notes.txt").write_text("not a prediction")
    result = bundle_cli(bundle_dirs["3d"], "configs/inference.yaml", out, "pred", "--datalist",
                        str(samples / "imagesTr" / CASES))
    assert sorted(os.listdir(pred)) == ["hippocampus_001_seg.nii.gz", "hippocampus_003_seg.nii.gz", "notes.txt"]
    assert not stale.exists() and not (pred / LOCK_NAME).exists()
    lines = result.stdout.splitlines()
    scans = [line.split("INFO  ", 1)[1] for line in lines if "INFO  scan " in line]
    assert [line.split("  ")[:2] for line in scans] == [["scan 1/2", "hippocampus_001"],
                                                         ["scan 2/2", "hippocampus_003"]]
    assert any(line.endswith(f": predictions in {pred}") and "segmented 2 scans in " in line for line in lines)
    assert "Epoch[1] Complete" not in result.stdout and "writing: " not in result.stdout


def test_a_bar_on_request(out, samples, bundle_dirs, bundle_cli):
    result = bundle_cli(bundle_dirs["3d"], "configs/inference.yaml", out, "pred", "--progress", "bar",
                        "--datalist", str(samples / "imagesTr" / CASES))
    assert "segmenting: 100%" in result.stdout and "2/2" in result.stdout and "INFO  scan " not in result.stdout


def test_evaluation_shows_each_scan_and_its_time_without_engine_noise(out, bundle_dirs, bundle_cli):
    result = bundle_cli(bundle_dirs["3d"], EVALUATE, out, "eval", "--num_val", "2")
    assert "INFO  scan 1/2  hippocampus_" in result.stdout and "INFO  scan 2/2  hippocampus_" in result.stdout
    assert "evaluated 2 cases in " in result.stdout
    assert "Got new best metric" not in result.stdout and "Epoch[1] Complete" not in result.stdout
