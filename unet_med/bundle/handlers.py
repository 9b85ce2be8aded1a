"""The ignite handlers the bundles attach to MONAI's engines: checkpoints that survive a kill and guard the model.

- :class:`AtomicCheckpointSaver` is MONAI's ``CheckpointSaver`` with atomic files; the bundles save the best
  model with it (``models/model.pt``: ``{"model": state_dict, "plan": the plan it was trained with}``).
- :class:`DivergenceGuard` stops a training whose loss or weights stop being finite numbers, naming the epoch and
  iteration, before anything of that epoch is validated or saved; the savers refuse non-finite weights too.
- :class:`FinitePredictionGuard` stops inference, naming the scan, before a NaN or Inf prediction is written.
- :class:`TrainingStateSaver` writes the whole training state (network, optimizer, scheduler, trainer epoch
  and iteration, best metric) to one file after every epoch; :class:`WeightsOnlyCheckpointLoader` resumes
  from it, or loads any checkpoint, through MONAI's ``CheckpointLoader``; files are read with
  :func:`unet_med.bundle.io.load_checkpoint` (weights only).
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from ignite import distributed as idist
from ignite.engine import Events
from ignite.handlers import Checkpoint
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.engines.utils import IterationEvents
from monai.handlers import CheckpointLoader, CheckpointSaver
from monai.networks.utils import copy_model_state
from torch.optim.lr_scheduler import PolynomialLR

from unet_med.bundle.errors import BundleError
from unet_med.bundle.flags import as_bool
from unet_med.bundle.io import (
    CheckpointError,
    load_checkpoint,
    move_aside,
    one_line,
    save_checkpoint,
)

if TYPE_CHECKING:
    from ignite.engine import Engine
    from monai.engines import Workflow

__all__ = [
    "AtomicCheckpointSaver",
    "AtomicDiskSaver",
    "BestModelGuard",
    "DivergenceGuard",
    "FinitePredictionGuard",
    "TrainingStateSaver",
    "WeightsOnlyCheckpointLoader",
]


def non_finite_tensor(state: Any, prefix: str = "") -> str | None:
    """The name of the first floating-point tensor of ``state`` (nested dicts, lists) with NaN or Inf, or ``None``."""
    if isinstance(state, torch.Tensor):
        return prefix if state.is_floating_point() and not bool(torch.isfinite(state).all()) else None
    if isinstance(state, Mapping):
        items = state.items()
    else:
        items = enumerate(state) if isinstance(state, (list, tuple)) else ()
    for key, value in items:
        found = non_finite_tensor(value, f"{prefix}.{key}" if prefix else str(key))
        if found is not None:
            return found
    return None


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
        """Write ``checkpoint`` (on rank 0 only), then delete the files it supersedes.

        Raises:
            BundleError: naming the file and the tensor, if a tensor holds NaN or Inf: such weights are never saved.
        """
        if idist.get_rank() != 0:
            return
        path = self._path(filename)
        broken = non_finite_tensor(checkpoint)
        if broken is not None:
            raise BundleError(
                f"{path}: not saved: {broken} holds NaN or Inf values; the training diverged "
                "(a smaller --learning_rate may help)."
            )
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
        self._paused = False
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                handler = checkpoint.save_handler
                checkpoint.save_handler = AtomicDiskSaver(handler.dirname, getattr(handler, "filename", None))

    def attach(self, engine: Engine) -> None:
        """Save from ``engine``'s events, as MONAI's saver does, and remember it for the best metric."""
        self._engine = engine
        super().attach(engine)

    def metrics_completed(self, engine: Engine) -> None:
        """Save the model if its key metric is the best so far, unless saving is paused (see :meth:`paused`)."""
        if not self._paused:
            super().metrics_completed(engine)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Within this block a validation only scores: the key-metric file is neither compared nor written."""
        self._paused = True
        try:
            yield
        finally:
            self._paused = False

    def state_dict(self) -> dict[str, Any]:
        """The saved key-metric scores and files (ignite's record), and the engine's best metric and its epoch."""
        record = self._key_metric_checkpoint.state_dict() if self._key_metric_checkpoint is not None else {}
        state = getattr(self._engine, "state", None)
        return {
            **record,
            "best_metric": getattr(state, "best_metric", -1),
            "best_metric_epoch": getattr(state, "best_metric_epoch", -1),
        }

    def set_best(self, score: float, epoch: int) -> None:
        """Record that the file on disk scored ``score`` (at ``epoch``): only a better model replaces it."""
        if self._key_metric_checkpoint is not None:
            filename = self._key_metric_checkpoint.save_handler.filename or "model.pt"
            record = self._key_metric_checkpoint.state_dict()  # {"_saved": [(priority, filename), ...]}
            self._key_metric_checkpoint.load_state_dict({key: [(score, filename)] for key in record})
        if self._engine is not None:
            self._engine.state.best_metric = score
            self._engine.state.best_metric_epoch = epoch

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


