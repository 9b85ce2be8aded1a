"""The bundles' figures: learning curves, a validation case with its prediction, and Dice per case.

Class ``k`` (label value ``k``, 1 for the first foreground class) is drawn in the same colour in every figure:
the ``k``-th colour of matplotlib's ``tab10`` palette.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from unet_med.bundle.io import atomic_write

__all__ = ["class_colour", "dice_per_class", "plot_dice_per_case", "plot_learning_curves", "plot_overlay"]


def _pyplot():
    """Matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def _save(fig: Any, path: str | os.PathLike, dpi: int) -> None:
    """Write ``fig`` to ``path`` atomically (the format after its extension), then close it."""
    try:
        with atomic_write(path) as partial:  # the partial file ends with path's name, extension included
            fig.savefig(partial, dpi=dpi)
    finally:
        _pyplot().close(fig)


def class_colour(label: int) -> tuple[float, float, float, float]:
    """The RGBA colour of label value ``label`` (``1`` is the first foreground class) in every figure."""
    from matplotlib import colormaps

    return colormaps["tab10"](label % 10)


def _as_numpy(data: torch.Tensor | np.ndarray) -> np.ndarray:
    return data.detach().float().cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data)


def _label_map(data: torch.Tensor | np.ndarray) -> np.ndarray:
    """``(C, *S)`` one-hot or probabilities, or ``(1, *S)`` labels -> ``(*S)`` integer labels."""
    array = _as_numpy(data)
    return array[0].round().astype(int) if array.shape[0] == 1 else array.argmax(0)


def dice_per_class(pred: np.ndarray, label: np.ndarray, num_classes: int) -> list[float]:
    """Dice of each foreground class between two label maps.

    Args:
        pred: integer label map, any shape.
        label: the ground truth, same shape.
        num_classes: number of classes including the background (label ``0``).

    Returns:
        ``num_classes - 1`` values in ``[0, 1]``; ``nan`` for a class absent from both maps.
    """
    scores = []
    for value in range(1, num_classes):
        predicted, true = pred == value, label == value
        total = int(predicted.sum() + true.sum())
        scores.append(2.0 * int((predicted & true).sum()) / total if total else float("nan"))
    return scores


def _foreground_box(image: np.ndarray) -> tuple[slice, ...]:
    """The bounding box of the non-zero pixels of a 2D image: the part left of a zero-padded crop."""
    nonzero = np.nonzero(image)
    if not nonzero[0].size:
        return tuple(slice(None) for _ in image.shape)
    return tuple(slice(int(axis.min()), int(axis.max()) + 1) for axis in nonzero)


def plot_overlay(
    image: torch.Tensor | np.ndarray,
    pred: torch.Tensor | np.ndarray,
    path: str | os.PathLike,
    label: torch.Tensor | np.ndarray | None = None,
    class_names: Sequence[str] = (),
    spacing: Sequence[float] | None = None,
    case: str = "",
) -> None:
    """Plot one slice of an image, its ground truth and its prediction, with a legend and the case's Dice.

    For 3D inputs the slice along the last axis with the most labelled voxels is shown. The slice is cut to
    its non-zero part (the bundles' normalised images are zero only where padding was added) and drawn with
    square millimetres: a pixel is ``spacing[0]`` wide and ``spacing[1]`` high.

    Args:
        image: ``(C, *S)``, 2D or 3D; channel 0 is shown.
        pred: ``(C, *S)`` one-hot or probabilities, or ``(1, *S)`` label map.
        path: the PNG to write.
        label: the ground truth in the same forms as ``pred``, or ``None``.
        class_names: the foreground classes' names, for label values 1, 2, ...; without names, the values.
        spacing: the pixel size in mm along the first two spatial axes, or ``None`` for square pixels.
        case: the case's name, shown in the title.
    """
    plt = _pyplot()
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    picture, predicted = _as_numpy(image)[0], _label_map(pred)
    truth = None if label is None else _label_map(label)
    num_classes = max(len(class_names) + 1, int(predicted.max()) + 1, 0 if truth is None else int(truth.max()) + 1)
    names = list(class_names) + [str(value) for value in range(len(class_names) + 1, num_classes)]
    title = case
    if truth is not None:
        scores = dice_per_class(predicted, truth, num_classes)
        pairs = zip(names, scores, strict=True)
        title += "   Dice of the case: " + "  ".join(f"{name} {score:.3f}" for name, score in pairs)
    where = ""
    if picture.ndim == 3:
        counts = (truth if truth is not None else predicted).reshape(-1, picture.shape[-1])
        index = int((counts > 0).sum(0).argmax())
        where = f" (slice {index + 1} of {picture.shape[-1]})"
        picture, predicted = picture[..., index], predicted[..., index]
        truth = None if truth is None else truth[..., index]
    box = _foreground_box(picture)
    picture, predicted = picture[box], predicted[box]
    truth = None if truth is None else truth[box]
    aspect = 1.0 if spacing is None else float(spacing[1]) / float(spacing[0])
    colours = ListedColormap([(0, 0, 0, 0)] + [class_colour(value) for value in range(1, num_classes)])

    panels = [(f"image{where}", None)] + ([] if truth is None else [("ground truth", truth)])
    panels.append(("prediction", predicted))
    height, width = picture.shape[1] * aspect, picture.shape[0]
    panel_size = 3.2 * min(1.6, max(0.6, height / width)), 3.2
    fig, axes = plt.subplots(1, len(panels), figsize=(panel_size[1] * len(panels) + 1.6, panel_size[0] + 0.9))
    for ax, (panel_title, labels) in zip(np.atleast_1d(axes), panels, strict=True):
        ax.imshow(picture.T, cmap="gray", origin="lower", aspect=aspect, interpolation="nearest")
        if labels is not None:
            ax.imshow(labels.T, cmap=colours, vmin=-0.5, vmax=num_classes - 0.5, alpha=0.55, origin="lower",
                      aspect=aspect, interpolation="nearest")
        ax.set_title(panel_title, fontsize=10)
        ax.axis("off")
    handles = [Patch(color=class_colour(value), label=names[value - 1]) for value in range(1, num_classes)]
    fig.legend(handles=handles, loc="center right", frameon=False, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - 1.5 / fig.get_figwidth(), 1))
    _save(fig, path, dpi=110)


