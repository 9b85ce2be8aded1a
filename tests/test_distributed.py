"""The multi-GPU configs: a real torchrun training of the 3D bundle on two CPU processes (gloo), and every
multi-GPU config of both bundles built in a one-process group."""

from __future__ import annotations

import csv
import json
import socket
import sys
from pathlib import Path

import pytest
import torch
import yaml
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.data import DistributedSampler
from monai.handlers import CheckpointLoader, CheckpointSaver, StatsHandler, TensorBoardStatsHandler
from test_bundles import BUNDLES, ROOT, bundle_cli
from torch.nn.parallel import DistributedDataParallel

from unet_med.bundle import distributed
from unet_med.bundle.datalists import train_val_datalists
from unet_med.bundle.handlers import TrainingReport
from unet_med.networks import UNet

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
def distributed_run(tmp_path_factory) -> tuple[Path, str]:
    """Train the 3D bundle for one epoch with torchrun, two processes on the CPU: (output folder, stdout)."""
    out = tmp_path_factory.mktemp("distributed")
    (out / "cases").mkdir()
    case_log = out / "case_log.yaml"
    case_log.write_text(CASE_LOG.format(folder=out / "cases"))
    config, one_epoch = TRAIN.format(case_log=case_log), ("--epochs", "1", "--val_interval", "1")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CUDA_VISIBLE_DEVICES", "")  # the CPU and gloo, whatever the machine
        result = bundle_cli(BUNDLES["3d"], config, out, "runs", *one_epoch, launcher=TORCHRUN)
    return out, result.stdout


def logged_cases(out: Path, engine: str, rank: int) -> list[str]:
    return (out / "cases" / f"{engine}{rank}.txt").read_text().split()


def test_ranks_train_on_halves_and_validate_their_own_cases(distributed_run):
    out, _ = distributed_run
    datalists = train_val_datalists(ROOT / "data_samples")
    for engine, section in (("SupervisedTrainer", "training"), ("SupervisedEvaluator", "validation")):
        rank0, rank1 = (set(logged_cases(out, engine, rank)) for rank in (0, 1))
        assert rank0 and rank1 and rank0.isdisjoint(rank1)
        assert len(rank0) == len(rank1)
        assert rank0 | rank1 == {item["image"] for item in datalists[section]}


def test_rank_zero_alone_writes_checkpoint_events_and_logs(distributed_run):
    out, stdout = distributed_run
    assert sorted(path.name for path in (out / "models").iterdir()) == ["checkpoint_latest.pt", "model.pt"]
    network_def = yaml.safe_load((BUNDLES["3d"] / "configs" / "train.yaml").read_text())["network_def"]
    kwargs = {k: v for k, v in network_def.items() if k != "_target_"} | {"out_channels": 3}
    UNet(**kwargs).load_state_dict(torch.load(out / "models" / "model.pt", weights_only=True))
    events = list((out / "runs").glob("events.out.tfevents.*"))
    assert events and len({path.name.rsplit(".", 2)[1] for path in events}) == 1  # one process id
    assert stdout.count("Key metric: val_mean_dice best value") == 1
    assert len(list(csv.DictReader((out / "runs" / "training_log.csv").open()))) == 1


def test_distributed_validation_equals_single_process_evaluation(distributed_run, monkeypatch):
    out, _ = distributed_run
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    bundle_cli(BUNDLES["3d"], "['configs/train.yaml','configs/evaluate.yaml']", out, "eval")
    reported = float(next(csv.DictReader((out / "runs" / "training_log.csv").open()))["val_mean_dice"])
    evaluated = {row[0]: row[1] for row in csv.reader((out / "eval" / "metrics.csv").open())}
    assert float(evaluated["val_mean_dice"]) == pytest.approx(reported, abs=1e-5)
    # the two cases differ, so the metric of one rank's case alone would not pass
    per_case = [float(row["mean"]) for row in csv.DictReader((out / "eval" / "val_mean_dice_raw.csv").open())]
    assert len(per_case) == 2 and min(abs(dice - reported) for dice in per_case) > 1e-3


@pytest.fixture
def one_process_group(monkeypatch):
    """The environment torchrun gives a single process; the group is left at the end whatever happens."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield
    distributed.destroy_process_group()


def monailabel_train_config(bundle: Path, folder: Path) -> Path:
    """train.yaml as MONAI Label's multi-GPU training exports it: a CheckpointLoader put first in train#handlers."""
    parser = ConfigParser()
    parser.read_config(bundle / "configs" / "train.yaml")
    loader = {"_target_": "CheckpointLoader", "load_path": "model.pt", "load_dict": {"model": "$@network"}}
    parser["train#handlers"] = [loader, *parser["train#handlers"]]
    parser["bundle_root"] = str(bundle)
    path = folder / "monailabel_train.json"
    path.write_text(json.dumps(parser.get()))
    return path


@pytest.mark.parametrize("name", sorted(BUNDLES))
@pytest.mark.parametrize("kind", ["train", "evaluate", "monailabel"])
def test_multi_gpu_configs_build(name, kind, one_process_group, tmp_path):
    configs = BUNDLES[name] / "configs"
    files = {
        "train": [configs / "train.yaml", configs / "multi_gpu_train.yaml"],
        "evaluate": [configs / "train.yaml", configs / "evaluate.yaml", configs / "multi_gpu_evaluate.yaml"],
        "monailabel": [monailabel_train_config(BUNDLES[name], tmp_path), configs / "multi_gpu_train.yaml"],
    }[kind]
    workflow = ConfigWorkflow(
        config_file=[str(file) for file in files],
        workflow_type="train",
        bundle_root=str(BUNDLES[name]),
        ckpt_dir=str(tmp_path / "models"),
        output_dir=str(tmp_path / "runs"),
        cache_rate=0.0,
    )
    workflow.initialize()  # joins the group and builds the engines
    try:
        evaluator = workflow.parser.get_parsed_content("validate#evaluator")
        assert isinstance(evaluator.data_loader.sampler, DistributedSampler)
        if kind == "evaluate":
            return
        trainer = workflow.parser.get_parsed_content("train#trainer")
        assert isinstance(trainer.data_loader.sampler, DistributedSampler)
        assert isinstance(trainer.network, DistributedDataParallel)
        handlers = [type(h) for h in workflow.parser.get_parsed_content("train#handlers")]
        handlers += [type(h) for h in workflow.parser.get_parsed_content("validate#handlers")]
        expected = {StatsHandler, TensorBoardStatsHandler, TrainingReport, CheckpointSaver}
        assert all(any(issubclass(h, kind) for h in handlers) for kind in expected)  # rank 0 keeps them
        assert (CheckpointLoader in handlers) == (kind == "monailabel")
    finally:
        workflow.finalize()


def test_rank_zero_only_refuses_handlers_every_rank_needs():
    for target in ("LrScheduleHandler", "ValidationHandler", "CheckpointLoader", "no.such.Handler"):
        with pytest.raises(ValueError, match="update the positions"):
            distributed.rank_zero_only(target)


def test_local_device_needs_torchrun(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(ValueError, match="torchrun"):
        distributed.local_device()
    monkeypatch.setenv("LOCAL_RANK", "1")
    if torch.cuda.device_count() == 1:
        with pytest.raises(ValueError, match="one process per GPU"):
            distributed.local_device()
    else:
        expected = torch.device("cuda", 1) if torch.cuda.is_available() else torch.device("cpu")
        assert distributed.local_device() == expected
