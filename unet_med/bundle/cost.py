"""What a planned U-Net costs: training memory, floating-point operations, and seconds on this device.

The counts follow the layers of :class:`unet_med.networks.UNet` with per-level strides and kernels: per level a
double convolution on the way down (the bottleneck's included) and, for every level but the bottleneck, a
transposed convolution up from the level below, a concatenation with the skip and a double convolution on the
way up; a 1x1 head.

**Memory** (:func:`training_memory_bytes`): float32 tensors that autograd keeps for the backward pass, per patch:
each convolution keeps its output (the normalisation's input) and the normalisation's output (the in-place
activation's), 2 tensors of the level's width; a down level keeps 2 of them per convolution (4), a up level
4 more, the up-sampled map (1) and the concatenation (2): 11 maps of ``f_l`` channels at that level's size, 4
at the bottleneck. On top: the input, the logits with their softmax and one-hot target (3 maps of the class
count), the largest transient gradient (2 maps of the top level), and weights, their gradients and AdamW's two
moments (4 copies of the parameters). Measured against a real training step of ``UNet`` on the CPU in
``docs/planning.md``.

**Time** (:func:`training_flops`, :func:`measure_flops_per_second`): a training step costs 3x the forward
convolutions' ``2 * k^d * c_in * c_out * voxels_out`` multiply-adds (backward: gradients of the inputs and of the
weights). Seconds follow from a throughput measured by one timed forward and backward pass of a ``UNet`` with
the planned widths on a small isotropic patch on this device (a throughput, operations per second, which the
per-axis strides of the planned network change little); the planned network itself is counted, not built.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence

__all__ = [
    "conv_layers",
    "measure_flops_per_second",
    "parameter_count",
    "training_flops",
    "training_memory_bytes",
]

BYTES_PER_VALUE = 4  # float32
MAPS_PER_UP_LEVEL = 11
MAPS_AT_BOTTLENECK = 4


def _level_shapes(patch: Sequence[int], strides: Sequence[Sequence[int]]) -> list[list[int]]:
    """The feature map shape at every level (``len(strides) + 1`` levels)."""
    shapes = [list(patch)]
    for stride in strides:
        shapes.append([max(1, size // s) for size, s in zip(shapes[-1], stride)])
    return shapes


def conv_layers(
    patch: Sequence[int],
    features: Sequence[int],
    strides: Sequence[Sequence[int]],
    kernels: Sequence[Sequence[int]],
    in_channels: int,
    out_channels: int,
) -> Iterator[tuple[int, int, int, int]]:
    """Every convolution of the planned U-Net as ``(kernel voxels, in channels, out channels, output voxels)``.

    Args:
        patch: input size per spatial axis, voxels.
        features: channels per level.
        strides: per pooling, one stride per axis (``len(features) - 1`` entries).
        kernels: per level, one kernel size per axis.
        in_channels: image channels.
        out_channels: classes.
    """
    shapes = _level_shapes(patch, strides)
    for level, width in enumerate(features):
        voxels, taps = math.prod(shapes[level]), math.prod(kernels[level])
        previous = in_channels if level == 0 else features[level - 1]
        yield taps, previous, width, voxels
        yield taps, width, width, voxels
        if level < len(features) - 1:
            yield math.prod(strides[level]), features[level + 1], width, voxels  # transposed convolution up
            yield taps, 2 * width, width, voxels
            yield taps, width, width, voxels
    yield 1, features[0], out_channels, math.prod(patch)


def parameter_count(
    features: Sequence[int], strides: Sequence[Sequence[int]], kernels: Sequence[Sequence[int]], in_channels: int,
    out_channels: int,
) -> int:
    """Weights of the planned U-Net (biases and normalisation parameters left out: < 1%)."""
    patch = [1] * len(kernels[0])
    return sum(taps * c_in * c_out for taps, c_in, c_out, _ in
               conv_layers(patch, features, strides, kernels, in_channels, out_channels))


def training_flops(
    patch: Sequence[int],
    batch: int,
    features: Sequence[int],
    strides: Sequence[Sequence[int]],
    kernels: Sequence[Sequence[int]],
    in_channels: int,
    out_channels: int,
) -> float:
    """Floating-point operations of one training step (forward and backward) on ``batch`` patches."""
    forward = sum(2.0 * taps * c_in * c_out * voxels for taps, c_in, c_out, voxels in
                  conv_layers(patch, features, strides, kernels, in_channels, out_channels))
    return 3.0 * forward * batch


def training_memory_bytes(
    patch: Sequence[int],
    batch: int,
    features: Sequence[int],
    strides: Sequence[Sequence[int]],
    kernels: Sequence[Sequence[int]],
    in_channels: int,
    out_channels: int,
) -> float:
    """Estimated peak memory of one training step, bytes (see the module's docstring for what it counts)."""
    shapes = _level_shapes(patch, strides)
    maps = 0.0
    for level, width in enumerate(features):
        per_level = MAPS_AT_BOTTLENECK if level == len(features) - 1 else MAPS_PER_UP_LEVEL
        maps += per_level * width * math.prod(shapes[level])
    top = math.prod(patch)
    maps += (in_channels + 3 * out_channels + 2 * features[0]) * top
    weights = 4 * parameter_count(features, strides, kernels, in_channels, out_channels)
    return BYTES_PER_VALUE * (batch * maps + weights)


def measure_flops_per_second(
    spatial_dims: int, features: Sequence[int], in_channels: int, out_channels: int, device: str = "cpu",
    size: int | None = None, repeats: int = 2,
) -> float:
    """Floating-point operations per second of a ``UNet`` training step on ``device``, timed.

    Builds ``UNet`` with the given widths, 3x3(x3) kernels and stride 2 on every axis, runs one warm-up step and
    ``repeats`` timed forward + backward passes on one patch of ``size`` voxels per axis (default 32 in 3D, 128
    in 2D, enlarged to what the depth can halve down to 4), and divides their counted operations by the time.

    Args:
        spatial_dims: 2 or 3.
        features: channels per level.
        in_channels: image channels.
        out_channels: classes.
        device: ``"cpu"`` or ``"cuda"``.
        size: patch size per axis.
        repeats: timed steps.

    Returns:
        Operations per second.
    """
    import torch

    from unet_med.networks import UNet

    depth = len(features)
    size = max(size or (32 if spatial_dims == 3 else 128), 4 * 2 ** (depth - 1))
    network = UNet(spatial_dims, in_channels, out_channels, features=features).to(device)
    patch = torch.randn(1, in_channels, *([size] * spatial_dims), device=device)
    strides = [[2] * spatial_dims] * (depth - 1)
    kernels = [[3] * spatial_dims] * depth
    flops = training_flops([size] * spatial_dims, 1, features, strides, kernels, in_channels, out_channels)

    def step() -> None:
        network.zero_grad(set_to_none=True)
        network(patch).float().square().mean().backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return flops * repeats / (time.perf_counter() - start)
