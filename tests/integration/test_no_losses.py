"""No silent losses: training again, resuming longer or shorter, two trainings at once, a kill mid-write.

Each run is a real `python -m monai.bundle run training` process on data_samples/ (two training cases, one
validation case); every refusal is checked for exit status 1, one `unet-med:` line, and unchanged files.
"""

from __future__ import annotations

import csv
import hashlib
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.integration.cli_output import one_line_error
from unet_med.bundle.io import PARTIAL_PREFIX, load_checkpoint
from unet_med.bundle.lock import LOCK_NAME

pytestmark = pytest.mark.faults

SHORT = ["--val_interval", "1", "--num_val", "1", "--num_samples", "1", "--batch_size", "1", "--amp", "false"]
SHORT += ["--train#dataset#data", "$@datalists['training'][:2]"]


def hashes(folder: Path) -> dict[str, str]:
    """The SHA-256 of every file under ``folder``, by relative path."""
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest() for path in files}


def kept(before: dict[str, str], folder: Path) -> bool:
    """Whether every file of ``before`` is still in ``folder`` with the same content."""
    after = hashes(folder)
    return all(after.get(name) == digest for name, digest in before.items())


def test_training_again_resuming_longer_or_shorter_and_overwriting(tmp_path, bundle_dirs, bundle_cli):
    bundle, models, runs = bundle_dirs["3d"], tmp_path / "models", tmp_path / "runs"

    def train(*overrides: str, check: bool = True) -> subprocess.CompletedProcess:
        return bundle_cli(bundle, "configs/train.yaml", tmp_path, "runs", *SHORT, *overrides, check=check)

    train("--epochs", "1")
    first = load_checkpoint(models / "checkpoint_latest.pt")
    before = hashes(tmp_path)

    # Training again without --resume: refused, nothing changed.
    line = one_line_error(train("--epochs", "1", check=False))
    assert line == (
        f"unet-med: {models / 'model.pt'}: a trained model is already there; --resume true continues its training, "
        "--overwrite true trains a new model in its place."
    )
    assert kept(before, tmp_path)

    # Resuming with more epochs trains longer: the schedule is stretched, the weights move.
    result = train("--epochs", "2", "--resume", "true")
    assert "scores" in result.stdout and "the model to beat" in result.stdout
    second = load_checkpoint(models / "checkpoint_latest.pt")
    assert (
        second["lr_scheduler"]["total_iters"] == 2
        and second["trainer"]["iteration"] == 2 * first["trainer"]["iteration"]
    )
    moved = [key for key, value in first["model"].items() if not torch.equal(value, second["model"][key])]
    assert len(moved) > len(first["model"]) // 2, "epoch 2 ran at learning rate 0"
    rows = list(csv.DictReader((runs / "training_log.csv").open()))
    assert [row["epoch"] for row in rows] == ["1", "2"]

    # Resuming with fewer epochs than done: refused, nothing changed.
    before = hashes(tmp_path)
    line = one_line_error(train("--epochs", "1", "--resume", "true", check=False))
    assert line == (
        f"unet-med: --epochs 1: {models / 'checkpoint_latest.pt'} has already trained 2 epochs; pass --epochs 3 or "
        "more to train longer."
    )
    assert kept(before, tmp_path)

    # Resuming a run that has trained all its epochs: it says so, and how to train longer; nothing is scored.
    result = train("--epochs", "2", "--resume", "true")
    assert ("nothing to train: the saved training state has finished all 2 of 2 epochs; to train longer, run again "
            "with --resume true --epochs <more than 2>") in result.stdout
    assert "scores" not in result.stdout and "training on" not in result.stdout, result.stdout[-3000:]
    after = hashes(tmp_path)
    assert all(after[name] == before[name] for name in ("models/model.pt", "models/checkpoint_latest.pt"))

    # --overwrite true: a new run, the previous run's files kept under previous/<time>/.
    before = hashes(tmp_path)
    train("--epochs", "1", "--overwrite", "true")
    previous = {
        name: digest for name, digest in hashes(tmp_path).items() if "/previous/" in name and name.count("/") == 3
    }
    kept_names = {name.split("/", 1)[0] + "/" + name.rsplit("/", 1)[1]: digest for name, digest in previous.items()}
    for name in ("models/model.pt", "models/checkpoint_latest.pt", "runs/training_log.csv", "runs/learning_curves.png"):
        assert kept_names[name] == before[name], name
    assert len(list(csv.DictReader((runs / "training_log.csv").open()))) == 1
    assert (models / "model.pt").is_file() and not list(models.glob(LOCK_NAME))


