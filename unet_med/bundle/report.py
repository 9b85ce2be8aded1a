"""What training and evaluation report: named classes, plain-number CSVs, figures and an end-of-run summary.

- :func:`class_names` names the foreground classes from ``dataset.json`` (or the bundle's metadata).
- :class:`TrainingReport`, attached to the trainer, shows the progress of every epoch (see
  :mod:`unet_med.bundle.progress`), logs one line per epoch with the loss and the validation Dice of each class,
  writes ``training_log.csv``, ``training.log`` and the figures, and prints a summary however the run ends:
  finished, interrupted (Ctrl-C) or already finished before it started.
- :class:`ScanReport`, attached to the evaluator of an inference or evaluation run, shows its progress scan by
  scan, keeps the engines' routine messages off the console and, for inference, sums the run up: the scans
  segmented, where their predictions are, the time.
- :class:`EvaluationReport`, attached to an evaluator, writes the Dice of every case and class, their
  statistics and a plot of them.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from ignite import distributed as idist
from ignite.engine import Events
from monai.handlers import from_engine
from monai.utils import string_list_all_gather

from unet_med.bundle.figures import plot_dice_per_case, plot_learning_curves, plot_overlay
from unet_med.bundle.io import atomic_write
from unet_med.bundle.progress import EpochProgress, RunLog, ScanProgress, progress_mode

if TYPE_CHECKING:
    from ignite.engine import Engine
    from monai.engines import Workflow

__all__ = [
    "EvaluationReport",
    "ScanReport",
    "TrainingReport",
    "case_name",
    "class_names",
    "dice_text",
    "format_duration",
    "summary_lines",
    "write_csv",
]

EVALUATE_COMMAND = "python -m monai.bundle run --config_file \"['configs/train.yaml','configs/evaluate.yaml']\""
INFERENCE_COMMAND = "python -m monai.bundle run --config_file configs/inference.yaml --datalist '/path/to/*.nii.gz'"
_LOGGER = logging.getLogger("unet_med.bundle.report")


def class_names(num_classes: int, dataset: str | os.PathLike | None = None,
                metadata: str | os.PathLike | None = None) -> list[str]:
    """The names of the foreground classes (label values ``1 .. num_classes - 1``).

    Taken from the ``labels`` of the dataset's ``dataset.json`` when it has them, else from the ``channel_def``
    of the bundle's ``metadata.json`` prediction, else ``class 1``, ``class 2``, ...

    Args:
        num_classes: the number of classes including the background.
        dataset: a Decathlon folder or its ``dataset.json``.
        metadata: the bundle's ``configs/metadata.json``.
    """
    names: dict[int, str] = {}
    dataset_json = None if dataset is None else Path(dataset)
    if dataset_json is not None and dataset_json.is_dir():
        dataset_json = dataset_json / "dataset.json"
    if dataset_json is not None and dataset_json.is_file():
        labels = json.loads(dataset_json.read_text()).get("labels") or {}
        names = {int(value): str(name) for value, name in labels.items() if str(value).isdigit()}
    if not names and metadata is not None and Path(metadata).is_file():
        outputs = json.loads(Path(metadata).read_text()).get("network_data_format", {}).get("outputs", {})
        channels = next(iter(outputs.values()), {}).get("channel_def", {})
        names = {int(value): str(name) for value, name in channels.items() if str(value).isdigit()}
    return [names.get(value, f"class {value}") for value in range(1, num_classes)]


def format_duration(seconds: float) -> str:
    """``3.2 s``, ``4m 05s`` or ``1h 02m``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


def case_name(item: Mapping[str, Any], image_key: str = "image") -> str:
    """The name of the case of a batch item: its image's file name without ``.nii``/``.nii.gz`` (or folder name)."""
    path = str(getattr(item[image_key], "meta", {}).get("filename_or_obj", "")) or "case"
    return Path(path).name.removesuffix(".gz").removesuffix(".nii")


def dice_text(scores: Mapping[str, float | None], mean: float | None) -> str:
    """``Anterior 0.806  Posterior 0.815  mean 0.810``: the Dice of each class, then their mean."""
    parts = [f"{name} {'-' if score is None else f'{score:.3f}'}" for name, score in scores.items()]
    return "  ".join([*parts, f"mean {'-' if mean is None else f'{mean:.3f}'}"])


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """Write ``rows`` under the header ``columns``, atomically; floats as plain numbers, ``None`` as empty."""
    path.parent.mkdir(parents=True, exist_ok=True)

    def plain(value: Any) -> Any:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        return f"{value:.6g}" if isinstance(value, float) else value

    with atomic_write(path) as partial, partial.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(columns)
        writer.writerows([plain(row.get(column)) for column in columns] for row in rows)


