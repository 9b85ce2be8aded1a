"""The plan and what it belongs to, through the 3D bundle's command line: its data and its model.

One training of one epoch on data_samples/; then a data set whose spacing is 3x the planned one is refused in one
line, a fine-tune with another patch that never beats the kept model leaves plan.yaml and model.pt in step, and
the disk cache prepares labels edited in place again.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from unet_med.bundle.planned import trained_plan

pytestmark = pytest.mark.bundle_cli

SHORT = ["--epochs", "1", "--val_interval", "1", "--num_samples", "1", "--num_val", "1", "--amp", "false"]
SHORT += ["--train#dataset#data", "$@datalists['training'][:2]"]


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The run's error line, after checking that it failed with status 1, one line and no traceback."""
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("unet-med: ")]
    assert len(lines) == 1 and "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, bundle_dirs, bundle_cli):
    """The output folder of one epoch of the 3D bundle on data_samples/ (it planned models/plan.yaml)."""
    out = tmp_path_factory.mktemp("trained")
    bundle_cli(bundle_dirs["3d"], "configs/train.yaml", out, "runs", *SHORT)
    return out


def coarser_copy(samples, folder, factor: float):
    """data_samples/ with every voxel ``factor`` times larger (the same arrays, other headers)."""
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True)
        for path in sorted((samples / sub).glob("*.nii.gz")):
            image = nib.load(path)
            affine = image.affine @ np.diag([factor, factor, factor, 1.0])
            nib.save(nib.Nifti1Image(np.asarray(image.dataobj), affine), folder / sub / path.name)
    shutil.copy(samples / "dataset.json", folder / "dataset.json")
    return folder


def test_a_plan_is_not_reused_on_data_of_another_spacing(trained, samples, tmp_path, bundle_dirs, bundle_cli):
    out = tmp_path / "out"
    shutil.copytree(trained, out)
    coarse = coarser_copy(samples, tmp_path / "coarse", 3.0)
    plan_file = out / "models" / "plan.yaml"
    for how in (["--resume", "true"], ["--overwrite", "true"]):
        before = plan_file.read_bytes()
        result = bundle_cli(bundle_dirs["3d"], "configs/train.yaml", out, "runs", *SHORT, "--dataset_dir",
                            str(coarse), *how, check=False)
        assert one_line_error(result) == (
            f"unet-med: {coarse} is not the data {plan_file} was planned from: median spacing 3 x 3 x 3 mm, the "
            f"plan's 1 x 1 x 1 mm (more than 5% apart); to train on it, plan again: delete {plan_file} and train "
            "(training plans from the data; --overwrite true replaces a model of the old plan), or train into "
            "another --ckpt_dir"
        )
        assert plan_file.read_bytes() == before and (out / "models" / "model.pt").is_file()


def test_a_fine_tune_that_never_beats_the_model_keeps_plan_and_model_in_step(trained, tmp_path, bundle_dirs,
                                                                              bundle_cli):
    out = tmp_path / "out"
    shutil.copytree(trained, out)
    models = out / "models"
    before = (models / "plan.yaml").read_bytes()
    # A learning rate too small to move a float32 weight: the model scores what the kept one scores, no better.
    tune = ["--pretrained", str(models / "model.pt"), "--patch_size", "[48,48,48]", "--learning_rate", "1e-30"]
    result = bundle_cli(bundle_dirs["3d"], "configs/train.yaml", out, "runs", *SHORT, *tune)
    assert f"{models / 'plan.yaml'} keeps the plan of {models / 'model.pt'} until this run saves a better model" in (
        result.stdout + result.stderr)
    assert (models / "plan.yaml").read_bytes() == before
    assert trained_plan(models / "plan.yaml", models / "model.pt", 3)["patch_size"] == [32, 48, 32]
    configs = "['configs/train.yaml','configs/evaluate.yaml']"
    bundle_cli(bundle_dirs["3d"], configs, out, "eval", "--num_val", "1")  # evaluation accepts the pair


def test_the_disk_cache_follows_a_label_edited_in_place(trained, samples, tmp_path, bundle_dirs, bundle_cli):
    out, data = tmp_path / "out", Path(shutil.copytree(samples, tmp_path / "data"))
    shutil.copytree(trained, out)
    plan_file = out / "models" / "plan.yaml"
    plan_file.write_text(plan_file.read_text().replace('policy: "ram"', 'policy: "disk"'))
    train = [*SHORT, "--dataset_dir", str(data), "--overwrite", "true"]
    bundle_cli(bundle_dirs["3d"], "configs/train.yaml", out, "runs", *train)
    cached = set((out / "models" / "cache").rglob("*.pt"))
    assert len(cached) == 3  # two training cases, one validation case
    for path in (data / "labelsTr").glob("*.nii.gz"):  # swap the anterior and posterior labels, in place
        label = nib.load(path)
        values = np.asarray(label.dataobj)
        swapped = np.where(values == 1, 2, np.where(values == 2, 1, values)).astype(values.dtype)
        nib.save(nib.Nifti1Image(swapped, label.affine, label.header), path)
    bundle_cli(bundle_dirs["3d"], "configs/train.yaml", out, "runs", *train)
    assert len(set((out / "models" / "cache").rglob("*.pt")) - cached) == 3  # every case prepared again
