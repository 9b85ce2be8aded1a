"""Geometry of overlap-tile inference along one axis, and mirror padding of any extent.

A network is described by a :class:`TileGeometry`: how many voxels of context it needs at each side of an
output tile (``margin``), the factor its pooling divides sizes by (``divisor``), and which input tile sizes
it accepts. Every function here works in voxels along one spatial axis unless it says otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from unet_med.networks import sizing

__all__ = ["TileGeometry", "mirror_pad", "tile_starts"]

SAME_MODE_MARGIN = 16


@dataclass(frozen=True)
class TileGeometry:
    """What overlap-tile inference needs to know about a network.

    Attributes:
        conv_mode: ``"valid"`` (the output is ``2 * margin`` smaller than the input) or ``"same"`` (the output
            has the input's size; ``margin`` voxels of each output tile's border are computed but discarded).
        margin: context in voxels at each side of an output tile.
        divisor: the network pools sizes by this factor; tiles start at multiples of it in the padded image,
            so that every tile sees the same pooling grid as the whole image would.
        depth: number of levels of a :class:`~unet_med.networks.UNet` (``None`` for other networks).
        kernel_size: convolution kernel size of a :class:`~unet_med.networks.UNet` (``None`` for others).
    """

    conv_mode: str
    margin: int
    divisor: int
    depth: int | None = None
    kernel_size: int | None = None

    @classmethod
    def of(cls, network: object, margin: int | None = None) -> TileGeometry:
        """Reads the geometry from a network's ``conv_mode``, ``depth``, ``kernel_size`` and ``margin``.

        Args:
            network: a :class:`~unet_med.networks.UNet`, or any size-preserving network (one without a
                ``conv_mode`` attribute counts as a same-mode network with a divisor of 1).
            margin: context in voxels per side for same-mode networks (default
                ``SAME_MODE_MARGIN = 16``); for valid-mode networks ``None`` or the network's own margin.

        Raises:
            ValueError: for a negative margin, or one that contradicts a valid-mode network's.
        """
        if margin is not None and margin < 0:
            raise ValueError(f"margin must be at least 0 voxels, got {margin}.")
        conv_mode = getattr(network, "conv_mode", "same")
        depth = getattr(network, "depth", None)
        kernel_size = getattr(network, "kernel_size", None)
        divisor = sizing.divisor(depth) if depth is not None else 1
        if conv_mode == "valid":
            if margin is not None and margin != network.margin:
                raise ValueError(
                    f"a valid-mode network fixes the margin to {network.margin} voxels; got margin={margin}. "
                    "Leave margin unset for valid-mode networks."
                )
            return cls("valid", network.margin, divisor, depth, kernel_size)
        if conv_mode != "same":
            raise ValueError(f"network.conv_mode must be 'same' or 'valid', got {conv_mode!r}.")
        return cls("same", SAME_MODE_MARGIN if margin is None else margin, divisor, depth, kernel_size)

    def input_tiles(self, max_size: int) -> list[int]:
        """Input tile sizes up to ``max_size``, ascending, with output tiles of ``divisor`` voxels or more."""
        if self.conv_mode == "valid":
            sizes = sizing.valid_input_sizes(self.depth, self.kernel_size, max_size)
        else:
            sizes = list(range(self.divisor, max_size + 1, self.divisor))
        return [size for size in sizes if size - 2 * self.margin >= self.divisor]

    def smallest_input_tile(self) -> int:
        """The smallest input tile the network accepts (its output tile is ``divisor`` to ``2 * divisor``)."""
        # Accepted sizes are ``divisor`` apart, and the first one has an output of 1 to ``divisor`` voxels.
        return self.input_tiles(2 * self.margin + 2 * self.divisor)[0]

    def check_output_tile(self, output_tile: int, axis: int) -> int:
        """Returns ``output_tile`` if its input tile ``output_tile + 2 * margin`` suits the network.

        Raises:
            ValueError: otherwise, naming the nearest output tile sizes that suit it.
        """
        input_tile = output_tile + 2 * self.margin
        candidates = self.input_tiles(input_tile + self.divisor)
        if input_tile in candidates:
            return output_tile
        below = [size for size in candidates if size < input_tile][-1:]
        above = [size for size in candidates if size > input_tile][:1] or [self.smallest_input_tile()]
        nearest = " or ".join(str(size - 2 * self.margin) for size in below + above)
        rule = "a valid input size" if self.conv_mode == "valid" else f"a multiple of {self.divisor}"
        raise ValueError(
            f"output_tile {output_tile} on spatial axis {axis} does not suit this {self.conv_mode}-mode "
            f"network (margin {self.margin}, divisor {self.divisor}): its input tile {input_tile} must be "
            f"{rule} and its output at least {self.divisor} voxels. The nearest valid output tiles are "
            f"{nearest}."
        )

    def choose_output_tile(self, image_size: int, max_input_tile: int, axis: int) -> int:
        """The output tile for an axis of ``image_size`` voxels when none is given.

        The smallest tile that covers the image in one piece if its input tile is at most ``max_input_tile``,
        else the largest tile whose input tile is at most ``max_input_tile``.

        Raises:
            ValueError: if no input tile of at most ``max_input_tile`` voxels suits the network.
        """
        candidates = self.input_tiles(max_input_tile)
        if not candidates:
            raise ValueError(
                f"max_input_tile {max_input_tile} on spatial axis {axis} is smaller than the smallest input "
                f"tile this {self.conv_mode}-mode network accepts ({self.smallest_input_tile()} voxels)."
            )
        covering = [size for size in candidates if size - 2 * self.margin >= image_size]
        return (covering[0] if covering else candidates[-1]) - 2 * self.margin


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
