"""Input and output sizes of the U-Net, per spatial axis.

A U-Net of ``depth`` levels pools ``depth - 1`` times by 2, so:

* In ``"same"`` mode (padded convolutions) the output has the input's size, and a size is valid when
  ``2 ** (depth - 1)`` divides it (:class:`~unet_med.networks.UNet` pads other sizes internally).
* In ``"valid"`` mode (unpadded convolutions, as in the U-Net paper) every convolution of kernel size ``k``
  removes ``k - 1`` voxels, so the output is smaller than the input by twice the :func:`context_margin`, and
  only some input sizes keep every pooled feature map even. For the paper's network (depth 5, 3x3 kernels)
  the valid inputs are ``16 * b + 124`` for a bottleneck size ``b >= 4``: 572 gives 388, with a margin of 92.

Every function here works on one axis in voxels; apply it per axis for anisotropic tiles.
"""

from __future__ import annotations

__all__ = [
    "check_geometry",
    "context_margin",
    "divisor",
    "nearest_valid_input_sizes",
    "valid_input_size_for_output",
    "valid_input_sizes",
    "valid_output_size",
]


def check_geometry(depth: int, kernel_size: int) -> None:
    """Raises a ``ValueError`` unless ``depth >= 1`` and ``kernel_size`` is a positive odd number."""
    if depth < 1:
        raise ValueError(f"depth must be at least 1 (the number of levels), got {depth}.")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}.")


def divisor(depth: int) -> int:
    """Factor by which a ``depth``-level U-Net pools each axis: ``2 ** (depth - 1)``."""
    check_geometry(depth, 3)
    return 2 ** (depth - 1)


def context_margin(depth: int, kernel_size: int = 3) -> int:
    """Voxels that a valid-mode network removes at each side of each axis.

    The output of a valid-mode U-Net covers the centre of its input, ``2 * margin`` voxels smaller per axis.
    Overlap-tile inference pads the image by this margin (mirrored) so that the output covers all of it.

    Args:
        depth: number of levels (length of ``features``).
        kernel_size: convolution kernel size (odd).

    Returns:
        The margin in voxels (92 for the paper's depth-5 network with 3x3 kernels).
    """
    check_geometry(depth, kernel_size)
    # Each level's two convolutions remove 2 * (k - 1) voxels at that level's scale: once on the way down and
    # once on the way up for levels 0..depth-2, once for the bottleneck at scale 2 ** (depth - 1).
    per_conv_pair = kernel_size - 1
    return per_conv_pair * (3 * 2 ** (depth - 1) - 2)


def _input_from_bottleneck(bottleneck: int, depth: int, kernel_size: int) -> int:
    """Input size whose bottleneck feature map (after its convolutions) has ``bottleneck`` voxels."""
    return divisor(depth) * bottleneck + 2 * (kernel_size - 1) * (2**depth - 1)


def _smallest_bottleneck(depth: int, kernel_size: int) -> int:
    """Smallest bottleneck size whose valid-mode output is at least one voxel.

    The output is ``divisor * b - 2 * (k - 1) * (divisor - 1)`` for a bottleneck of ``b`` voxels.
    """
    step = divisor(depth)
    return max(1, -(-(1 + 2 * (kernel_size - 1) * (step - 1)) // step))


def valid_input_sizes(depth: int, kernel_size: int = 3, max_size: int = 1024) -> list[int]:
    """All valid-mode input sizes up to ``max_size``, smallest first.

    Args:
        depth: number of levels.
        kernel_size: convolution kernel size (odd).
        max_size: largest size to list, in voxels.

    Returns:
        The sizes for which every pooled feature map is even and the output is at least one voxel.
    """
    sizes = []
    bottleneck = _smallest_bottleneck(depth, kernel_size)
    while (size := _input_from_bottleneck(bottleneck, depth, kernel_size)) <= max_size:
        sizes.append(size)
        bottleneck += 1
    return sizes


def nearest_valid_input_sizes(size: int, depth: int, kernel_size: int = 3, conv_mode: str = "valid") -> list[int]:
    """The valid input sizes just below and just above ``size`` (one of them if ``size`` is below all).

    Args:
        size: an input size in voxels.
        depth: number of levels.
        kernel_size: convolution kernel size (odd).
        conv_mode: ``"valid"`` or ``"same"``.

    Returns:
        One or two sizes, ascending.
    """
    if conv_mode == "same":
        step = divisor(depth)
        below = size // step * step
        return [s for s in (below, below + step) if s >= step and s != size] or [step]
    smallest = _input_from_bottleneck(_smallest_bottleneck(depth, kernel_size), depth, kernel_size)
    if size <= smallest:
        return [smallest]
    step = divisor(depth)
    below = smallest + (size - smallest) // step * step
    return [below] if below == size else [below, below + step]


def valid_output_size(input_size: int, depth: int, kernel_size: int = 3) -> int:
    """Output size of a valid-mode network for ``input_size``.

    Args:
        input_size: input size in voxels along one axis.
        depth: number of levels.
        kernel_size: convolution kernel size (odd).

    Returns:
        ``input_size - 2 * context_margin(depth, kernel_size)`` (388 for 572 in the paper's network).

    Raises:
        ValueError: if a pooled feature map would be odd or the output empty; the message names the nearest
            valid sizes.
    """
    check_geometry(depth, kernel_size)
    smallest = _input_from_bottleneck(_smallest_bottleneck(depth, kernel_size), depth, kernel_size)
    if input_size < smallest or (input_size - smallest) % divisor(depth):
        nearest = " or ".join(map(str, nearest_valid_input_sizes(input_size, depth, kernel_size)))
        raise ValueError(
            f"input size {input_size} does not fit a valid-mode U-Net of depth {depth} and kernel size "
            f"{kernel_size}; the nearest valid sizes are {nearest}."
        )
    return input_size - 2 * context_margin(depth, kernel_size)


def valid_input_size_for_output(output_size: int, depth: int, kernel_size: int = 3) -> int:
    """Smallest valid-mode input size whose output has at least ``output_size`` voxels.

    Args:
        output_size: wanted output size in voxels.
        depth: number of levels.
        kernel_size: convolution kernel size (odd).

    Returns:
        The input size (572 for an output of 388 in the paper's network).
    """
    check_geometry(depth, kernel_size)
    if output_size < 1:
        raise ValueError(f"output_size must be at least 1, got {output_size}.")
    smallest = _input_from_bottleneck(_smallest_bottleneck(depth, kernel_size), depth, kernel_size)
    needed = output_size + 2 * context_margin(depth, kernel_size)
    steps = max(0, -(-(needed - smallest) // divisor(depth)))
    return smallest + steps * divisor(depth)