def _read_csv(path: Path) -> list[dict[str, Any]]:
    """The rows of a CSV written by :func:`write_csv`, numbers as floats (``epoch`` as int), blanks as ``None``."""
    with path.open(newline="") as file:
        rows = [{key: float(value) if value else None for key, value in row.items()} for row in csv.DictReader(file)]
    return [{**row, "epoch": int(row["epoch"])} for row in rows]


def _dice_key(name: str) -> str:
    return f"dice {name}"


def summary_lines(
    outcome: str,
    epoch: int,
    max_epochs: int,
    history: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    mean_key: str,
    seconds: float,
    files: Mapping[str, str],
    overrides: str = "",
    kept_score: float | None = None,
    precision: str = "",
) -> list[str]:
    """The end-of-run summary, one line each.

    Args:
        outcome: ``finished``, ``interrupted``, ``failed`` or ``already finished``.
        epoch: the last epoch completed.
        max_epochs: the epochs the run was to train.
        history: the rows of ``training_log.csv`` (see :class:`TrainingReport`).
        class_names: the foreground classes.
        mean_key: the column of the mean Dice.
        seconds: the wall time of this run.
        files: what the user looks at next, by label (``model``, ``log``, ...).
        overrides: command-line options the next commands need too (e.g. ``--ckpt_dir ...``).
        kept_score: the validation score of the ``model.pt`` found before this run, when no epoch beat it (the
            file is still that model).
        precision: the device and precision trained in (:func:`unet_med.bundle.precision.precision_text`).
    """
    head = {
        "finished": f"training finished: {epoch} of {max_epochs} epochs in {format_duration(seconds)}",
        "interrupted": f"training interrupted after {epoch} of {max_epochs} epochs ({format_duration(seconds)}); "
        "continue it with --resume true",
        "failed": f"training stopped by an error after {epoch} of {max_epochs} epochs ({format_duration(seconds)})",
        "already finished": f"nothing to train: the saved training state has finished all {epoch} of "
        f"{max_epochs} epochs; to train longer, run again with --resume true --epochs <more than {max_epochs}>",
    }[outcome]
    if outcome == "already finished":
        return [head]
    lines = [head] + ([f"trained on {precision}"] if precision else [])
    validated = [row for row in history if row.get(mean_key) is not None]
    if validated:
        best = max(validated, key=lambda row: row[mean_key])
        scores = {name: best.get(_dice_key(name)) for name in class_names}
        lines.append(f"best validation Dice (epoch {best['epoch']}): {dice_text(scores, best[mean_key])}")
    if kept_score is not None:
        lines.append(f"model.pt kept: it scored {kept_score:.3f} on the validation cases before this run, "
                     "and no epoch beat it")
    if not validated:
        lines.append("no validation yet: no model was saved")
    width = max(len(label) for label in files) if files else 0
    lines += [f"{label:<{width}}  {path}" for label, path in files.items()]
    if validated:
        lines.append(f"next: evaluate  {EVALUATE_COMMAND}{overrides}")
        lines.append(f"      segment   {INFERENCE_COMMAND}{overrides}")
    return lines


