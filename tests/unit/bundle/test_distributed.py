"""The multi-GPU configs of both bundles built in a one-process group, and the helpers they call."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.data import DistributedSampler
from monai.handlers import CheckpointLoader, CheckpointSaver, TensorBoardStatsHandler
from torch.nn.parallel import DistributedDataParallel

from unet_med.bundle import distributed
from unet_med.bundle.report import EvaluationReport, ScanReport, TrainingReport


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


@pytest.mark.parametrize("name", ["2d", "3d"])
@pytest.mark.parametrize("kind", ["train", "evaluate", "monailabel"])
def test_multi_gpu_configs_build(name, kind, one_process_group, tmp_path, bundle_dirs, planned_models):
    configs = bundle_dirs[name] / "configs"
    shutil.copytree(planned_models[name], tmp_path / "models")  # the plan, and a model to evaluate
    files = {
        "train": [configs / "train.yaml", configs / "multi_gpu_train.yaml"],
        "evaluate": [configs / "train.yaml", configs / "evaluate.yaml", configs / "multi_gpu_evaluate.yaml"],
        "monailabel": [monailabel_train_config(bundle_dirs[name], tmp_path), configs / "multi_gpu_train.yaml"],
    }[kind]
    workflow = ConfigWorkflow(
        config_file=[str(file) for file in files],
        workflow_type="train",
        bundle_root=str(bundle_dirs[name]),
        ckpt_dir=str(tmp_path / "models"),
        output_dir=str(tmp_path / "runs"),
        cache_rate=0.0,
    )
    workflow.initialize()  # joins the group and builds the engines
    try:
        evaluator = workflow.parser.get_parsed_content("validate#evaluator")
        assert isinstance(evaluator.data_loader.sampler, DistributedSampler)
        if kind == "evaluate":
            handlers = [type(h) for h in workflow.parser.get_parsed_content("validate#handlers")]
            assert ScanReport in handlers and EvaluationReport in handlers  # rank 0 keeps them
            return
        trainer = workflow.parser.get_parsed_content("train#trainer")
        assert isinstance(trainer.data_loader.sampler, DistributedSampler)
        assert isinstance(trainer.network, DistributedDataParallel)
        handlers = [type(h) for h in workflow.parser.get_parsed_content("train#handlers")]
        handlers += [type(h) for h in workflow.parser.get_parsed_content("validate#handlers")]
        expected = {TensorBoardStatsHandler, TrainingReport, CheckpointSaver}
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
