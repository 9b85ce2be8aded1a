"""Interrupted training: SIGKILL a real bundle run mid-epoch, resume it, and find it where it was saved."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from copy import deepcopy
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow

from unet_med.bundle.io import load_checkpoint
from unet_med.bundle.lock import LOCK_NAME, release

pytestmark = pytest.mark.faults

# Two training cases, one per iteration (two iterations an epoch), one validation case checked every epoch.
OVERRIDES = {
    "val_interval": 1,
    "num_samples": 1,
    "batch_size": 1,
    "num_val": 1,
    "train#dataset#data": "$@datalists['training'][:2]",
}


def read_log(runs: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((runs / "training_log.csv").open()))


def kill_during_second_epoch(bundle: Path, env: dict[str, str], models: Path, runs: Path) -> list[str]:
    """Train 6 epochs in a ``python -m monai.bundle run`` process; SIGKILL it in epoch 2; return its output."""
    overrides = {"ckpt_dir": models, "output_dir": runs, "epochs": 6, **OVERRIDES}
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.yaml"]
    command += [arg for key, value in overrides.items() for arg in (f"--{key}", str(value))]
    output = []
    with subprocess.Popen(
        command, cwd=bundle, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        for line in process.stdout:
            output.append(line)
            if "Epoch: 2/6, Iter: 1/2" in line:  # epoch 1 is saved, epoch 2 half done
                break
        saved = (models / "checkpoint_latest.pt").is_file()
        process.send_signal(signal.SIGKILL)
    assert saved, "".join(output[-40:])
    assert process.returncode == -signal.SIGKILL
    return output


def test_training_killed_mid_epoch_resumes_from_its_checkpoint(tmp_path, bundle_dirs, child_env):
    bundle, models, runs = bundle_dirs["3d"], tmp_path / "models", tmp_path / "runs"
    kill_during_second_epoch(bundle, child_env, models, runs)
    saved = load_checkpoint(models / "checkpoint_latest.pt")
    assert (models / LOCK_NAME).is_file(), "the killed run leaves its lock"
    epoch = saved["trainer"]["iteration"] // saved["trainer"]["epoch_length"]
    assert epoch >= 1 and saved["lr_scheduler"]["last_epoch"] == epoch
    log_before = read_log(runs)[:epoch]
    assert [int(row["epoch"]) for row in log_before] == list(range(1, epoch + 1))

    # --resume true, one more epoch: the same override a user passes on the command line.
    workflow = ConfigWorkflow(
        config_file=str(bundle / "configs" / "train.yaml"),
        workflow_type="train",
        bundle_root=str(bundle),
        **{"ckpt_dir": str(models), "output_dir": str(runs), "epochs": epoch + 1, "resume": "true", **OVERRIDES},
    )
    workflow.initialize()
    parsed = workflow.parser.get_parsed_content
    trainer, network, optimizer = parsed("train#trainer"), parsed("network"), parsed("optimizer")
    start = {}

    def record_start(engine):  # runs after the bundle's resume loader, the first of its handlers
        start.update(epoch=engine.state.epoch, iteration=engine.state.iteration)
        start.update(weights=deepcopy(network.state_dict()), optimizer=deepcopy(optimizer.state_dict()))
        start.update(lr_epoch=parsed("lr_scheduler").last_epoch, best=parsed("validate#evaluator").state.best_metric)

    trainer.add_event_handler(Events.STARTED, record_start)
    workflow.run()

    assert (start["epoch"], start["iteration"]) == (epoch, saved["trainer"]["iteration"])
    assert all(torch.equal(start["weights"][key], value) for key, value in saved["model"].items())
    for moment in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(start["optimizer"]["state"][0][moment], saved["optimizer"]["state"][0][moment])
    assert start["lr_epoch"] == saved["lr_scheduler"]["last_epoch"]
    # model.pt is scored again before the first epoch: the same model on the same case gives the same record
    assert start["best"] == pytest.approx(saved["best_model_saver"]["best_metric"], abs=1e-6) and start["best"] > 0
    assert trainer.state.epoch == epoch + 1
    assert load_checkpoint(models / "checkpoint_latest.pt")["trainer"]["iteration"] == 2 * (epoch + 1)
    log_after = read_log(runs)
    assert log_after[:epoch] == log_before and [int(row["epoch"]) for row in log_after] == list(range(1, epoch + 2))
    assert load_checkpoint(models / "model.pt")["model"].keys() == network.state_dict().keys()
    assert json.loads((models / LOCK_NAME).read_text())["pid"] == os.getpid(), "the stale lock is taken over"
    release()
    assert not (models / LOCK_NAME).exists()
