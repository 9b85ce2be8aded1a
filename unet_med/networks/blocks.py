"""Building blocks of the U-Net: the double convolution, up-sampling and centre cropping."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers.factories import Conv
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["ConvBlock", "UpSample", "center_crop"]


class ConvBlock(nn.Module):
    """Two convolutions, each followed by normalisation and activation: one level of the U-Net.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the input.
        out_channels: channels of both convolutions' outputs.
        kernel_size: odd kernel size of both convolutions, an int or one per spatial axis.
        padding: zero padding of both convolutions, an int or one per spatial axis: ``kernel_size // 2`` for
            "same" convolutions, 0 for "valid" (unpadded) ones.
        act: MONAI activation spec, e.g. ``("leakyrelu", {"negative_slope": 0.01})``.
        norm: MONAI normalisation spec, or ``None`` for none.
        bias: whether the convolutions have a bias.
        checkpointing: recompute this block's activations in the backward pass instead of storing them.

    Shapes:
        ``(B, in_channels, *S)`` to ``(B, out_channels, *S')`` with ``S' = S`` (same) or
        ``S - 2 * (kernel_size - 1)`` per axis (valid).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        padding: int | Sequence[int],
        act: str | tuple,
        norm: str | tuple | None,
        bias: bool,
        checkpointing: bool = False,
    ) -> None:
        super().__init__()
        conv_type = Conv[Conv.CONV, spatial_dims]
        layers: list[nn.Module] = []
        for channels_in in (in_channels, out_channels):
            layers.append(conv_type(channels_in, out_channels, kernel_size, padding=padding, bias=bias))
            if norm is not None:
                layers.append(get_norm_layer(norm, spatial_dims, out_channels))
            layers.append(get_act_layer(act))
        self.layers = nn.Sequential(*layers)
        self.checkpointing = checkpointing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Applies both convolutions to ``x`` of shape ``(B, in_channels, *S)``."""
        if self.checkpointing and self.training and not torch.jit.is_scripting():
            return self._checkpointed_forward(x)
        return self.layers(x)

    @torch.jit.unused
    def _checkpointed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return checkpoint(self.layers, x, use_reentrant=False)


class UpSample(nn.Sequential):
    """Multiplies each spatial size by its factor in ``scale`` and maps ``in_channels`` to ``out_channels``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the coarser feature map.
        out_channels: channels after up-sampling (half of ``in_channels`` in the paper).
        mode: ``"deconv"``, a transposed convolution whose kernel and stride are ``scale`` (2x2(x2) with stride 2
            in the paper: its "up-convolution"), or ``"nontrainable"``, (bi/tri)linear interpolation by ``scale``
            followed by a 1x1(x1) convolution.
        bias: whether the convolution has a bias.
        scale: up-sampling factor per spatial axis (the stride of the pooling it mirrors).

    Shapes:
        ``(B, in_channels, *S)`` to ``(B, out_channels, *(S * scale))``.
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, mode: str, bias: bool, scale: Sequence[int]
    ) -> None:
        scale = tuple(int(factor) for factor in scale)
        if mode == "deconv":
            layers = [Conv[Conv.CONVTRANS, spatial_dims](in_channels, out_channels, scale, stride=scale, bias=bias)]
        elif mode == "nontrainable":
            interpolation = "bilinear" if spatial_dims == 2 else "trilinear"
            layers = [
                nn.Upsample(scale_factor=tuple(map(float, scale)), mode=interpolation, align_corners=False),
                Conv[Conv.CONV, spatial_dims](in_channels, out_channels, 1, bias=bias),
            ]
        else:
            raise ValueError(f"up_mode must be 'deconv' or 'nontrainable', got {mode!r}.")
        super().__init__(*layers)


def center_crop(x: torch.Tensor, size: list[int]) -> torch.Tensor:
    """Crops the last ``len(size)`` axes of ``x`` to ``size`` around their centre.

    Args:
        x: tensor of shape ``(..., *S)``.
        size: target spatial size, each no larger than the matching axis of ``S``.

    Returns:
        A view of ``x`` of shape ``(..., *size)``; ``x`` itself when it already has that size.
    """
    first_axis = x.dim() - len(size)
    for offset, target in enumerate(size):
        axis = first_axis + offset
        excess = x.shape[axis] - target
        if excess:
            x = x.narrow(axis, excess // 2, target)
    return x
