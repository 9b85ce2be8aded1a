"""Test-time augmentation by mirroring: the mean prediction over the flipped copies of the input."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer

__all__ = ["MirroredInferer", "mirror_flips"]


def mirror_flips(spatial_axes: Sequence[int]) -> Iterator[tuple[int, ...]]:
    """Every combination of the given spatial axes to flip, the empty one (no flip) first: ``2 ** len(axes)``.

    Args:
        spatial_axes: spatial axes (0 is the first spatial axis, the tensor's dimension 2).

    Yields:
        The tensor dimensions to flip together, e.g. ``()``, ``(2,)``, ``(3,)``, ``(2, 3)`` for axes 0 and 1.
    """
    dims = [axis + 2 for axis in spatial_axes]
    for count in range(len(dims) + 1):
        yield from itertools.combinations(dims, count)


class MirroredInferer(Inferer):
    """Wraps an inferer: predicts the input and its mirror images, flips the predictions back, and averages them.

    This is nnU-Net's test-time augmentation: with all spatial axes mirrored, a 3D image is predicted 8 times
    and a 2D one 4 times. Mirror only the axes along which the network was trained on flipped images (nnU-Net
    trains with flips along all axes): on a mirror image it has never seen, a network can fail. Any inferer can
    be wrapped: MONAI's ``SimpleInferer``, ``SlidingWindowInferer`` and ``SliceInferer``, or
    :class:`~unet_med.inferers.OverlapTileInferer` (valid or same mode). Whatever the network, the result is
    equivariant to the mirrorings: predicting a mirrored image gives the mirrored prediction (exactly with
    ``SimpleInferer``; up to the inner inferer's own tiling otherwise).

    What is averaged is what the inner inferer returns, the network's logits for the bundles' networks: the
    wrapper changes the cost, not the meaning of the output, so a softmax or argmax after it applies as before.
    nnU-Net (version 2) averages logits too. The mean is accumulated in float32 and returned in the inner
    prediction's dtype.

    Args:
        inner: the inferer that predicts each mirror image.
        spatial_axes: the spatial axes to mirror (0 is the first spatial axis); ``None``: all of the input's.
            For a 2D network applied slice by slice (``SliceInferer`` with ``spatial_dim`` ``k``) mirror the
            two in-plane axes: mirroring across slices does not change what the network sees.

    Shapes:
        ``inputs`` ``(B, C, *S)``; the inner inferer must return one tensor ``(B, C_out, *S)`` (the input's
        spatial size). The output is ``(B, C_out, *S)``, a ``MetaTensor`` with the input's metadata if the input
        is one.

    Example:
        >>> inferer = MirroredInferer(SlidingWindowInferer(roi_size=(32, 48, 32), overlap=0.5))
        >>> inferer(torch.rand(1, 1, 40, 56, 40), net).shape  # 8 sliding-window passes
        torch.Size([1, 3, 40, 56, 40])
    """

    def __init__(self, inner: Inferer, spatial_axes: Sequence[int] | None = None) -> None:
        if spatial_axes is not None and (
            len(set(spatial_axes)) != len(spatial_axes) or any(axis < 0 for axis in spatial_axes)
        ):
            raise ValueError(f"spatial_axes must be distinct spatial axes (0, 1, ...), got {list(spatial_axes)}.")
        self.inner = inner
        self.spatial_axes = None if spatial_axes is None else tuple(spatial_axes)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        """Predicts ``inputs`` and its mirror images with the inner inferer and returns the mean prediction.

        Args:
            inputs: images of shape ``(B, C, *S)``.
            network: the model, passed to the inner inferer.
            args: further positional arguments for the inner inferer.
            kwargs: further keyword arguments for the inner inferer.

        Returns:
            The mean of the ``2 ** len(spatial_axes)`` predictions, each flipped back, ``(B, C_out, *S)``.
        """
        spatial_dims = inputs.dim() - 2
        axes = tuple(range(spatial_dims)) if self.spatial_axes is None else self.spatial_axes
        if any(axis >= spatial_dims for axis in axes):
            raise ValueError(f"spatial_axes {list(axes)} of an input with {spatial_dims} spatial axes.")
        plain = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        total: torch.Tensor | None = None
        count = 0
        for dims in mirror_flips(axes):
            predicted = self.inner(torch.flip(plain, dims) if dims else plain, network, *args, **kwargs)
            if not isinstance(predicted, torch.Tensor) or predicted.shape[2:] != inputs.shape[2:]:
                shape = tuple(predicted.shape) if isinstance(predicted, torch.Tensor) else type(predicted).__name__
                raise ValueError(
                    f"MirroredInferer needs one prediction of the input's spatial size {tuple(inputs.shape[2:])}, "
                    f"got {shape}."
                )
            predicted = predicted.as_tensor() if isinstance(predicted, MetaTensor) else predicted
            restored = torch.flip(predicted, dims) if dims else predicted
            if total is None:
                dtype = predicted.dtype
                total = restored.to(torch.float32, copy=True)
            else:
                total += restored
            count += 1
        output = (total / count).to(dtype)
        if isinstance(inputs, MetaTensor):
            output = MetaTensor(output, meta=inputs.meta, applied_operations=inputs.applied_operations)
            output.is_batch = inputs.is_batch
        return output