def plot_learning_curves(
    history: Sequence[Mapping[str, float | None]],
    path: str | os.PathLike,
    dice_keys: Mapping[str, str],
    mean_key: str,
    kept_score: float | None = None,
) -> None:
    """Plot the mean training loss, and the validation Dice of each class and their mean, against the epoch.

    Args:
        history: one dict per epoch with ``epoch``, ``loss`` and, for validated epochs, the Dice of each class
            and ``mean_key`` (``None`` or missing for epochs without validation).
        path: the PNG to write.
        dice_keys: the foreground classes in label order: their names (the legend) and their keys in ``history``.
        mean_key: the key of the mean Dice (the validator's key metric).
        kept_score: the score of a ``model.pt`` from before the run that no epoch beat: drawn as a line, and no
            epoch is starred as the model.
    """
    plt = _pyplot()
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    ax_loss.plot([row["epoch"] for row in history], [row["loss"] for row in history], marker=".", color="0.2")
    ax_loss.set(xlabel="epoch", ylabel="mean training loss", title="training loss")
    validated = [row for row in history if row.get(mean_key) is not None]
    epochs = [row["epoch"] for row in validated]
    for value, (name, key) in enumerate(dice_keys.items(), start=1):
        scores = [row.get(key) for row in validated]
        if validated and all(score is not None for score in scores):
            ax_dice.plot(epochs, scores, marker="o", markersize=3, color=class_colour(value), label=name)
    ax_dice.plot(epochs, [row[mean_key] for row in validated], marker="o", markersize=4, color="black",
                 linestyle="--", label="mean")
    title = "validation Dice"
    if kept_score is not None:
        ax_dice.axhline(kept_score, color="goldenrod", linestyle=":", label="model.pt from before (kept)")
        title += f": model.pt kept ({kept_score:.3f})"
    elif validated:
        best = max(validated, key=lambda row: row[mean_key])
        ax_dice.plot(best["epoch"], best[mean_key], marker="*", markersize=14, color="gold", markeredgecolor="black",
                     linestyle="none", label="best (model.pt)")
        title += f": best mean {best[mean_key]:.3f} at epoch {best['epoch']}"
    if validated or kept_score is not None:
        ax_dice.legend(loc="best", fontsize=8)
    ax_dice.set(xlabel="epoch", ylabel="Dice", title=title, ylim=(0, 1))
    for ax in (ax_loss, ax_dice):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    _save(fig, path, dpi=100)


def plot_dice_per_case(dice: np.ndarray, class_names: Sequence[str], path: str | os.PathLike) -> None:
    """A box and the points of every case's Dice, per class and for the mean over classes.

    Args:
        dice: ``(cases, classes)`` Dice scores (``nan`` where a class is absent from a case and its prediction).
        class_names: the names of the ``classes`` columns.
        path: the PNG to write.
    """
    plt = _pyplot()
    with np.errstate(invalid="ignore"):
        columns = [dice[:, index] for index in range(dice.shape[1])] + [np.nanmean(dice, axis=1)]
    columns = [column[~np.isnan(column)] for column in columns]
    names = [*class_names, "mean"]
    colours = [class_colour(value) for value in range(1, len(class_names) + 1)] + ["0.3"]
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 1.5, 4))
    ax.boxplot(columns, widths=0.5, showfliers=False, medianprops={"color": "black"})
    spread = np.random.default_rng(0)
    for position, (column, colour) in enumerate(zip(columns, colours, strict=True), start=1):
        ax.scatter(position + spread.uniform(-0.12, 0.12, len(column)), column, s=14, color=colour, alpha=0.8,
                   zorder=3)
    ax.set_xticks(range(1, len(names) + 1), names)
    ax.set(ylabel="Dice", ylim=(0, 1.02), title=f"Dice per case ({dice.shape[0]} cases)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, path, dpi=100)
