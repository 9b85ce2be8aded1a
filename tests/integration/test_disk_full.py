"""A full disk during training, resumed training and inference: one line naming the file and the space, and
nothing half-written.

The disk is a real one that fills up: a small tmpfs mounted, in a user and mount namespace of its own
(``unshare --user --map-root-user --mount``, no privileges needed), over the folder the run writes to. The mount
ends with the namespace, so the launcher copies what the run left there back out before it exits.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from unet_med.bundle.io import PARTIAL_PREFIX

pytestmark = pytest.mark.bundle_cli

SHORT = ["--epochs", "1", "--val_interval", "1", "--num_val", "1", "--amp", "false"]
# mounts a tmpfs of $1 bytes on $2, fills it from $3, runs the rest, then copies $2 to $4
ON_SMALL_DISK = (
    'size=$1 folder=$2 seed=$3 after=$4; shift 4; mkdir -p "$folder" "$after" '
    '&& mount -t tmpfs -o "size=$size" tmpfs "$folder" && cp -a "$seed/." "$folder/" || exit 99; '
    '"$@"; status=$?; cp -a "$folder/." "$after/"; exit $status'
)
NAMESPACE = ("unshare", "--user", "--map-root-user", "--mount")


@pytest.fixture(scope="module")
def small_disk() -> Callable[..., tuple[str, ...]]:
    """``small_disk(folder, seed, after, free)``: a launcher for ``bundle_cli`` that runs it with ``folder`` on a
    tmpfs holding a copy of ``seed`` and ``free`` more bytes; what the run leaves there is copied to ``after``."""
    probe = subprocess.run([*NAMESPACE, "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no user and mount namespaces here: {probe.stderr.decode().strip()}")

    def launcher(folder: Path, seed: Path, after: Path, free: int) -> tuple[str, ...]:
        used = sum(-(-path.stat().st_size // 4096) * 4096 for path in seed.rglob("*") if path.is_file())
        size = used + free + 4096  # and a page for the lock file
        return (*NAMESPACE, "sh", "-c", ON_SMALL_DISK, "sh", str(size), str(folder), str(seed), str(after),
                sys.executable)

    return launcher


@pytest.fixture(scope="module")
def trained(tmp_path_factory, bundle_dirs, bundle_cli) -> Path:
    """The 3D bundle trained for one epoch: a run folder with ``models/`` (model, training state, plan)."""
    out = tmp_path_factory.mktemp("trained")
    bundle_cli(bundle_dirs["3d"], "configs/train.yaml", out, "runs", *SHORT, run_id="training")
    return out


def disk_full_line(result: subprocess.CompletedProcess) -> str:
    """The run's one error line, after checking that it failed with status 1 and no traceback."""
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("unet-med: ")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert lines[0].endswith(" is free in " + lines[0].split(" is free in ")[-1])
    return lines[0]


def test_training_names_the_model_file_it_cannot_write(tmp_path, planned_models, bundle_dirs, bundle_cli,
                                                       small_disk):
    seed = tmp_path / "seed"
    seed.mkdir()
    shutil.copy(planned_models["3d"] / "plan.yaml", seed)  # planned: the model is the first big file
    after = tmp_path / "after"
    launcher = small_disk(tmp_path / "models", seed, after, free=1_000_000)
    result = bundle_cli(bundle_dirs["3d"], "configs/train.yaml", tmp_path, "runs", *SHORT, run_id="training",
                        launcher=launcher, check=False)
    line = disk_full_line(result)
    # about the 1 MB left free, less what the run writes before the model (the data set's fingerprint)
    assert re.match(rf"unet-med: no space left on the device for {re.escape(str(tmp_path / 'models' / 'model.pt'))}: "
                    r"it needs more than (\d+\.\d kB|1\.0 MB), and (\d+\.\d kB|1\.0 MB) is free in ", line), line
    assert line.endswith("; free some space (or write elsewhere) and run again.")
    assert sorted(path.name for path in after.iterdir()) == ["fingerprint.json", "plan.yaml"], "no half-written model"


def test_resuming_leaves_the_saved_model_and_state_as_they_were(tmp_path, trained, bundle_dirs, bundle_cli,
                                                                 small_disk):
    seed = trained / "models"
    after = tmp_path / "after"
    launcher = small_disk(tmp_path / "models", seed, after, free=1_000_000)
    shutil.copytree(trained / "runs", tmp_path / "runs")
    overrides = [*SHORT[2:], "--epochs", "2", "--resume", "true"]
    result = bundle_cli(bundle_dirs["3d"], "configs/train.yaml", tmp_path, "runs", *overrides, run_id="training",
                        launcher=launcher, check=False)
    line = disk_full_line(result)
    assert line.startswith(f"unet-med: no space left on the device for {tmp_path / 'models'}/"), line
    assert line.split(": ")[1].rsplit("/", 1)[1] in ("model.pt", "checkpoint_latest.pt"), line
    for name in ("model.pt", "checkpoint_latest.pt"):
        assert (after / name).read_bytes() == (seed / name).read_bytes(), f"{name} is as it was"
    assert not list(after.glob(f"{PARTIAL_PREFIX}*"))


def test_inference_names_the_prediction_it_cannot_write(tmp_path, trained, samples, bundle_dirs, bundle_cli,
                                                        small_disk):
    shutil.copytree(trained / "models", tmp_path / "models")
    empty, after = tmp_path / "empty", tmp_path / "after"
    empty.mkdir()
    launcher = small_disk(tmp_path / "pred", empty, after, free=0)
    result = bundle_cli(bundle_dirs["3d"], "configs/inference.yaml", tmp_path, "pred", "--datalist",
                        str(samples / "imagesTr" / "hippocampus_00[13].nii.gz"), launcher=launcher, check=False)
    line = disk_full_line(result)
    prediction = tmp_path / "pred" / "hippocampus_001_seg.nii.gz"
    assert line.startswith(f"unet-med: no space left on the device for {prediction}: "), line
    assert "cannot find a suitable writer" not in result.stderr + result.stdout
    assert "unable to write" not in result.stdout
    assert "inference stopped by an error after 0 of 2 scans" in result.stdout
    assert not list(after.iterdir()), "no half-written prediction, no lock left behind"