def non_finite_prediction(output: Mapping[str, Any]) -> str | None:
    """The scan whose raw prediction (a MONAI engine's output before post-processing) holds NaN or Inf, or ``None``.

    Returns:
        The scan's file name from the image's metadata (``"a case"`` without it), or ``None`` if every value is
        finite.
    """
    if bool(torch.isfinite(output["pred"]).all()):
        return None
    names = getattr(output.get("image"), "meta", {}).get("filename_or_obj", ["a case"])
    return str(names[0] if isinstance(names, (list, tuple)) else names)


class FinitePredictionGuard:
    """Evaluator handler: a prediction with NaN or Inf values stops the run, naming the scan, before it is written.

    ``argmax`` turns NaN logits into a mask of background (or of any class), which would be written as a
    plausible segmentation. Inference attaches it; scans that cannot be read or hold NaN or Inf are refused
    earlier (:func:`unet_med.bundle.dataset_check.check_images`), so this catches finite intensities that overflow
    float32 on their way through normalisation and the network, and models whose weights do.
    """

    def attach(self, engine: Engine) -> None:
        """Check each of ``engine``'s predictions after the forward pass, before post-processing writes it."""
        engine.add_event_handler(IterationEvents.FORWARD_COMPLETED, self)

    def __call__(self, engine: Workflow) -> None:
        """Raise a :class:`BundleError` naming the scan if ``engine``'s prediction holds NaN or Inf."""
        case = non_finite_prediction(engine.state.output)
        if case is not None:
            raise BundleError(
                f"{case}: the network's prediction holds NaN or Inf values, so no mask is written for it: its "
                "intensities overflow float32 on their way through the network (values near 1e38?), or the model's "
                "weights do."
            )


