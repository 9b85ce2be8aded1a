"""The U-Net paper's overlap-tile strategy as a MONAI inferer, for valid-mode and same-mode networks."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer
from tqdm import tqdm

from unet_med.inferers.tiling import TileGeometry, mirror_pad, tile_starts

__all__ = ["OverlapTileInferer"]


class OverlapTileInferer(Inferer):
    """Predicts images of any size tile by tile, each output tile from a larger, mirror-padded input tile.

    The image is mirrored at its borders by the network's context margin, cut into input tiles whose output
    tiles cover the image, and the output tiles are stitched into an output of the image's spatial size. With
    a valid-mode (unpadded) :class:`~unet_med.networks.UNet` every output voxel is computed from its full
    context, and the result equals the network applied to the whole mirror-padded image, at a fraction of
    the memory. This is the paper's overlap-tile strategy; MONAI's ``SlidingWindowInferer`` cannot do it,
    since it takes an output smaller than its input for a zoom.

    Tiling: along each axis output tiles start at multiples of the largest multiple of the network's
    divisor (``2 ** (depth - 1)``) that fits in the output tile, so every tile sees the same pooling grid as
    the whole image would; consecutive tiles overlap by ``output_tile % divisor`` voxels, which both compute
    alike (no blending). The last tile may run past the image: the image is mirror-padded far enough
    (repeated reflection, for images smaller than the margin too) and the excess is cropped.

    Networks: the geometry is read from ``network.conv_mode``, ``network.margin``, ``network.depth`` and
    ``network.kernel_size``.

    * ``"valid"`` mode: the margin is the network's context margin (92 voxels for the paper's network), and
      input tiles must be valid input sizes.
    * ``"same"`` mode: the output tile is the centre of an input tile ``margin`` voxels larger at each side
      (default 16), which hides the zero-padding effects at tile borders; with a margin of at least
      ``context_margin(depth, kernel_size) + divisor`` (see :mod:`unet_med.networks.sizing`: the receptive
      field's reach plus the pooling grid's) the stitched output equals the network applied to the whole
      mirror-padded image. Input tiles must be multiples of the divisor.
    * Networks without these attributes (e.g. MONAI's ``BasicUNet``) count as same-mode networks with a
      divisor of 1: choose tiles their pooling accepts.

    Args:
        output_tile: output tile size, an int for every axis or one per axis. ``None``: per axis, the
            smallest tile that covers the image at once if its input tile fits in ``max_input_tile``, else the
            largest that fits.
        max_input_tile: bound on the input tile size (output tile plus twice the margin) when ``output_tile``
            is ``None``, an int or one per axis.
        sw_batch_size: tiles per forward pass.
        margin: context voxels per side for same-mode networks; ``None`` for valid-mode networks (their
            margin is fixed) or for the default of 16.
        sw_device: device the tiles run on; ``None``: the network's (its first parameter's) device, or the
            input's for networks without parameters.
        device: device of the output; ``None``: the input's device.
        amp: run the network under ``torch.autocast`` on ``sw_device`` (float16 on GPU, bfloat16 on CPU).
        progress: show a progress bar over the forward passes.

    Shapes:
        ``inputs`` ``(B, C, *S)`` with 2 or 3 spatial axes; the output ``(B, C_out, *S)`` in the network's
        output dtype, a ``MetaTensor`` with the input's metadata if the input is one.

    Example:
        >>> net = UNet(2, 1, 2, features=(64, 128, 256, 512, 1024), conv_mode="valid", norm=None).eval()
        >>> inferer = OverlapTileInferer(output_tile=388, sw_batch_size=4)
        >>> with torch.no_grad():
        ...     inferer(torch.rand(1, 1, 512, 512), net).shape
        torch.Size([1, 2, 512, 512])
    """

    def __init__(
        self,
        output_tile: int | Sequence[int] | None = None,
        max_input_tile: int | Sequence[int] = 256,
        sw_batch_size: int = 1,
        margin: int | None = None,
        sw_device: torch.device | str | None = None,
        device: torch.device | str | None = None,
        amp: bool = False,
        progress: bool = False,
    ) -> None:
        if sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be at least 1, got {sw_batch_size}.")
        self.output_tile = output_tile
        self.max_input_tile = max_input_tile
        self.sw_batch_size = sw_batch_size
        self.margin = margin
        self.sw_device = sw_device
        self.device = device
        self.amp = amp
        self.progress = progress

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """Predicts ``inputs`` tile by tile.

        Args:
            inputs: images of shape ``(B, C, *S)``.
            network: the model; called as ``network(tiles, *args, **kwargs)`` on ``(sw_batch_size, C, *T)``
                tiles and must return one tensor of shape ``(sw_batch_size, C_out, *T')``.
            args: further positional arguments for ``network``.
            kwargs: further keyword arguments for ``network``.

        Returns:
            The stitched output, ``(B, C_out, *S)``.
        """
        spatial_dims = inputs.dim() - 2
        if spatial_dims not in (2, 3) or spatial_dims != getattr(network, "spatial_dims", spatial_dims):
            raise ValueError(
                f"expected inputs (batch, channels, *spatial) for this network, got {tuple(inputs.shape)}."
            )
        geometry = TileGeometry.of(network, self.margin)
        image_size = tuple(inputs.shape[2:])
        output_tile = self._output_tile(geometry, image_size)
        input_tile = [o + 2 * geometry.margin for o in output_tile]
        starts = [tile_starts(n, o, geometry.divisor) for n, o in zip(image_size, output_tile, strict=True)]
        padding = [
            (geometry.margin, s[-1] + o + geometry.margin - n)
            for s, o, n in zip(starts, output_tile, image_size, strict=True)
        ]
        padded = mirror_pad(inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs, padding)
        sw_device = (
            torch.device(self.sw_device) if self.sw_device is not None else _device_of(network, inputs)
        )
        out_device = torch.device(self.device) if self.device is not None else inputs.device
        trim = geometry.margin if geometry.conv_mode == "same" else 0  # same mode: the margin comes back

        jobs = [(b, corner) for b in range(inputs.shape[0]) for corner in itertools.product(*starts)]
        output: torch.Tensor | None = None
        for chunk in tqdm(list(_chunks(jobs, self.sw_batch_size)), disable=not self.progress, desc="tiles"):
            tiles = torch.stack(
                [padded[(b, slice(None), *_window(corner, input_tile))] for b, corner in chunk]
            )
            with torch.autocast(sw_device.type) if self.amp else contextlib.nullcontext():
                predicted = network(tiles.to(sw_device), *args, **kwargs)
            _check_prediction(predicted, geometry, input_tile, output_tile)
            predicted = predicted[(..., *_window([trim] * spatial_dims, output_tile))].to(out_device)
            if output is None:
                output = predicted.new_empty((inputs.shape[0], predicted.shape[1], *image_size))
            for tile, (b, corner) in zip(predicted, chunk, strict=True):
                kept = [min(o, n - c) for c, o, n in zip(corner, output_tile, image_size, strict=True)]
                output[(b, slice(None), *_window(corner, kept))] = tile[
                    (slice(None), *_window([0] * spatial_dims, kept))
                ]
        if isinstance(inputs, MetaTensor):
            output = MetaTensor(output, meta=inputs.meta, applied_operations=inputs.applied_operations)
            output.is_batch = inputs.is_batch
        return output

    def _output_tile(self, geometry: TileGeometry, image_size: tuple[int, ...]) -> list[int]:
        """The output tile size per axis: ``output_tile`` checked, or chosen within ``max_input_tile``."""
        if self.output_tile is not None:
            tiles = _per_axis(self.output_tile, len(image_size), "output_tile")
            return [geometry.check_output_tile(tile, axis) for axis, tile in enumerate(tiles)]
        bounds = _per_axis(self.max_input_tile, len(image_size), "max_input_tile")
        return [
            geometry.choose_output_tile(n, bound, axis)
            for axis, (n, bound) in enumerate(zip(image_size, bounds, strict=True))
        ]


def _per_axis(value: int | Sequence[int], spatial_dims: int, name: str) -> list[int]:
    """``value`` repeated for every spatial axis if it is an int, else checked to have one entry per axis."""
    values = [int(value)] * spatial_dims if isinstance(value, int) else [int(v) for v in value]
    if len(values) != spatial_dims or min(values) < 1:
        raise ValueError(
            f"{name} must be a positive int or one per spatial axis ({spatial_dims}), got {value!r}."
        )
    return values


def _device_of(network: Callable[..., Any], inputs: torch.Tensor) -> torch.device:
    """The device of the network's first parameter, or of ``inputs`` for a network without any."""
    parameters = network.parameters() if isinstance(network, torch.nn.Module) else iter(())
    first = next(parameters, None)
    return first.device if first is not None else inputs.device


def _window(corner: Sequence[int], size: Sequence[int]) -> tuple[slice, ...]:
    """Slices of ``size`` voxels from ``corner`` along each spatial axis."""
    return tuple(slice(c, c + t) for c, t in zip(corner, size, strict=True))


def _chunks(items: list, size: int) -> Iterator[list]:
    """Consecutive slices of ``items`` of ``size`` items (the last one may be shorter)."""
    return (items[k : k + size] for k in range(0, len(items), size))


def _check_prediction(
    predicted: Any, geometry: TileGeometry, input_tile: Sequence[int], output_tile: Sequence[int]
) -> None:
    """Raises a ``ValueError`` if the network's output is not one tensor of the size its mode implies."""
    expected = list(input_tile) if geometry.conv_mode == "same" else list(output_tile)
    if not isinstance(predicted, torch.Tensor) or list(predicted.shape[2:]) != expected:
        got = tuple(predicted.shape) if isinstance(predicted, torch.Tensor) else type(predicted).__name__
        raise ValueError(
            f"the network should map input tiles of {tuple(input_tile)} voxels to one tensor of spatial size "
            f"{tuple(expected)} ({geometry.conv_mode} mode, margin {geometry.margin}), got {got}."
        )
