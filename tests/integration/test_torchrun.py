"""A real torchrun training of the 3D bundle on two CPU processes (gloo): data split, rank-0 outputs, metrics."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch
import yaml

from unet_med.bundle.datalists import train_val_datalists
from unet_med.networks import UNet

pytestmark = pytest.mark.torchrun

TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
TRAIN = "['configs/train.yaml','configs/multi_gpu_train.yaml','{case_log}']"

# Merged last, for the test only: every engine of every rank appends the image file of each item of each batch
# it ran (the batch is decollated by then) to <folder>/<engine class><rank>.txt.
CASE_LOG = """
case_log: "$lambda engine: open('{folder}/' + type(engine).__name__ + str(torch.distributed.get_rank()) + '.txt', 'a')\\
  .write(''.join(item['image'].meta['filename_or_obj'] + chr(10) for item in engine.state.batch))"
+initialize:
- $from ignite.engine import Events
- $@train#trainer.add_event_handler(Events.ITERATION_COMPLETED, @case_log)
- $@validate#evaluator.add_event_handler(Events.ITERATION_COMPLETED, @case_log)
"""


@pytest.fixture(scope="module")
def distributed_run(tmp_path_factory, bundle_dirs, bundle_cli) -> tuple[Path, str]:
    """Train the 3D bundle for one epoch with torchrun, two processes on the CPU: (output folder, stdout)."""
    out = tmp_path_factory.mktemp("distributed")
    (out / "cases").mkdir()
    case_log = out / "case_log.yaml"
    case_log.write_text(CASE_LOG.format(folder=out / "cases"))
    config, one_epoch = TRAIN.format(case_log=case_log), ("--epochs", "1", "--val_interval", "1")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CUDA_VISIBLE_DEVICES", "")  # the CPU and gloo, whatever the machine
        result = bundle_cli(bundle_dirs["3d"], config, out, "runs", *one_epoch, launcher=TORCHRUN)
    return out, result.stdout


def logged_cases(out: Path, engine: str, rank: int) -> list[str]:
    return (out / "cases" / f"{engine}{rank}.txt").read_text().split()


def test_ranks_train_on_halves_and_validate_their_own_cases(distributed_run, samples):
    out, _ = distributed_run
    datalists = train_val_datalists(samples)
    for engine, section in (("SupervisedTrainer", "training"), ("SupervisedEvaluator", "validation")):
        rank0, rank1 = (set(logged_cases(out, engine, rank)) for rank in (0, 1))
        assert rank0 and rank1 and rank0.isdisjoint(rank1)
        assert len(rank0) == len(rank1)
        assert rank0 | rank1 == {item["image"] for item in datalists[section]}


def test_rank_zero_alone_writes_checkpoint_events_and_logs(distributed_run, bundle_dirs):
    out, stdout = distributed_run
    names = ["checkpoint_latest.pt", "fingerprint.json", "model.pt", "plan.yaml"]
    assert sorted(path.name for path in (out / "models").iterdir()) == names
    plan = yaml.safe_load((out / "models" / "plan.yaml").read_text())
    checkpoint = torch.load(out / "models" / "model.pt", weights_only=True)
    assert checkpoint["plan"] == plan
    network = plan["network"]
    UNet(3, plan["in_channels"], plan["num_classes"], features=network["features"], strides=network["strides"],
         kernel_size=network["kernel_size"], norm=("instance", {"affine": True})).load_state_dict(checkpoint["model"])
    events = list((out / "runs").glob("events.out.tfevents.*"))
    assert events and len({path.name.rsplit(".", 2)[1] for path in events}) == 1  # one process id
    assert stdout.count("epoch 1/1  loss") == 1 and stdout.count("training finished") == 1  # rank 0 alone reports
    assert len(list(csv.DictReader((out / "runs" / "training_log.csv").open()))) == 1


def test_distributed_validation_equals_single_process_evaluation(distributed_run, monkeypatch, bundle_dirs, bundle_cli):
    out, _ = distributed_run
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    bundle_cli(bundle_dirs["3d"], "['configs/train.yaml','configs/evaluate.yaml']", out, "eval")
    reported = float(next(csv.DictReader((out / "runs" / "training_log.csv").open()))["val_mean_dice"])
    evaluated = {row["statistic"]: row for row in csv.DictReader((out / "eval" / "metrics.csv").open())}
    assert float(evaluated["mean"]["mean"]) == pytest.approx(reported, abs=1e-5)
    # the two cases differ, so the metric of one rank's case alone would not pass
    per_case = [float(row["mean"]) for row in csv.DictReader((out / "eval" / "dice_per_case.csv").open())]
    assert len(per_case) == 2 and min(abs(dice - reported) for dice in per_case) > 1e-3