class DivergenceGuard:
    """Trainer handler: a loss or weights that are no longer finite numbers stop the training, in one line.

    A training diverges when its loss becomes NaN or Inf, or its weights do, or finite weights grown so large that
    the network's outputs overflow (an optimizer step can do either on an epoch's last iteration, whose loss was
    still finite). After every iteration the loss is checked; after every epoch, before the handlers attached
    after this one (validation, the model and state savers, the report), the network's weights are; and with a
    ``validator``, each validation prediction before it is post-processed and scored (argmax turns NaN logits
    into a plausible mask). A loss that stays finite can diverge too (``--learning_rate 1e4``: about 1e7 after
    the first steps, a network predicting one class everywhere): an epoch whose mean loss is more than
    ``growth`` times the run's first loss, that of the weights it started from, stops as well. The bundles' Dice
    + cross-entropy loss starts near 1 + ln(classes) from fresh weights, lower from trained ones, and only
    falls as a training learns; a mean over a hundred times that start means logits of the wrong class by a
    margin of about a hundred, which no training comes back from. Each stops the run with a
    :class:`BundleError` that names the epoch (and iteration), so that no model or training state of a diverged
    network is written.

    Under CUDA mixed precision (the engine's gradient scaler), a float16 overflow gives a non-finite loss whose
    step the scaler skips, leaving the weights as they were: there only an epoch without one finite loss stops.

    Args:
        network: the trained network (its parameters are checked).
        validator: the MONAI evaluator that validates it, or ``None``.
        growth: how many times the first loss an epoch's mean loss may reach.
    """

    def __init__(self, network: torch.nn.Module, validator: Workflow | None = None, growth: float = 100.0) -> None:
        self.network = network
        self.validator = validator
        self.growth = growth
        self._first_loss: float | None = None
        self._finite_losses = 0
        self._loss_sum = 0.0

    def attach(self, engine: Engine) -> None:
        """Check ``engine``'s loss after each iteration, the weights after each epoch, the validator's outputs."""
        engine.add_event_handler(Events.EPOCH_STARTED, self._new_epoch)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._check_loss)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._check_epoch)
        if self.validator is not None:
            self.validator.add_event_handler(IterationEvents.FORWARD_COMPLETED, self._check_prediction)

    def _new_epoch(self, engine: Engine) -> None:
        self._finite_losses, self._loss_sum = 0, 0.0

    @staticmethod
    def _where(engine: Engine) -> str:
        """``epoch E, iteration I of N`` (the iteration counted within the epoch)."""
        length = engine.state.epoch_length
        return f"epoch {engine.state.epoch}, iteration {(engine.state.iteration - 1) % length + 1} of {length}"

    def _check_loss(self, engine: Engine) -> None:
        output = engine.state.output  # MONAI's decollated batch repeats the loss in every item
        loss = float((output[0] if isinstance(output, list) else output)["loss"])
        if math.isfinite(loss):
            self._finite_losses += 1
            self._loss_sum += loss
            if self._first_loss is None:
                self._first_loss = loss
        elif getattr(engine, "scaler", None) is None:
            raise BundleError(
                f"training diverged at {self._where(engine)}: the loss is {loss}; nothing of this epoch was "
                "validated or saved (a smaller --learning_rate may help)."
            )

    def _check_epoch(self, engine: Engine) -> None:
        broken = non_finite_tensor(_unwrapped(self.network).state_dict())
        if broken is not None:
            raise BundleError(
                f"training diverged at {self._where(engine)}: after its optimizer step the network's {broken} "
                "holds NaN or Inf values; nothing of this epoch was validated or saved (a smaller --learning_rate "
                "may help)."
            )
        if self._finite_losses == 0:
            raise BundleError(
                f"training diverged in epoch {engine.state.epoch}: the loss of every iteration was NaN or Inf; "
                "nothing of this epoch was validated or saved (a smaller --learning_rate may help)."
            )
        mean = self._loss_sum / self._finite_losses
        if self._first_loss is not None and self._first_loss > 0 and mean > self.growth * self._first_loss:
            raise BundleError(
                f"training diverged in epoch {engine.state.epoch}: its mean loss {mean:.3g} is over {self.growth:g} "
                f"times the first loss of this run ({self._first_loss:.3g}); nothing of this epoch was validated or "
                "saved (a smaller --learning_rate may help)."
            )

    def _check_prediction(self, validator: Workflow) -> None:
        case = non_finite_prediction(validator.state.output)
        if case is not None:
            raise BundleError(
                f"training diverged by epoch {validator.state.epoch}: the network's prediction for {case} holds NaN "
                "or Inf values; nothing of this epoch was saved (a smaller --learning_rate may help)."
            )


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


