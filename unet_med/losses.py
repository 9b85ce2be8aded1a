"""Losses that weight each voxel's cross-entropy by a weight map, such as the U-Net paper's (eq. 2).

The weight comes either as a third argument, ``loss(logits, target, weight)``, or packed into the target as
a second channel, ``loss(logits, torch.cat([target, weight], dim=1))``. The packed form is what a MONAI
``SupervisedTrainer`` can pass, since it calls ``loss_function(pred, label)``: join the label and the weight
map with ``ConcatItemsd(keys=["label", "weight"], name="label")`` at the end of the training transforms.
"""

from __future__ import annotations

import torch
from monai.losses import DiceLoss
from torch import nn
from torch.nn.functional import cross_entropy

__all__ = ["WeightedCELoss", "WeightedDiceCELoss"]

REDUCTIONS = ("mean", "sum", "none")


def split_target(
    target: torch.Tensor, weight: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Class indices and weights from a target and an optional weight.

    Args:
        target: ``(B, 1, *S)`` or ``(B, *S)`` class indices, or ``(B, 2, *S)`` class indices and weights.
        weight: ``(B, 1, *S)`` or ``(B, *S)`` weights, or ``None`` (packed in ``target``, or all 1).

    Returns:
        ``(B, *S)`` long class indices and ``(B, *S)`` weights (``None`` for none).
    """
    if target.ndim >= 3 and target.shape[1] == 2:
        if weight is not None:
            raise ValueError(
                "give the weight either packed in target's second channel or as weight, not both."
            )
        target, weight = target[:, 0], target[:, 1]
    elif target.ndim >= 3 and target.shape[1] == 1:
        target = target[:, 0]
    if weight is not None and weight.ndim == target.ndim + 1:
        weight = weight[:, 0]
    if weight is not None and weight.shape != target.shape:
        raise ValueError(
            f"weight shape {tuple(weight.shape)} does not match target shape {tuple(target.shape)}."
        )
    return target.round().long() if target.is_floating_point() else target.long(), weight


class WeightedCELoss(nn.Module):
    """Cross-entropy of each voxel times its weight: the U-Net paper's energy, ``-sum w(x) log p(x)``.

    Args:
        reduction: ``"mean"`` (over voxels and batch: plain cross-entropy when all weights are 1), ``"sum"``,
            or ``"none"`` (the ``(B, *S)`` weighted per-voxel losses).

    Shapes:
        ``input``: ``(B, C, *S)`` logits. ``target``: ``(B, 1, *S)`` or ``(B, *S)`` class indices, or
        ``(B, 2, *S)`` class indices and weights. ``weight``: ``(B, 1, *S)`` or ``(B, *S)``, or ``None``.
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}.")
        self.reduction = reduction

    def forward(
        self, input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Weighted cross-entropy of ``input`` logits against ``target``, see the class docstring."""
        indices, weight = split_target(target, weight)
        loss = cross_entropy(input, indices, reduction="none")
        if weight is not None:
            loss = loss * weight.to(loss.dtype)
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss


class WeightedDiceCELoss(nn.Module):
    """``lambda_dice * Dice + lambda_ce * weighted cross-entropy``; the weight map acts on the cross-entropy.

    The Dice term is MONAI's ``DiceLoss`` on the softmax of the logits against the one-hot target,
    unweighted: the weight map is a per-voxel emphasis, which a ratio of sums over the image would blur.

    Args:
        lambda_dice: factor of the Dice term.
        lambda_ce: factor of the weighted cross-entropy term.
        include_background: whether the Dice term includes channel 0.
        smooth_nr: constant added to the Dice numerator.
        smooth_dr: constant added to the Dice denominator.
        batch: compute the Dice over the whole batch rather than per sample.

    Shapes:
        As :class:`WeightedCELoss`; the result is a scalar.
    """

    def __init__(
        self,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        include_background: bool = True,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
    ) -> None:
        super().__init__()
        if lambda_dice < 0 or lambda_ce < 0:
            raise ValueError(
                f"lambda_dice and lambda_ce must be non-negative, got {lambda_dice}, {lambda_ce}."
            )
        self.lambda_dice = lambda_dice
        self.lambda_ce = lambda_ce
        self.dice = DiceLoss(
            include_background=include_background,
            to_onehot_y=True,
            softmax=True,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            batch=batch,
        )
        self.ce = WeightedCELoss()

    def forward(
        self, input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Dice plus weighted cross-entropy of ``input`` logits against ``target``."""
        indices, weight = split_target(target, weight)
        dice = self.dice(input, indices.unsqueeze(1))
        return self.lambda_dice * dice + self.lambda_ce * self.ce(input, indices, weight)
