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
from unet_med.networks.geometry import UNetGeometry, geometry_of

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
    divisor on that axis (the product of its strides, ``2 ** (depth - 1)`` by default) that fits in the output
    tile, so every tile sees the same pooling grid as
    the whole image would; consecutive tiles overlap by ``output_tile % divisor`` voxels, which both compute
    alike (no blending). The last tile may run past the image: the image is mirror-padded far enough
    (repeated reflection, for images smaller than the margin too) and the excess is cropped.

    Networks: the inferer needs the network's :class:`~unet_med.networks.UNetGeometry`. It takes it from the
    ``geometry`` argument, or else from ``network.geometry`` after unwrapping ``.module``
    (``DataParallel``, ``DistributedDataParallel``) and ``._orig_mod`` (``torch.compile``), see
    :func:`~unet_med.networks.geometry_of`. A TorchScript-loaded U-Net has lost its geometry: pass it.

    * ``"valid"`` mode: the margin is the network's (``geometry.margin``: 92 voxels per side for the paper's
      network), and input tiles must be valid input sizes.
    * ``"same"`` mode: the output tile is the centre of an input tile ``margin`` voxels larger at each side
      (default 16), which hides the zero-padding effects at tile borders; with a margin of at least
      ``geometry.context + geometry.divisor`` per axis (the receptive field's reach plus the pooling grid's)
      the stitched output equals the network applied to the whole mirror-padded image. Input tiles must be
      multiples of the divisor.
    * Networks without a geometry (e.g. MONAI's ``BasicUNet``) count as same-mode networks with a divisor of
      1 (:meth:`~unet_med.networks.UNetGeometry.size_preserving`): choose tiles their pooling accepts.

    Args:
        output_tile: output tile size, an int for every axis or one per axis. ``None``: per axis, the
            smallest tile that covers the image at once if its input tile fits in ``max_input_tile``, else the
            largest that fits.
        max_input_tile: bound on the input tile size (output tile plus twice the margin) when ``output_tile``
            is ``None``, an int or one per axis.
        sw_batch_size: tiles per forward pass.
        margin: context voxels per side for same-mode networks, an int or one per axis; ``None`` for
            valid-mode networks (their margin is fixed) or for the default of 16.
        sw_device: device the tiles run on; ``None``: the network's (its first parameter's) device, or the
            input's for networks without parameters.
        device: device of the output; ``None``: the input's device.
        amp: run the network under ``torch.autocast`` on ``sw_device`` (float16 on GPU, bfloat16 on CPU).
        progress: show a progress bar over the forward passes.
        geometry: the network's geometry; ``None``: read from the network at each call, as above.

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
        margin: int | Sequence[int] | None = None,
        sw_device: torch.device | str | None = None,
        device: torch.device | str | None = None,
        amp: bool = False,
        progress: bool = False,
        geometry: UNetGeometry | None = None,
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
        self.geometry = geometry

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
        network_geometry = self.geometry if self.geometry is not None else geometry_of(network, spatial_dims)
        if spatial_dims not in (2, 3) or spatial_dims != network_geometry.spatial_dims:
            raise ValueError(
                f"expected inputs (batch, channels, *spatial) for this network, got {tuple(inputs.shape)}."
            )
        geometry = TileGeometry.of(network_geometry, self.margin)
        image_size = tuple(inputs.shape[2:])
        output_tile = self._output_tile(geometry, image_size)
        input_tile = [o + 2 * m for o, m in zip(output_tile, geometry.margin, strict=True)]
        starts = [
            tile_starts(n, o, d) for n, o, d in zip(image_size, output_tile, network_geometry.divisor, strict=True)
        ]
        padding = [
            (m, s[-1] + o + m - n) for s, o, m, n in zip(starts, output_tile, geometry.margin, image_size, strict=True)
        ]
        padded = mirror_pad(inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs, padding)
        sw_device = (
            torch.device(self.sw_device) if self.sw_device is not None else _device_of(network, inputs)
        )
        out_device = torch.device(self.device) if self.device is not None else inputs.device
        network_output = geometry.output_of(input_tile)
        # What the network returns around the output tile: the margin in same mode, nothing in valid mode.
        trim = [(n - o) // 2 for n, o in zip(network_output, output_tile, strict=True)]

        jobs = [(b, corner) for b in range(inputs.shape[0]) for corner in itertools.product(*starts)]
        output: torch.Tensor | None = None
        for chunk in tqdm(list(_chunks(jobs, self.sw_batch_size)), disable=not self.progress, desc="tiles"):
            tiles = torch.stack(
                [padded[(b, slice(None), *_window(corner, input_tile))] for b, corner in chunk]
            )
            with torch.autocast(sw_device.type) if self.amp else contextlib.nullcontext():
                predicted = network(tiles.to(sw_device), *args, **kwargs)
            _check_prediction(predicted, geometry, input_tile, network_output)
            predicted = predicted[(..., *_window(trim, output_tile))].to(out_device)
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
    predicted: Any, geometry: TileGeometry, input_tile: Sequence[int], expected: Sequence[int]
) -> None:
    """Raises a ``ValueError`` unless the network returned one tensor of the ``expected`` spatial size."""
    if not isinstance(predicted, torch.Tensor) or list(predicted.shape[2:]) != list(expected):
        got = tuple(predicted.shape) if isinstance(predicted, torch.Tensor) else type(predicted).__name__
        raise ValueError(
            f"the network should map input tiles of {tuple(input_tile)} voxels to one tensor of spatial size "
            f"{tuple(expected)} ({geometry.network.conv_mode.value} mode, margin {geometry.margin}), got {got}. "
            "A network that lost its geometry (TorchScript) needs OverlapTileInferer(geometry=...)."
        )
