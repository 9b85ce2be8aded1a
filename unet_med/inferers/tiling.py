"""Geometry of overlap-tile inference per axis, and mirror padding of any extent.

Overlap-tile inference sees a network through its :class:`~unet_med.networks.UNetGeometry` (the input tile
sizes it accepts and the output size of each) plus the context ``margin`` it pads around every output tile:
a :class:`TileGeometry`. Every size here is in voxels along one spatial axis unless it says otherwise.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from unet_med.networks.geometry import ConvMode, UNetGeometry

__all__ = ["TileGeometry", "mirror_pad", "tile_starts"]

SAME_MODE_MARGIN = 16


@dataclass(frozen=True)
class TileGeometry:
    """What overlap-tile inference needs to know about a network, per spatial axis.

    Attributes:
        network: the network's geometry: which input tiles it accepts, the output size of each, its divisor.
            Tiles start at multiples of the divisor in the padded image, so that every tile sees the same
            pooling grid as the whole image would.
        margin: context in voxels at each side of an output tile, per axis: the network's own margin in valid
            mode (its output is that much smaller than its input); in same mode the border of each output
            computed but discarded.
    """

    network: UNetGeometry
    margin: tuple[int, ...]

    @classmethod
    def of(cls, network: UNetGeometry, margin: int | Sequence[int] | None = None) -> TileGeometry:
        """The tiling for a network of geometry ``network``.

        Args:
            network: the network's geometry.
            margin: context in voxels per side, an int or one per axis, for same-mode networks (default
                ``SAME_MODE_MARGIN = 16``); for valid-mode networks ``None`` or the network's own margin.

        Raises:
            ValueError: for a negative margin, or one that contradicts a valid-mode network's.
        """
        dims = network.spatial_dims
        margins = None if margin is None else (
            (int(margin),) * dims if isinstance(margin, numbers.Integral) else tuple(int(m) for m in margin)
        )
        if margins is not None and (len(margins) != dims or min(margins) < 0):
            raise ValueError(
                f"margin must be at least 0 voxels, an int or one per spatial axis ({dims}), got {margin!r}."
            )
        if network.conv_mode is ConvMode.VALID:
            if margins is not None and margins != network.margin:
                raise ValueError(
                    f"a valid-mode network fixes the margin to {_axes(network.margin)} voxels; got margin={margin}. "
                    "Leave margin unset for valid-mode networks."
                )
            return cls(network, network.margin)
        return cls(network, margins or (SAME_MODE_MARGIN,) * dims)

    def output_of(self, input_tile: Sequence[int]) -> tuple[int, ...]:
        """The spatial size of the network's output for an input tile of ``input_tile`` voxels per axis."""
        return self.network.output_size(input_tile)

    def input_tiles(self, axis: int, max_size: int) -> list[int]:
        """Input tile sizes of ``axis`` up to ``max_size``, ascending, with output tiles of a divisor or more."""
        sizes = self.network.valid_input_sizes(axis, max_size)
        return [size for size in sizes if size - 2 * self.margin[axis] >= self.network.divisor[axis]]

    def smallest_input_tile(self, axis: int) -> int:
        """The smallest input tile of ``axis`` whose output tile has at least a divisor of voxels."""
        smallest, step = self.network.smallest_input_size[axis], self.network.divisor[axis]
        return smallest + max(0, -(-(2 * self.margin[axis] + step - smallest) // step)) * step

    def check_output_tile(self, output_tile: int, axis: int) -> int:
        """Returns ``output_tile`` if its input tile ``output_tile + 2 * margin`` suits the network on ``axis``.

        Raises:
            ValueError: otherwise, naming the nearest output tile sizes that suit it.
        """
        margin, divisor = self.margin[axis], self.network.divisor[axis]
        input_tile = output_tile + 2 * margin
        candidates = self.input_tiles(axis, input_tile + divisor)
        if input_tile in candidates:
            return output_tile
        below = [size for size in candidates if size < input_tile][-1:]
        above = [size for size in candidates if size > input_tile][:1] or [self.smallest_input_tile(axis)]
        nearest = " or ".join(str(size - 2 * margin) for size in below + above)
        mode = self.network.conv_mode.value
        raise ValueError(
            f"output_tile {output_tile} on spatial axis {axis} does not suit this {mode}-mode network (margin "
            f"{margin}, divisor {divisor}): its input tile {input_tile} must be a valid input size and its output "
            f"at least {divisor} voxels. The nearest valid output tiles are {nearest}."
        )

    def choose_output_tile(self, image_size: int, max_input_tile: int, axis: int) -> int:
        """The output tile for an axis of ``image_size`` voxels when none is given.

        The smallest tile that covers the image in one piece if its input tile is at most ``max_input_tile``,
        else the largest tile whose input tile is at most ``max_input_tile``.

        Raises:
            ValueError: if no input tile of at most ``max_input_tile`` voxels suits the network.
        """
        candidates = self.input_tiles(axis, max_input_tile)
        if not candidates:
            raise ValueError(
                f"max_input_tile {max_input_tile} on spatial axis {axis} is smaller than the smallest input tile "
                f"this {self.network.conv_mode.value}-mode network accepts ({self.smallest_input_tile(axis)} voxels)."
            )
        covering = [size for size in candidates if size - 2 * self.margin[axis] >= image_size]
        return (covering[0] if covering else candidates[-1]) - 2 * self.margin[axis]


def _axes(values: tuple[int, ...]) -> str:
    """``values`` as one number if all axes agree, else as the tuple."""
    return str(values[0]) if len(set(values)) == 1 else str(values)


def tile_starts(image_size: int, output_tile: int, divisor: int) -> list[int]:
    """Starts of the output tiles along an axis, in image voxels (also their input tiles' padded starts).

    Tiles advance by the largest multiple of ``divisor`` that is at most ``output_tile``, so consecutive tiles
    overlap by ``output_tile % divisor`` voxels (computed identically by both), and the last tile may run past
    the image into the mirrored border, to be cropped.

    Args:
        image_size: voxels of the image along the axis.
        output_tile: output tile size, at least ``divisor``.
        divisor: the network's pooling factor.

    Returns:
        Tile starts, ascending, the first 0.
    """
    stride = output_tile - output_tile % divisor
    count = 1 + max(0, -(-(image_size - output_tile) // stride))
    return [k * stride for k in range(count)]


def mirror_pad(image: torch.Tensor, padding: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Pads the spatial axes of ``image`` by mirroring at its borders, as often as needed.

    Unlike ``torch.nn.functional.pad(mode="reflect")`` the padding may exceed the image: the image is
    reflected again and again (without repeating the border voxel, as NumPy's ``"reflect"`` mode), so a
    padded voxel's value depends only on its position.

    Args:
        image: tensor of shape ``(B, C, *S)``.
        padding: ``(before, after)`` voxels per spatial axis, in the order of ``S``.

    Returns:
        Tensor of shape ``(B, C, *(S + before + after))``.
    """
    if len(padding) != image.dim() - 2:
        raise ValueError(
            f"padding needs one (before, after) pair per spatial axis, got {len(padding)} pairs."
        )
    for axis, (before, after) in enumerate(padding, start=2):
        size = image.shape[axis]
        positions = torch.arange(-before, size + after, device=image.device)
        if size == 1:
            index = torch.zeros_like(positions)
        else:
            period = 2 * (size - 1)
            folded = positions % period
            index = torch.where(folded < size, folded, period - folded)
        image = image.index_select(axis, index)
    return image