class _RoutineEngineRecords(logging.Filter):
    """Drops ignite's routine lines that the bundles' own lines replace.

    "Engine run resuming from iteration 0, epoch 0" of a run that starts afresh: MONAI's engines set up their
    state before ignite runs them, so ignite takes every run for a resumed one (the line of a real resume, from
    epoch 1 or later, stays). "Engine run finished. Time taken: ...": the run's own summary says the time.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not message.startswith(("Engine run resuming from iteration 0, epoch 0 ", "Engine run finished. "))


class TrainingReport:
    """Ignite handler that shows, records and summarises a training run (on the process that prints).

    Attached to a trainer, it:

    - draws a progress bar per epoch, or logs a line per iteration (``progress``: see
      :func:`unet_med.bundle.progress.progress_mode`), and copies every log record to
      ``output_dir/training.log`` (the console keeps the lines below, warnings and errors);
    - after every epoch logs ``epoch 4/16  loss 1.1525  lr 0.00107  Dice  Anterior 0.402  Posterior 0.595
      mean 0.499  (best)  1m 32s`` (the Dice when the validator ran that epoch) and writes the row ``epoch,
      loss, learning_rate, dice <class>..., <key metric>`` to ``output_dir/training_log.csv`` (a run resumed
      after epoch ``n`` keeps the rows up to ``n``);
    - when training ends, writes ``learning_curves.png`` and ``validation_overlay.png`` (a slice of the last
      validation case, its ground truth and prediction, with its Dice) and logs a summary: how the run ended
      (finished, interrupted by Ctrl-C or an error), the device and precision, the best Dice per class and
      its epoch, where the model and the logs are, the wall time and the commands to run next; a run found
      already finished (``--resume true`` after the last epoch) says only that, and how to train longer;
    - drops ignite's "Engine run resuming from iteration 0, epoch 0" of a run that starts afresh, and its
      "Engine run finished" after the summary.

    List it after the trainer's ``ValidationHandler``, so that an epoch's validation is done when its row is
    written.

    Args:
        validator: the evaluator that validates the trainer (its key metric, ``per_class_metric`` and last
            output are read).
        output_dir: where the files go; created when missing.
        class_names: the foreground classes, in label order (see :func:`class_names`).
        ckpt_dir: where the trainer's checkpoints are (``model.pt``, ``checkpoint_latest.pt``), for the summary.
        progress: ``auto``, ``bar`` or ``lines``.
        precision: the device and precision the trainer computes in, logged first when training starts (on the
            console and in ``training.log``) and repeated in the summary.
        per_class_metric: the validator's metric with one Dice per foreground class.
        output_transform: maps the trainer's ``state.output`` to the loss of one iteration.
        image_key: key of the image in the validator's post-processed output items.
        pred_key: key of the prediction (one-hot, probabilities or labels; channel first).
        label_key: key of the ground truth, or ``None`` to draw the prediction only.
    """

    def __init__(
        self,
        validator: Workflow,
        output_dir: str | os.PathLike,
        class_names: Sequence[str],
        ckpt_dir: str | os.PathLike = "models",
        progress: str = "auto",
        precision: str = "",
        per_class_metric: str = "val_dice_per_class",
        output_transform: Callable = from_engine(["loss"], first=True),  # noqa: B008
        image_key: str = "image",
        pred_key: str = "pred",
        label_key: str | None = "label",
    ) -> None:
        self.validator = validator
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names)
        self.ckpt_dir = Path(ckpt_dir)
        self.progress = EpochProgress(progress_mode(progress))
        self.precision = precision
        self.per_class_metric = per_class_metric
        self.output_transform = output_transform
        self.keys = (image_key, pred_key, label_key)
        self.history: list[dict[str, Any]] = []
        self._losses: list[float] = []
        self._validation: dict[str, float] | None = None
        self._sample: dict | None = None
        self._log: RunLog | None = None
        self._start = time.monotonic()
        self._start_epoch = 0
        self._epoch_start = self._start
        self._learning_rate: float | None = None
        self._to_beat: float | None = None

    @property
    def metric_name(self) -> str:
        """Name of the validator's key metric (the mean Dice)."""
        return self.validator.state.key_metric_name or "metric"

    @property
    def kept_score(self) -> float | None:
        """The score of the ``model.pt`` found before this run if no epoch beat it (the file is still that model)."""
        scores = [row[self.metric_name] for row in self.history if row.get(self.metric_name) is not None]
        return self._to_beat if self._to_beat is not None and self._to_beat >= max(scores, default=-1) else None

    @property
    def log_path(self) -> Path:
        """The per-epoch CSV."""
        return self.output_dir / "training_log.csv"

    @property
    def columns(self) -> list[str]:
        """The columns of ``training_log.csv``."""
        return ["epoch", "loss", "learning_rate", *map(_dice_key, self.class_names), self.metric_name]

    def attach(self, engine: Engine) -> None:
        """Show and record ``engine``'s epochs and the validator's results; summarise when ``engine`` ends."""
        for logger in (engine.logger, self.validator.logger):
            logger.addFilter(_RoutineEngineRecords())
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._start_epoch_bar)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._record_loss)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._end_epoch)
        engine.add_event_handler(Events.COMPLETED, self._completed)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._exception_raised)
        self.validator.add_event_handler(Events.EPOCH_COMPLETED, self._record_validation)

    def _started(self, engine: Engine) -> None:
        """Open the log; take over the rows of the epochs a resumed run has done (its loader ran on STARTED)."""
        self._log = RunLog(self.output_dir / "training.log", hide_iterations=self.progress.mode == "bar")
        self._start, self._start_epoch = time.monotonic(), engine.state.epoch
        if self.precision and engine.state.epoch < engine.state.max_epochs:
            _LOGGER.info(f"training on {self.precision}")
        self.history = []
        # A validation before the first epoch (the score of the model on disk, see BestModelGuard) is no epoch's.
        self._validation, self._sample = None, None
        if engine.state.epoch > 0 and self.log_path.is_file():
            self.history = [row for row in _read_csv(self.log_path) if row["epoch"] <= engine.state.epoch]
        # The score model.pt already has (scored by BestModelGuard, or restored with the training state):
        # an epoch is the best, and replaces model.pt, only if it beats this.
        best = float(getattr(self.validator.state, "best_metric", -1))
        self._to_beat = best if best > -1 else None

    def _start_epoch_bar(self, engine: Engine) -> None:
        optimizer = getattr(engine, "optimizer", None)
        self._learning_rate = None if optimizer is None else float(optimizer.param_groups[0]["lr"])
        self._epoch_start = time.monotonic()
        self.progress.start(engine.state.epoch, engine.state.max_epochs, engine.state.epoch_length)

    def _record_loss(self, engine: Engine) -> None:
        loss = float(self.output_transform(engine.state.output))
        self._losses.append(loss)
        iteration = (engine.state.iteration - 1) % engine.state.epoch_length + 1
        self.progress.update(iteration, loss)
        if iteration == engine.state.epoch_length:  # the bar is complete before the validation logs anything
            self.progress.close()

    def _record_validation(self, validator: Workflow) -> None:
        metrics = validator.state.metrics
        per_class = torch.as_tensor(metrics.get(self.per_class_metric, [])).flatten().tolist()
        self._validation = {_dice_key(name): float(score) for name, score in zip(self.class_names, per_class)}
        self._validation[self.metric_name] = float(metrics[self.metric_name])
        output = validator.state.output
        self._sample = output[-1] if isinstance(output, list) else None

    def _end_epoch(self, engine: Engine) -> None:
        self.progress.close()
        seconds = time.monotonic() - self._epoch_start
        row = {"epoch": engine.state.epoch, "loss": float(np.mean(self._losses)), "learning_rate": self._learning_rate}
        line = f"epoch {engine.state.epoch}/{engine.state.max_epochs}  loss {row['loss']:.4f}"
        if self._learning_rate is not None:
            line += f"  lr {self._learning_rate:.3g}"
        if self._validation is not None:
            earlier = [r[self.metric_name] for r in self.history if r.get(self.metric_name) is not None]
            earlier += [] if self._to_beat is None else [self._to_beat]
            row.update(self._validation)
            scores = {name: row[_dice_key(name)] for name in self.class_names if _dice_key(name) in row}
            line += f"  Dice  {dice_text(scores, row[self.metric_name])}"
            if not earlier or row[self.metric_name] > max(earlier):
                line += "  (best)"
        _LOGGER.info(f"{line}  {format_duration(seconds)}")
        self.history.append(row)
        self._losses, self._validation = [], None
        write_csv(self.log_path, self.history, self.columns)

    def write_figures(self) -> None:
        """Write ``learning_curves.png`` and, after a validation, ``validation_overlay.png``."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self.history:
            curves = {name: _dice_key(name) for name in self.class_names}
            plot_learning_curves(self.history, self.output_dir / "learning_curves.png", curves, self.metric_name,
                                 self.kept_score)
        if self._sample is not None:
            image_key, pred_key, label_key = self.keys
            image = self._sample[image_key]
            meta = getattr(image, "meta", {})
            case = Path(str(meta.get("filename_or_obj", ""))).name.removesuffix(".gz").removesuffix(".nii")
            spacing = getattr(image, "pixdim", None)
            plot_overlay(
                image,
                self._sample[pred_key],
                self.output_dir / "validation_overlay.png",
                None if label_key is None else self._sample.get(label_key),
                class_names=self.class_names,
                spacing=None if spacing is None else [float(value) for value in spacing[:2]],
                case=case,
            )

    def _files(self) -> dict[str, str]:
        """What the summary points to, by label: the checkpoints that exist, the logs and the figures."""
        files = {"model": self.ckpt_dir / "model.pt", "resume state": self.ckpt_dir / "checkpoint_latest.pt"}
        shown = {label: str(path) for label, path in files.items() if path.is_file()}
        logs = [str(self.output_dir / name) for name in ("training_log.csv", "training.log")]
        shown["logs"] = ", ".join(logs) + f" (TensorBoard: tensorboard --logdir {shlex.quote(str(self.output_dir))})"
        figures = [str(self.output_dir / name) for name in ("learning_curves.png", "validation_overlay.png")]
        if any(Path(figure).is_file() for figure in figures):
            shown["figures"] = ", ".join(figure for figure in figures if Path(figure).is_file())
        return shown

    def _summarise(self, engine: Engine, outcome: str) -> None:
        self.progress.close()
        if self.history and outcome != "already finished":
            self.write_figures()
        default = self.ckpt_dir.resolve() == Path.cwd() / "models"
        overrides = "" if default else f" --ckpt_dir {shlex.quote(str(self.ckpt_dir))}"
        epoch = self.history[-1]["epoch"] if self.history else engine.state.epoch
        lines = summary_lines(outcome, epoch, engine.state.max_epochs, self.history, self.class_names,
                              self.metric_name, time.monotonic() - self._start, self._files(), overrides,
                              self.kept_score, self.precision)
        _LOGGER.info("\n".join(["", *lines]))
        if self._log is not None:
            self._log.close()
            self._log = None

    def _completed(self, engine: Engine) -> None:
        if engine.state.epoch == self._start_epoch and engine.state.epoch >= engine.state.max_epochs:
            outcome = "already finished"
        else:
            outcome = "finished" if engine.state.epoch >= engine.state.max_epochs else "interrupted"
        self._summarise(engine, outcome)

    def _exception_raised(self, engine: Engine, error: BaseException) -> None:
        """Summarise the run so far, then let the error go on (an ignite handler of this event must re-raise).

        Ignite hands an error raised in an iteration to this event twice (from the epoch, then from the run):
        the summary is written once.
        """
        if self._log is not None:
            self._summarise(engine, "interrupted" if isinstance(error, KeyboardInterrupt) else "failed")
        raise error


class ScanReport:
    """Evaluator handler: the progress of an inference or evaluation run, scan by scan, and how it ended.

    While the evaluator runs, a tqdm bar counts the scans done (the last one's name, the time left), or, in
    ``lines`` mode, one line per scan gives its name and time; the engines' routine messages ("Epoch[1]
    Complete", "Got new best metric ...") stay off the console. With ``output_dir`` (inference), the run ends
    with a summary: ``segmented 30 scans in 4m 05s: predictions in /data/outputs``, or, after Ctrl-C or an
    error, how many of the scans were segmented before it stopped (each of their files is complete).

    Args:
        progress: ``auto``, ``bar`` or ``lines`` (see :func:`unet_med.bundle.progress.progress_mode`).
        output_dir: where the predictions go, for the summary; ``None`` for none (evaluation: its
            :class:`EvaluationReport` sums it up).
        dicom_seg: the run writes a DICOM SEG beside each NIfTI prediction.
        image_key: key of the image in a batch item, whose metadata name the case.
    """

    def __init__(self, progress: str = "auto", output_dir: str | os.PathLike | None = None,
                 dicom_seg: bool | str = False, image_key: str = "image") -> None:
        from unet_med.bundle.flags import as_bool

        self.progress = ScanProgress(progress_mode(progress))
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.dicom_seg = as_bool(dicom_seg, "dicom_seg")
        self.image_key = image_key
        self._log: RunLog | None = None
        self._start = self._scan_start = time.monotonic()

    def attach(self, engine: Engine) -> None:
        """Show ``engine``'s scans as they are done; sum up when it ends, however it ends.

        List it before MONAI's ``StatsHandler``, which re-raises an error before later handlers of the event see it.
        """
        engine.logger.addFilter(_RoutineEngineRecords())
        engine.add_event_handler(Events.EPOCH_STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._scan_done)
        engine.add_event_handler(Events.COMPLETED, self._completed)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._exception_raised)

    def _started(self, engine: Engine) -> None:
        self._log = RunLog(None, hide_iterations=self.progress.mode == "bar")
        self._start = self._scan_start = time.monotonic()
        task = "evaluating" if self.output_dir is None else "segmenting"
        self.progress.start(engine.state.epoch_length, task)

    def _scan_done(self, engine: Engine) -> None:
        now = time.monotonic()
        for item in engine.state.batch:
            self.progress.update(case_name(item, self.image_key), now - self._scan_start)
        self._scan_start = now

    def summary(self, outcome: str) -> str:
        """The closing line of an inference run: ``finished``, ``interrupted`` or ``failed``."""
        done, total = self.progress.done, self.progress.total
        seconds = format_duration(time.monotonic() - self._start)
        formats = "NIfTI and DICOM SEG " if self.dicom_seg else ""
        where = f"{formats}predictions in {self.output_dir}"
        if outcome == "finished":
            return f"segmented {done} scans in {seconds}: {where}"
        cause = "interrupted" if outcome == "interrupted" else "stopped by an error"
        line = f"inference {cause} after {done} of {total} scans ({seconds})"
        return f"{line}: their {where} are complete, the others not written" if done else line

    def _end(self, outcome: str) -> None:
        self.progress.close()
        if self._log is None:
            return
        self._log.close()
        self._log = None
        if self.output_dir is not None:
            _LOGGER.info(self.summary(outcome))

    def _completed(self, engine: Engine) -> None:
        self._end("finished")

    def _exception_raised(self, engine: Engine, error: BaseException) -> None:
        """Close the bar and sum up once (ignite may hand an error to this event twice), then let it go on."""
        self._end("interrupted" if isinstance(error, KeyboardInterrupt) else "failed")
        raise error


class EvaluationReport:
    """Ignite handler that writes the Dice of every case and class when an evaluator finishes.

    In ``output_dir`` it writes ``dice_per_case.csv`` (``case, <class>..., mean``), ``metrics.csv`` (the mean,
    median, standard deviation, minimum and maximum over the cases of each column) and ``dice_per_case.png``,
    and logs the mean Dice of each class and the time taken. The per-case scores are the details of the
    evaluator's key metric (``MeanDice`` with ``include_background=False`` and ``save_details=True``, as the
    bundles configure it); under ``torchrun`` every process takes part and rank 0 writes the files.

    Args:
        output_dir: where the files go.
        class_names: the foreground classes, in label order.
        image_key: key of the image in a batch item, whose metadata name the case.
    """

    def __init__(self, output_dir: str | os.PathLike, class_names: Sequence[str], image_key: str = "image") -> None:
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names)
        self.image_key = image_key
        self._cases: list[str] = []
        self._start_time = time.monotonic()

    def attach(self, engine: Engine) -> None:
        """Record the case names of ``engine``'s batches and write the report when its epoch completes."""
        engine.add_event_handler(Events.EPOCH_STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._record_cases)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _start(self, engine: Engine) -> None:
        self._cases.clear()
        self._start_time = time.monotonic()

    def _record_cases(self, engine: Engine) -> None:
        self._cases.extend(case_name(item, self.image_key) for item in engine.state.batch)

    def __call__(self, engine: Engine) -> None:
        """Gather the cases of every process and, on rank 0, write the CSVs and the plot."""
        cases = string_list_all_gather(self._cases) if idist.get_world_size() > 1 else list(self._cases)
        details = engine.state.metric_details[engine.state.key_metric_name]
        dice = torch.as_tensor(details).float().cpu().numpy().reshape(len(cases), -1)
        if idist.get_rank() != 0:
            return
        columns = [*self.class_names, "mean"]
        with np.errstate(invalid="ignore"):
            table = np.concatenate([dice, np.nanmean(dice, axis=1, keepdims=True)], axis=1)
            stats = {op: getattr(np, f"nan{op}")(table, axis=0) for op in ("mean", "median", "std", "min", "max")}
        write_csv(self.output_dir / "dice_per_case.csv",
                  [{"case": case, **dict(zip(columns, map(float, row)))} for case, row in zip(cases, table)],
                  ["case", *columns])
        write_csv(self.output_dir / "metrics.csv",
                  [{"statistic": op, **dict(zip(columns, map(float, values)))} for op, values in stats.items()],
                  ["statistic", *columns])
        plot_dice_per_case(dice, self.class_names, self.output_dir / "dice_per_case.png")
        means = dict(zip(self.class_names, map(float, stats["mean"][:-1])))
        seconds = format_duration(time.monotonic() - self._start_time)
        _LOGGER.info(f"evaluated {len(cases)} cases in {seconds}  Dice  {dice_text(means, float(np.nanmean(dice)))}")
        _LOGGER.info(f"Dice per case: {self.output_dir / 'dice_per_case.csv'} and .png; statistics: "
                     f"{self.output_dir / 'metrics.csv'}")

