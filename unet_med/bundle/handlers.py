"""The ignite handlers the bundles attach to MONAI's engines: checkpoints that survive a kill.

- :class:`AtomicCheckpointSaver` is MONAI's ``CheckpointSaver`` with atomic files; the bundles save the best
  model (``models/model.pt``, a plain ``state_dict``) with it.
- :class:`TrainingStateSaver` writes the whole training state (network, optimizer, scheduler, trainer epoch
  and iteration, best metric) to one file after every epoch; :class:`WeightsOnlyCheckpointLoader` resumes
  from it, or loads any checkpoint, through MONAI's ``CheckpointLoader``; files are read with
  :func:`unet_med.bundle.io.load_checkpoint` (weights only).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from ignite import distributed as idist
from ignite.engine import Events
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.handlers import CheckpointLoader, CheckpointSaver

from unet_med.bundle.io import CheckpointError, load_checkpoint, one_line, save_checkpoint

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = [
    "AtomicCheckpointSaver",
    "AtomicDiskSaver",
    "TrainingStateSaver",
    "WeightsOnlyCheckpointLoader",
]


class AtomicDiskSaver(BaseSaveHandler):
    """An ignite save handler that writes each file atomically and deletes a superseded file only afterwards.

    ignite's ``Checkpoint`` asks its handler to remove the file it replaces before writing the new one, and
    MONAI's ``CheckpointSaver`` writes in place: a process killed in between loses the previous file too.
    Here removals wait until the next file is complete, and a file rewritten under the same name is simply
    replaced.

    Args:
        dirname: the folder; created at the first save when missing.
        filename: a fixed file name for every save (as MONAI's ``key_metric_filename``), or ``None`` for the
            names ignite chooses.
    """

    def __init__(self, dirname: str | os.PathLike, filename: str | None = None) -> None:
        self.dirname = Path(dirname)
        self.filename = filename
        self._superseded: list[Path] = []

    def _path(self, filename: str) -> Path:
        return self.dirname / (self.filename or filename)

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        """Write ``checkpoint`` (on rank 0 only), then delete the files it supersedes."""
        if idist.get_rank() != 0:
            return
        path = self._path(filename)
        save_checkpoint(checkpoint, path)
        for old in self._superseded:
            if old != path:
                old.unlink(missing_ok=True)
        self._superseded = []

    def remove(self, filename: str) -> None:
        """Mark ``filename`` for deletion once the next checkpoint is written."""
        self._superseded.append(self._path(filename))


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` whose files are written atomically, with a state to resume from.

    It takes the same arguments as ``monai.handlers.CheckpointSaver`` and writes the same files, through
    :class:`AtomicDiskSaver`: a process killed while saving leaves the previous file intact. Its
    :meth:`state_dict` holds the best key-metric values saved so far and the engine's best metric, so that a
    resumed run (see :class:`TrainingStateSaver`) replaces ``model.pt`` only with a better model.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._engine: Engine | None = None
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                handler = checkpoint.save_handler
                checkpoint.save_handler = AtomicDiskSaver(handler.dirname, getattr(handler, "filename", None))

    def attach(self, engine: Engine) -> None:
        """Save from ``engine``'s events, as MONAI's saver does, and remember it for the best metric."""
        self._engine = engine
        super().attach(engine)

    def state_dict(self) -> dict[str, Any]:
        """The saved key-metric scores and files (ignite's record), and the engine's best metric and its epoch."""
        record = self._key_metric_checkpoint.state_dict() if self._key_metric_checkpoint is not None else {}
        state = getattr(self._engine, "state", None)
        return {
            **record,
            "best_metric": getattr(state, "best_metric", -1),
            "best_metric_epoch": getattr(state, "best_metric_epoch", -1),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore what :meth:`state_dict` returned."""
        super().load_state_dict(state_dict)
        if self._engine is not None:
            self._engine.state.best_metric = state_dict["best_metric"]
            self._engine.state.best_metric_epoch = state_dict["best_metric_epoch"]


def _unwrapped(obj: Any) -> Any:
    """The module inside a ``DataParallel``/``DistributedDataParallel`` wrapper, or ``obj``."""
    parallel = (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)
    return obj.module if isinstance(obj, parallel) else obj


class TrainingStateSaver:
    """Ignite handler that saves everything a resumed training needs to one file, atomically, every epoch.

    The file holds ``{key: obj.state_dict()}`` for every entry of ``save_dict`` (network, optimizer, learning
    rate scheduler, the best-model saver, ...) and, under ``engine_key``, the state of the engine it is
    attached to (epoch length, iteration, hence the epoch). The engine is taken from the event rather than from
    ``save_dict`` because a bundle config cannot list a trainer in its own handlers. It is written on rank 0
    only, through :func:`save_checkpoint`, so the last complete state survives a kill at any moment. Resume
    with :class:`WeightsOnlyCheckpointLoader` given the same ``save_dict`` as ``load_dict`` and ``engine_key``.

    Args:
        save_path: the file, e.g. ``models/checkpoint_latest.pt``.
        save_dict: objects with ``state_dict()`` to save, by key.
        engine_key: key of the engine's state.
        interval: save every ``interval`` epochs.
    """

    def __init__(
        self, save_path: str | os.PathLike, save_dict: Mapping[str, Any], engine_key: str = "trainer", interval: int = 1
    ) -> None:
        if engine_key in save_dict:
            raise ValueError(f"engine_key '{engine_key}' is also a key of save_dict: choose another.")
        self.save_path = Path(save_path)
        self.save_dict = dict(save_dict)
        self.engine_key = engine_key
        self.interval = interval

    def attach(self, engine: Engine) -> None:
        """Save after every ``interval`` epochs of ``engine``."""
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    def __call__(self, engine: Engine) -> None:
        """Write the state of ``engine`` and of every object of ``save_dict``."""
        if idist.get_rank() != 0:
            return
        state = {key: _unwrapped(obj).state_dict() for key, obj in self.save_dict.items()}
        state[self.engine_key] = engine.state_dict()
        save_checkpoint(state, self.save_path)
        engine.logger.info(f"Saved the training state of epoch {engine.state.epoch} to {self.save_path}")


class WeightsOnlyCheckpointLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` that reads files only through :func:`load_checkpoint`.

    It takes MONAI's arguments, and loads on the engine's ``STARTED`` event as MONAI's does. Before MONAI reads
    the file, :func:`load_checkpoint` reads it with ``weights_only=True``, whatever the MONAI version, so a
    file that needs arbitrary pickled objects is refused, and a missing or broken file raises a
    :class:`CheckpointError` naming it. So does a checkpoint that does not fit its objects (another network).

    Args:
        load_path: the checkpoint file.
        load_dict: objects to load into, by key (a file that is a bare ``state_dict`` fits a single object).
        engine_key: if given, the engine this handler is attached to is loaded too, from this key (as saved
            by :class:`TrainingStateSaver`): the epoch and iteration continue from the checkpoint's.
        kwargs: ``map_location``, ``strict``, ... as for ``monai.handlers.CheckpointLoader``.
    """

    def __init__(
        self, load_path: str | os.PathLike, load_dict: dict, engine_key: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(str(load_path), load_dict, **kwargs)
        self.engine_key = engine_key

    def attach(self, engine: Engine) -> None:
        """Load into ``engine``'s objects (and ``engine`` itself with ``engine_key``) when it starts."""
        if self.engine_key is not None:
            self.load_dict = {**self.load_dict, self.engine_key: engine}
        super().attach(engine)

    def __call__(self, engine: Engine) -> None:
        """Check the file with ``weights_only=True``, then load it as MONAI's ``CheckpointLoader`` does."""
        load_checkpoint(self.load_path, map_location="cpu")
        try:
            super().__call__(engine)
        except (RuntimeError, KeyError, ValueError) as err:
            raise CheckpointError(
                f"{self.load_path} does not fit the objects it is loaded into ({', '.join(self.load_dict)}): "
                f"{one_line(err)}"
            ) from None