def _stretch_polynomial_schedule(scheduler: PolynomialLR, total_iters: int) -> None:
    """Give ``scheduler`` the length ``total_iters`` and set its learning rates to where that schedule is now.

    ``PolynomialLR`` steps its rates recursively from the current ones, so a finished schedule stays at 0 whatever
    its new length: the rates are set from the closed form, ``base_lr * (1 - step / total_iters) ** power``.
    """
    scheduler.total_iters = total_iters
    remaining = 1.0 - min(scheduler.last_epoch, total_iters) / total_iters
    rates = [base_lr * remaining**scheduler.power for base_lr in scheduler.base_lrs]
    for group, rate in zip(scheduler.optimizer.param_groups, rates):
        group["lr"] = rate
    scheduler._last_lr = rates


class WeightsOnlyCheckpointLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` that reads its file once, through :func:`load_checkpoint`.

    It takes MONAI's arguments and loads on the engine's ``STARTED`` event as MONAI's does, from the file read
    with ``weights_only=True`` whatever the MONAI version: a file that holds code is refused, and a missing or
    broken file, or one that does not fit its objects (another network), raises a :class:`CheckpointError`
    naming it.

    Resuming a training (``engine_key``) with more epochs than the checkpoint's run had trains longer: the
    engine keeps its own ``max_epochs``, and a ``PolynomialLR`` in ``load_dict`` keeps the length it was built
    with (the bundles tie it to ``--epochs``), its rates set to where that longer schedule is, instead of the
    checkpoint's finished schedule at learning rate 0. Fewer epochs than already trained is refused.

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
        """Read the file once with ``weights_only=True`` and load every object of ``load_dict`` from it."""
        checkpoint = load_checkpoint(self.load_path, map_location=self.map_location)
        first = next(iter(self.load_dict))
        if len(self.load_dict) == 1 and not (isinstance(checkpoint, Mapping) and first in checkpoint):
            checkpoint = {first: checkpoint}
        if not self.strict_shape:
            checkpoint = {
                key: copy_model_state(obj, checkpoint, inplace=False)[0] if isinstance(obj, torch.nn.Module) else None
                for key, obj in self.load_dict.items()
            }
            self.load_dict = {key: obj for key, obj in self.load_dict.items() if checkpoint[key] is not None}
        max_epochs = engine.state.max_epochs
        schedules = {key: obj.total_iters for key, obj in self.load_dict.items() if isinstance(obj, PolynomialLR)}
        try:
            Checkpoint.load_objects(to_load=self.load_dict, checkpoint=checkpoint, strict=self.strict)
        except (RuntimeError, KeyError, ValueError, TypeError) as err:
            raise CheckpointError(
                f"{self.load_path} does not fit the objects it is loaded into ({', '.join(self.load_dict)}): "
                f"{one_line(err)}"
            ) from None
        if self.engine_key is not None and max_epochs is not None and engine.state.epoch > max_epochs:
            raise BundleError(
                f"--epochs {max_epochs}: {self.load_path} has already trained {engine.state.epoch} epochs; pass "
                f"--epochs {engine.state.epoch + 1} or more to train longer."
            )
        engine.state.max_epochs = max_epochs
        for key, total_iters in schedules.items():
            if self.load_dict[key].total_iters != total_iters:
                _stretch_polynomial_schedule(self.load_dict[key], total_iters)
        self.logger.info(f"Restored all variables from {self.load_path}")


class BestModelGuard:
    """Trainer handler: a training never replaces the ``model.pt`` it finds with a worse model, nor a run's files.

    When the trainer starts (after the checkpoint loaders listed before it), if ``model_path`` exists:

    - a training that neither resumes (``resume``) nor starts from that model's weights (MONAI Label's
      ``/train``, which loads it first; fine-tuning) is refused with one line naming ``--resume true`` and
      ``--overwrite true``, before it changes any file;
    - otherwise the model on disk is scored on this run's validation cases, with the validator (on every rank),
      and that score becomes the best-model saver's record: a later model replaces ``model.pt`` only if it
      scores better on the same cases. After a kill between writing ``model.pt`` and the training state, this
      is the score of the file actually on disk, not the older one of the state.

    A resumed run that has already trained all its epochs trains nothing, and nothing is checked or scored.

    A run that does not resume first moves the previous run's files that it would overwrite (``archive``: for
    example the training log, its figures, the training state) into ``previous/<time>/`` beside them; with
    ``overwrite`` the old ``model.pt`` goes there too, and the new run's first validated model takes its place.

    Args:
        model_path: the best model, e.g. ``models/model.pt``.
        network: the trained network (possibly wrapped for data parallelism).
        validator: the evaluator of the validation cases; its key metric is the score.
        best_model_saver: the saver of ``model_path``.
        resume: the run continues the training state of an earlier run (``--resume``).
        overwrite: replace ``model_path`` by the new run's model, whatever its score (``--overwrite``).
        archive: files (or ``glob`` patterns) of the previous run to keep aside when this run does not resume.
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        network: torch.nn.Module,
        validator: Workflow,
        best_model_saver: AtomicCheckpointSaver,
        resume: bool | str = False,
        overwrite: bool | str = False,
        archive: Sequence[str | os.PathLike] = (),
    ) -> None:
        self.model_path = Path(model_path)
        self.network = network
        self.validator = validator
        self.best_model_saver = best_model_saver
        self.resume = as_bool(resume, "resume")
        self.overwrite = as_bool(overwrite, "overwrite")
        self.archive = [str(path) for path in archive]

    def attach(self, engine: Engine) -> None:
        """Check and score ``model_path`` when ``engine`` starts."""
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        """Refuse, or score the model on disk and make that score the one to beat (see the class)."""
        if engine.state.epoch >= engine.state.max_epochs:  # a finished run resumed: nothing trains, nothing to beat
            return
        if not self.model_path.is_file():
            self._keep_previous_run(engine, [])
            return
        if self.overwrite:
            self._keep_previous_run(engine, [self.model_path])
            return
        saved = load_checkpoint(self.model_path, map_location="cpu")
        if isinstance(saved, Mapping) and "model" in saved:  # {"model": state_dict, "plan": plan}
            saved = saved["model"]
        network = _unwrapped(self.network)
        current = {key: value.detach().clone() for key, value in network.state_dict().items()}
        if not self.resume and not _same_weights(current, saved):
            raise BundleError(
                f"{self.model_path}: a trained model is already there; --resume true continues its training, "
                "--overwrite true trains a new model in its place."
            )
        self._keep_previous_run(engine, [])
        try:
            network.load_state_dict(saved)
        except (RuntimeError, KeyError, TypeError) as err:
            raise CheckpointError(
                f"{self.model_path} does not fit the network (pass --overwrite true to replace it): {one_line(err)}"
            ) from None
        with self.best_model_saver.paused():  # scoring the file must not rewrite it
            self.validator.run(max(engine.state.epoch, 1))
        score = float(self.validator.state.metrics[self.validator.state.key_metric_name])
        network.load_state_dict(current)
        self.best_model_saver.set_best(score, engine.state.epoch)
        engine.logger.info(f"{self.model_path} scores {score:.4f} on the validation cases: the model to beat.")

    def _keep_previous_run(self, engine: Engine, extra: list[Path]) -> None:
        """Move the previous run's files aside (rank 0), unless this run continues it."""
        if self.resume or idist.get_rank() != 0:
            return
        previous = [Path(path) for pattern in self.archive for path in sorted(glob.glob(pattern))]
        kept = move_aside([path for path in [*previous, *extra] if path.is_file()])
        if kept:
            engine.logger.info(f"Kept the previous run's files: {', '.join(map(str, kept))}")


def _same_weights(current: Mapping[str, torch.Tensor], saved: Any) -> bool:
    """Whether the state_dict ``saved`` holds exactly the tensors of ``current``."""
    if not isinstance(saved, Mapping) or saved.keys() != current.keys():
        return False
    return all(torch.equal(current[key].cpu(), torch.as_tensor(saved[key]).cpu()) for key in current)
