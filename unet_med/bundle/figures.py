"""The training report's figures: learning curves and a validation slice with its prediction."""

from __future__ import annotations

import os

import numpy as np
import torch

__all__ = ["plot_learning_curves", "plot_overlay"]


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
