"""The geometry of a U-Net: which input sizes it takes, what output sizes it gives, how much context it needs.

A U-Net of ``depth`` levels pools ``depth - 1`` times. Pooling ``l`` (between levels ``l - 1`` and ``l``) divides
each spatial axis by its stride on that axis, so level ``l`` works at a *scale* of ``P_l``, the product of the
strides of the first ``l`` poolings (``P_0 = 1``), and the *divisor* of an axis is the scale of the bottleneck.
Level ``l``'s two convolutions (and, below the bottleneck, the decoder's two) have the kernel size ``k_l`` on
that axis. Everything below is per spatial axis, in voxels.

* **Context**: voxels of input that the convolutions reach beyond an output voxel on each side,
  ``sum_l (k_l - 1) * P_l`` over the encoder levels plus the same sum over the decoder levels (all but the
  bottleneck). 92 for the paper's network (5 levels, 3x3 kernels, strides 2).
* ``"same"`` mode (padded convolutions): the output has the input's size. Sizes that the divisor divides run as
  they are; the network zero-pads other sizes internally and crops its output back, so any size works. The
  network loses no margin.
* ``"valid"`` mode (unpadded convolutions, as in the paper): the output is ``2 * margin`` smaller than the input,
  with ``margin = context``, and only inputs whose every pooled feature map divides by the next stride are
  taken: ``divisor * b + E`` for a bottleneck of ``b`` voxels, ``E = 2 * sum_l (k_l - 1) * P_l``, and ``b``
  large enough for an output of one voxel. For the paper's network these are ``16 * b + 124``, ``b >= 4``:
  572 gives 388.

In both modes the *valid input sizes* of an axis (those the network runs without internal padding) start at
``smallest_input_size`` and step by ``divisor``.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import torch

__all__ = ["ConvMode", "UNetGeometry", "geometry_of"]


class ConvMode(str, Enum):
    """How the U-Net's convolutions treat borders; a ``str`` so that YAML's ``"same"``/``"valid"`` work."""

    SAME = "same"
    """Padded convolutions: the output has the input's size."""
    VALID = "valid"
    """Unpadded convolutions with centre-cropped skip connections (the paper's): the output is smaller."""

    @classmethod
    def parse(cls, value: ConvMode | str) -> ConvMode:
        """``value`` as a :class:`ConvMode`.

        Raises:
            ValueError: if ``value`` names no mode.
        """
        try:
            return cls(value)
        except ValueError:
            raise ValueError(
                f"conv_mode must be one of {tuple(mode.value for mode in cls)}, got {value!r}."
            ) from None


