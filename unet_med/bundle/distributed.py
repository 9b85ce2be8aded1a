"""Pieces of the bundles' multi-GPU configs: this process's device, the process group and rank-0-only handlers.

``torchrun`` starts one process per GPU (or per share of a CPU) and sets ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE`` in each; the bundles' ``configs/multi_gpu_train.yaml`` and ``configs/multi_gpu_evaluate.yaml``
call these functions, for example ``device: $unet_med.bundle.distributed.local_device()``. The distributed engine is
PyTorch's (``torch.distributed`` and ``DistributedDataParallel``); these functions only set it up for MONAI's
engines.
"""

from __future__ import annotations

import functools
import logging
import os
import pydoc
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from ignite import distributed as idist
from monai.bundle import ConfigComponent
from monai.handlers import CheckpointSaver, StatsHandler, TensorBoardHandler

from unet_med.bundle.report import ScanReport, TrainingReport

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = [
    "RANK_ZERO_HANDLERS",
    "destroy_process_group",
    "init_process_group",
    "local_device",
    "log_on_rank_zero",
    "rank_zero_only",
]

RANK_ZERO_HANDLERS = (StatsHandler, TensorBoardHandler, CheckpointSaver, TrainingReport, ScanReport)
"""Handlers that print or write files: one copy, on rank 0, is enough."""


def local_device() -> torch.device:
    """This process's device under ``torchrun``: ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU.

    Raises:
        ValueError: if ``LOCAL_RANK`` is unset (the process was not started by ``torchrun``) or names a GPU
            that is not visible.
    """
    local_rank = os.environ.get("LOCAL_RANK")
    if local_rank is None:
        raise ValueError(
            "LOCAL_RANK is not set: start the multi-GPU configs with torchrun, e.g. "
            "torchrun --standalone --nproc_per_node=2 -m monai.bundle run --config_file ..."
        )
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if int(local_rank) >= torch.cuda.device_count():
        raise ValueError(
            f"LOCAL_RANK is {local_rank}, but this node shows {torch.cuda.device_count()} GPU(s): start at most "
            "one process per GPU (--nproc_per_node)."
        )
    return torch.device("cuda", int(local_rank))


def init_process_group(device: torch.device) -> None:
    """Join the process group that ``torchrun`` describes in the environment, unless joined already.

    Ignite, which runs MONAI's engines, learns of the group here too, on every rank at once: it does so with
    collective calls, which would wait forever if one rank made them lazily while another did not.

    Args:
        device: this process's device; a CUDA device selects the NCCL backend and becomes the current CUDA
            device, any other device selects gloo.
    """
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group(backend="nccl", device_id=device)
        else:
            dist.init_process_group(backend="gloo")
    idist.sync()


def destroy_process_group() -> None:
    """Leave the process group, if this process is in one."""
    if dist.is_initialized():
        dist.destroy_process_group()
    idist.sync()


@functools.cache
def _handler_class(target: str) -> type | None:
    """The class a bundle config's ``_target_`` names, found the way MONAI's config parser finds it."""
    located = pydoc.locate(ConfigComponent({"_target_": target}).resolve_module_name())
    return located if isinstance(located, type) else None


def rank_zero_only(target: str) -> bool:
    """A ``_disabled_`` value for a handler that prints or writes files: built on rank 0, skipped elsewhere.

    The multi-GPU configs switch handlers off by their position in ``train.yaml``'s lists, since a handler must
    not even be built on the other ranks (a TensorBoard handler opens its event file when it is built). This
    check makes a position that holds another handler, one that every rank needs (learning rate schedule,
    validation, checkpoint loading), fail instead of being silently skipped on some ranks.

    Args:
        target: the handler's ``_target_``, e.g. ``"TensorBoardStatsHandler"`` or
            ``"unet_med.bundle.report.TrainingReport"``.

    Returns:
        ``True`` (skip it) on ranks other than 0, ``False`` on rank 0.

    Raises:
        ValueError: if ``target`` is not one of :data:`RANK_ZERO_HANDLERS` or their subclasses.
    """
    handler_class = _handler_class(target)
    if handler_class is None or not issubclass(handler_class, RANK_ZERO_HANDLERS):
        names = ", ".join(kind.__name__ for kind in RANK_ZERO_HANDLERS)
        raise ValueError(
            f"the multi-GPU config runs the handler {target} on rank 0 only, but only handlers that print or "
            f"write files ({names}) may run there alone: the handler lists of train.yaml have changed, so "
            "update the positions in the multi-GPU config's '_disabled_' lines."
        )
    return dist.get_rank() > 0


def log_on_rank_zero(*engines: Engine) -> None:
    """Keep the engines' progress messages to rank 0: the other ranks log warnings and errors only.

    Args:
        engines: MONAI workflows (ignite engines), e.g. the trainer and the evaluator.
    """
    if dist.get_rank() > 0:
        for engine in engines:
            engine.logger.setLevel(logging.WARNING)