def test_two_trainings_into_one_folder_one_is_refused(tmp_path, bundle_dirs, child_env):
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.yaml"]
    command += ["--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "runs"), "--epochs", "1", *SHORT]
    runs = [
        subprocess.Popen(command, cwd=bundle_dirs["3d"], env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    results = [(run.pid, *[stream.decode() for stream in run.communicate(timeout=600)], run.returncode) for run in runs]
    codes = sorted(code for *_, code in results)
    assert codes == [0, 1], [stderr[-2000:] for _, _, stderr, _ in results]
    (winner, *_), (_, loser_out, loser_err, _) = sorted(results, key=lambda result: result[3])
    lines = [line for line in loser_err.splitlines() if line.startswith("unet-med: ")]
    assert len(lines) == 1 and "Traceback" not in loser_err + loser_out
    assert f"{LOCK_NAME}: another training (pid {winner} on " in lines[0]
    assert load_checkpoint(tmp_path / "models" / "checkpoint_latest.pt")["trainer"]["iteration"] == 2
    assert not list(tmp_path.rglob(LOCK_NAME)), "the winner released its locks"


# Runs the bundle's training in this child process and SIGKILLs it in the middle of writing the training state of
# epoch 2 (after its validation, its training-log row and, if it was better, its model.pt).
KILL_IN_SECOND_STATE_WRITE = """
import ast, os, signal, sys
from monai.bundle import run

def value(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text

writes = {"state": 0, "records": 0}
def profile(frame, event, arg):
    if event == "call" and frame.f_code.co_name == "save_checkpoint":
        writes["state"] += str(frame.f_locals.get("path", "")).endswith("checkpoint_latest.pt")
    if event == "c_call" and arg.__name__ == "write_record" and writes["state"] == 2:
        writes["records"] += 1
        if writes["records"] == 3:
            os.kill(os.getpid(), signal.SIGKILL)
sys.setprofile(profile)
run("training", config_file="configs/train.yaml", **{key: value(v) for key, v in zip(sys.argv[1::2], sys.argv[2::2])})
"""


def test_killed_while_writing_the_state_resume_keeps_the_best_model(tmp_path, bundle_dirs, child_env, bundle_cli):
    bundle, models, runs = bundle_dirs["3d"], tmp_path / "models", tmp_path / "runs"
    overrides = ["--ckpt_dir", str(models), "--output_dir", str(runs), "--epochs", "3", *SHORT]
    child = [sys.executable, "-c", textwrap.dedent(KILL_IN_SECOND_STATE_WRITE)]
    arguments = [arg if not arg.startswith("--") else arg[2:] for arg in overrides]
    killed = subprocess.run(
        [*child, *arguments], cwd=bundle, env=child_env, capture_output=True, text=True, timeout=600
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert len(list(models.glob(f"{PARTIAL_PREFIX}*checkpoint_latest.pt"))) == 1, "the kill was not mid-write"
    assert (models / LOCK_NAME).is_file(), "a killed run leaves its lock"
    state = load_checkpoint(models / "checkpoint_latest.pt")
    assert state["trainer"]["iteration"] == 2, "the state on disk is epoch 1's"
    rows = list(csv.DictReader((runs / "training_log.csv").open()))
    best_on_disk = max(float(row["val_mean_dice"]) for row in rows[:2])
    model_before = hashes(models)["model.pt"]

    result = bundle_cli(bundle, "configs/train.yaml", tmp_path, "runs", *SHORT, "--epochs", "3", "--resume", "true")
    assert "taking over the lock of pid" in result.stdout + result.stderr
    assert not list(models.glob(f"{PARTIAL_PREFIX}*")), "the killed write's partial file is cleaned up"
    score = next(line for line in result.stdout.splitlines() if "the model to beat" in line)
    assert f"scores {best_on_disk:.4f} " in score, (score, rows)
    after = list(csv.DictReader((runs / "training_log.csv").open()))
    later_best = max(float(row["val_mean_dice"]) for row in after[1:])
    if hashes(models)["model.pt"] != model_before:
        assert later_best > best_on_disk - 1e-4, "model.pt was replaced by a worse model"
