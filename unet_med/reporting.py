"""A training report: a per-epoch CSV, learning curves and a validation slice with its prediction."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from monai.handlers import from_engine

from unet_med.atomic import atomic_write

if TYPE_CHECKING:
    from ignite.engine import Engine
    from monai.engines import Workflow

__all__ = ["TrainingReport", "plot_learning_curves", "plot_overlay"]


def _as_numpy(data: torch.Tensor | np.ndarray) -> np.ndarray:
    return data.detach().float().cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data)


def _label_map(data: torch.Tensor | np.ndarray) -> np.ndarray:
    """``(C, *S)`` one-hot or probabilities, or ``(1, *S)`` labels -> ``(*S)`` integer labels."""
    array = _as_numpy(data)
    return array[0].round().astype(int) if array.shape[0] == 1 else array.argmax(0)


def plot_learning_curves(history: list[dict[str, float]], path: str | os.PathLike, metric_name: str) -> None:
    """Plot the mean training loss and the validation metric against the epoch.

    Args:
        history: one dict per epoch with ``epoch``, ``loss`` and, after validations, ``metric_name``.
        path: the PNG to write.
        metric_name: the validation metric's key.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot([row["epoch"] for row in history], [row["loss"] for row in history], marker=".")
    ax_loss.set(xlabel="epoch", ylabel="mean training loss", title="training loss")
    validated = [row for row in history if row.get(metric_name) is not None]
    ax_metric.plot([row["epoch"] for row in validated], [row[metric_name] for row in validated], marker="o")
    ax_metric.set(xlabel="epoch", ylabel=metric_name, title="validation", ylim=(0, 1))
    for ax in (ax_loss, ax_metric):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_overlay(
    image: torch.Tensor | np.ndarray,
    pred: torch.Tensor | np.ndarray,
    path: str | os.PathLike,
    label: torch.Tensor | np.ndarray | None = None,
) -> None:
    """Plot one slice of an image with its predicted (and true) labels overlaid.

    For 3D inputs the slice along the last axis with the most labelled voxels is shown.

    Args:
        image: ``(C, *S)``, 2D or 3D; channel 0 is shown.
        pred: ``(C, *S)`` one-hot or probabilities, or ``(1, *S)`` label map.
        path: the PNG to write.
        label: the ground truth in the same forms as ``pred``, or ``None``.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    picture, predicted = _as_numpy(image)[0], _label_map(pred)
    truth = None if label is None else _label_map(label)
    if picture.ndim == 3:
        counts = (truth if truth is not None else predicted).reshape(-1, picture.shape[-1])
        index = int((counts > 0).sum(0).argmax())
        picture, predicted = picture[..., index], predicted[..., index]
        truth = None if truth is None else truth[..., index]
    panels = [("prediction", predicted)] + ([] if truth is None else [("ground truth", truth)])
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
    for ax, (title, labels) in zip(axes[0], panels, strict=True):
        ax.imshow(picture.T, cmap="gray", origin="lower")
        ax.imshow(np.ma.masked_equal(labels.T, 0), cmap="tab10", alpha=0.5, origin="lower", vmin=0, vmax=9)
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


class TrainingReport:
    """Ignite handler that records a training run and draws it when the run ends.

    Attached to a trainer, it writes after every epoch a row ``epoch, loss, <metric>`` to
    ``output_dir/training_log.csv`` (the epoch's mean training loss and the validator's key metric when it ran
    that epoch; a run resumed after epoch ``n`` keeps the rows up to ``n``), and when training completes
    ``output_dir/learning_curves.png`` and ``output_dir/validation_overlay.png`` (one slice of the last
    validation case with its prediction). List it after the trainer's ``ValidationHandler`` so that an epoch's
    validation is done when its row is written.

    Args:
        validator: the evaluator that validates the trainer (its key metric and last output are read).
        output_dir: where the files go; created when missing.
        output_transform: maps the trainer's ``state.output`` to the loss of one iteration.
        image_key: key of the image in the validator's post-processed output items.
        pred_key: key of the prediction (one-hot, probabilities or labels; channel first).
        label_key: key of the ground truth, or ``None`` to draw the prediction only.
    """

    def __init__(
        self,
        validator: Workflow,
        output_dir: str | os.PathLike,
        output_transform: Callable = from_engine(["loss"], first=True),  # noqa: B008
        image_key: str = "image",
        pred_key: str = "pred",
        label_key: str | None = "label",
    ) -> None:
        self.validator = validator
        self.output_dir = Path(output_dir)
        self.output_transform = output_transform
        self.keys = (image_key, pred_key, label_key)
        self.history: list[dict[str, float]] = []
        self._losses: list[float] = []
        self._metric: float | None = None
        self._sample: dict | None = None

    @property
    def metric_name(self) -> str:
        """Name of the validator's key metric."""
        return self.validator.state.key_metric_name or "metric"

    def attach(self, engine: Engine) -> None:
        """Record ``engine``'s losses and the validator's results, and report when ``engine`` completes."""
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self._record_loss)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._end_epoch)
        engine.add_event_handler(Events.COMPLETED, self.write_figures)
        self.validator.add_event_handler(Events.EPOCH_COMPLETED, self._record_validation)

    def _record_loss(self, engine: Engine) -> None:
        self._losses.append(float(self.output_transform(engine.state.output)))

    def _record_validation(self, validator: Workflow) -> None:
        self._metric = validator.state.metrics.get(self.metric_name)
        output = validator.state.output
        self._sample = output[-1] if isinstance(output, list) else None

    @property
    def log_path(self) -> Path:
        """The per-epoch CSV."""
        return self.output_dir / "training_log.csv"

    def _earlier_rows(self, epoch: int) -> list[dict[str, float]]:
        """The rows of the epochs before ``epoch`` in an existing log: a resumed run continues it."""
        if epoch == 1 or not self.log_path.is_file():
            return []
        with self.log_path.open(newline="") as file:
            rows = [{key: float(v) if v else None for key, v in row.items()} for row in csv.DictReader(file)]
        return [{**row, "epoch": int(row["epoch"])} for row in rows if row["epoch"] < epoch]

    def _end_epoch(self, engine: Engine) -> None:
        if not self.history:
            self.history = self._earlier_rows(engine.state.epoch)
        loss = float(np.mean(self._losses))
        row = {"epoch": engine.state.epoch, "loss": loss, self.metric_name: self._metric}
        self.history.append(row)
        self._losses, self._metric = [], None
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.log_path) as partial, partial.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(row))
            writer.writeheader()
            writer.writerows(self.history)

    def write_figures(self, engine: Engine | None = None) -> None:
        """Write ``learning_curves.png`` and, after a validation, ``validation_overlay.png``."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        plot_learning_curves(self.history, self.output_dir / "learning_curves.png", self.metric_name)
        if self._sample is not None:
            image_key, pred_key, label_key = self.keys
            plot_overlay(
                self._sample[image_key],
                self._sample[pred_key],
                self.output_dir / "validation_overlay.png",
                None if label_key is None else self._sample.get(label_key),
            )