@dataclass(frozen=True)
class UNetGeometry:
    """Sizes, margins and valid inputs of a U-Net, per spatial axis.

    Build one with :meth:`build` (which checks the U-Net's arguments) or read it from a network as
    ``net.geometry`` or :func:`geometry_of`. Sizes are in voxels; a tuple has one entry per spatial axis.

    Attributes:
        conv_mode: :class:`ConvMode` of the convolutions.
        strides: per pooling (``depth - 1`` of them), its stride per spatial axis; pooling and up-sampling by
            that factor.
        kernel_sizes: per level (``depth`` of them), the odd kernel size of its convolutions per spatial axis.

    Example:
        >>> paper = UNetGeometry.build(spatial_dims=2, depth=5, conv_mode="valid")
        >>> paper.margin, paper.divisor, paper.output_size(572)
        ((92, 92), (16, 16), (388, 388))
    """

    conv_mode: ConvMode
    strides: tuple[tuple[int, ...], ...]
    kernel_sizes: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "conv_mode", ConvMode.parse(self.conv_mode))  # "valid" from YAML works too

    @classmethod
    def build(
        cls,
        spatial_dims: int,
        depth: int,
        kernel_size: int | Sequence[int | Sequence[int]] = 3,
        strides: Sequence[int | Sequence[int]] | None = None,
        conv_mode: ConvMode | str = ConvMode.SAME,
    ) -> UNetGeometry:
        """The geometry of a U-Net with these arguments, checked.

        Args:
            spatial_dims: 2 or 3.
            depth: number of levels (``len(features)``), at least 1.
            kernel_size: an odd int for every level and axis, or one entry per level (``depth`` entries), each
                an odd int or one odd int per spatial axis, e.g. ``[[3, 3, 1], [3, 3, 3], [3, 3, 3]]``.
            strides: ``None`` for 2 on every axis at every pooling, or one entry per pooling (``depth - 1``
                entries), each a positive int or one per spatial axis, e.g. ``[[2, 2, 1], [2, 2, 2]]``.
            conv_mode: ``"same"`` or ``"valid"``.

        Raises:
            ValueError: one line naming the argument and what it must be.
        """
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if depth < 1:
            raise ValueError(f"depth must be at least 1 (the number of levels), got {depth}.")
        mode = ConvMode.parse(conv_mode)
        kernels = _per_level(kernel_size, depth, spatial_dims, "kernel_size", "level")
        if any(k < 1 or k % 2 == 0 for axes in kernels for k in axes):
            raise ValueError(f"kernel_size must hold positive odd numbers only, got {kernel_size!r}.")
        pooling = _per_level(2 if strides is None else strides, depth - 1, spatial_dims, "strides", "pooling")
        if any(s < 1 for axes in pooling for s in axes):
            raise ValueError(f"strides must hold positive numbers only, got {strides!r}.")
        return cls(mode, pooling, kernels)

    @classmethod
    def size_preserving(cls, spatial_dims: int) -> UNetGeometry:
        """The geometry assumed for networks that have none: same mode, divisor 1, no context."""
        return cls.build(spatial_dims, depth=1, kernel_size=1)

    @property
    def spatial_dims(self) -> int:
        """Number of spatial axes."""
        return len(self.kernel_sizes[0])

    @property
    def depth(self) -> int:
        """Number of levels."""
        return len(self.kernel_sizes)

    @property
    def scales(self) -> tuple[tuple[int, ...], ...]:
        """Per level, the factor per axis by which its feature maps are smaller than the input (level 0: 1)."""
        scales = [(1,) * self.spatial_dims]
        for stride in self.strides:
            scales.append(tuple(p * s for p, s in zip(scales[-1], stride, strict=True)))
        return tuple(scales)

    @property
    def divisor(self) -> tuple[int, ...]:
        """Per axis, the product of the strides: valid input sizes are this far apart."""
        return self.scales[-1]

    @property
    def context(self) -> tuple[int, ...]:
        """Per axis, the voxels the convolutions reach beyond an output voxel at each side (either mode)."""
        return tuple(
            self._removed(axis, self.depth) // 2 + self._removed(axis, self.depth - 1) // 2
            for axis in range(self.spatial_dims)
        )

    @property
    def margin(self) -> tuple[int, ...]:
        """Per axis, the voxels the output loses at each side: the context in valid mode, 0 in same mode."""
        return self.context if self.conv_mode is ConvMode.VALID else (0,) * self.spatial_dims

    @property
    def smallest_input_size(self) -> tuple[int, ...]:
        """Per axis, the smallest valid input size.

        In same mode the divisor (a bottleneck of one voxel); in valid mode the smallest size whose output has
        at least one voxel.
        """
        if self.conv_mode is ConvMode.SAME:
            return self.divisor
        sizes = []
        for axis, step in enumerate(self.divisor):
            decoder_loss = self._removed(axis, self.depth - 1)
            bottleneck = max(1, -(-(1 + decoder_loss) // step))
            sizes.append(step * bottleneck + self._removed(axis, self.depth))
        return tuple(sizes)

    def conv_padding(self, level: int) -> tuple[int, ...]:
        """Per axis, the zero padding of level ``level``'s convolutions: ``k // 2`` in same mode, else 0."""
        if self.conv_mode is ConvMode.VALID:
            return (0,) * self.spatial_dims
        return tuple(k // 2 for k in self.kernel_sizes[level])

    def valid_input_sizes(self, axis: int, max_size: int) -> list[int]:
        """The valid input sizes of spatial axis ``axis`` up to ``max_size``, smallest first."""
        return list(range(self.smallest_input_size[axis], max_size + 1, self.divisor[axis]))

    def nearest_valid_sizes(self, axis: int, size: int) -> list[int]:
        """``[size]`` if it is a valid input size of axis ``axis``, else the valid sizes just below and above it.

        Returns:
            One or two sizes, ascending (only the smallest valid size for a ``size`` below it).
        """
        smallest, step = self.smallest_input_size[axis], self.divisor[axis]
        if size <= smallest:
            return [smallest]
        below = smallest + (size - smallest) // step * step
        return [below] if below == size else [below, below + step]

    def output_size(self, input_size: int | Sequence[int]) -> tuple[int, ...]:
        """The network's output size for ``input_size``.

        Args:
            input_size: an int for every axis or one size per spatial axis, in voxels.

        Returns:
            Per axis: the input size in same mode (any size of at least 1 voxel), ``input - 2 * margin`` in
            valid mode (388 for 572 in the paper's network).

        Raises:
            ValueError: for a size the network cannot take, naming the axis and the nearest valid sizes.
        """
        sizes = self._per_axis(input_size, "input_size")
        for axis, size in enumerate(sizes):
            smallest, step = self.smallest_input_size[axis], self.divisor[axis]
            if self.conv_mode is ConvMode.SAME and size >= 1:
                continue
            if self.conv_mode is ConvMode.VALID and size >= smallest and (size - smallest) % step == 0:
                continue
            nearest = " or ".join(map(str, self.nearest_valid_sizes(axis, size)))
            raise ValueError(
                f"input size {size} on spatial axis {axis} does not fit this {self.conv_mode.value}-mode U-Net "
                f"(divisor {step}, margin {self.margin[axis]}); the nearest valid sizes are {nearest}."
            )
        return tuple(size - 2 * margin for size, margin in zip(sizes, self.margin, strict=True))

    def input_size_for_output(self, output_size: int | Sequence[int]) -> tuple[int, ...]:
        """The smallest valid input size whose output has at least ``output_size`` voxels, per axis.

        Args:
            output_size: wanted output size, an int for every axis or one per spatial axis, in voxels.

        Returns:
            Per axis, a valid input size (572 for 388 in the paper's network; in same mode the multiple of the
            divisor at or above ``output_size``).
        """
        wanted = self._per_axis(output_size, "output_size")
        sizes = []
        for axis, size in enumerate(wanted):
            smallest, step = self.smallest_input_size[axis], self.divisor[axis]
            needed = size + 2 * self.margin[axis]
            sizes.append(smallest + max(0, -(-(needed - smallest) // step)) * step)
        return tuple(sizes)

    def _removed(self, axis: int, levels: int) -> int:
        """Voxels of input that one pass of the first ``levels`` levels' double convolutions removes on ``axis``."""
        levels_used = zip(self.kernel_sizes[:levels], self.scales[:levels], strict=True)
        return sum(2 * (kernel[axis] - 1) * scale[axis] for kernel, scale in levels_used)

    def _per_axis(self, size: int | Sequence[int], name: str) -> tuple[int, ...]:
        """``size`` for every axis if an int, else checked to have one entry per spatial axis."""
        if isinstance(size, numbers.Integral):
            return (int(size),) * self.spatial_dims
        sizes = tuple(int(s) for s in size)
        if len(sizes) != self.spatial_dims or min(sizes) < 1:
            raise ValueError(
                f"{name} must be a positive int or one per spatial axis ({self.spatial_dims}), got {size!r}."
            )
        return sizes


def geometry_of(network: object, spatial_dims: int) -> UNetGeometry:
    """The geometry of ``network``, looking through the wrappers of data-parallel training and compilation.

    ``torch.nn.DataParallel`` and ``DistributedDataParallel`` keep the network as ``.module``, ``torch.compile``
    as ``._orig_mod``; both are unwrapped (repeatedly) before the network's ``geometry`` is read.

    Args:
        network: a :class:`~unet_med.networks.UNet`, possibly wrapped, or any other network or callable.
        spatial_dims: spatial axes of the inputs, for networks without a geometry.

    Returns:
        The network's :class:`UNetGeometry`, or, for networks without one (MONAI's ``BasicUNet``, a
        function), :meth:`UNetGeometry.size_preserving`: a same-mode network whose inputs may have any size.
    """
    while isinstance(network, torch.nn.Module):
        geometry = network.__dict__.get("geometry")
        if isinstance(geometry, UNetGeometry):
            return geometry
        children = dict(network.named_children())
        inner = children.get("module", children.get("_orig_mod"))
        if inner is None:
            break
        network = inner
    return UNetGeometry.size_preserving(spatial_dims)


def _per_level(
    value: int | Sequence[int | Sequence[int]], count: int, spatial_dims: int, name: str, entry: str
) -> tuple[tuple[int, ...], ...]:
    """``value`` as ``count`` entries of one int per spatial axis: an int is repeated, a sequence checked.

    Raises:
        ValueError: if ``value`` is neither an int nor ``count`` entries of an int or ``spatial_dims`` ints.
    """
    if isinstance(value, numbers.Integral):
        return ((int(value),) * spatial_dims,) * count
    problem = (
        f"{name} must be an int or one entry per {entry} ({count}), each an int or one int per spatial axis "
        f"({spatial_dims}); got {value!r}."
    )
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != count:
        raise ValueError(problem)
    entries = []
    for item in value:
        if isinstance(item, numbers.Integral):
            entries.append((int(item),) * spatial_dims)
        elif isinstance(item, Sequence) and len(item) == spatial_dims and all(
            isinstance(i, numbers.Integral) for i in item
        ):
            entries.append(tuple(int(i) for i in item))
        else:
            raise ValueError(problem)
    return tuple(entries)
