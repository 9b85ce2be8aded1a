"""The U-Net of Ronneberger, Fischer and Brox (2015) for 2D and 3D, with the options later work added."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv, Dropout, Pool
from torch import nn

from unet_med.networks.blocks import ConvBlock, UpSample, center_crop
from unet_med.networks.geometry import ConvMode, UNetGeometry

__all__ = ["UNet"]

UP_MODES = ("deconv", "nontrainable")
INITS = ("he", "xavier", None)


class UNet(nn.Module):
    """U-Net for 2D and 3D segmentation that returns raw logits.

    A contracting path of double-convolution blocks and max pooling, an expanding path of up-sampling by the
    same factors, concatenation with the (centre-cropped) skip connection and a double convolution, and a 1x1
    head. With ``features=(64, 128, 256, 512, 1024)``, ``conv_mode="valid"``, ``norm=None``, ``act="relu"``
    and ``up_mode="deconv"`` it is the paper's network: a 572x572 input gives a 388x388 output, with 31,030,658
    parameters for one input channel and two classes. The defaults follow current practice for volumetric
    data instead (nnU-Net, 3D U-Net): padded convolutions, instance normalisation, leaky ReLU.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: input channels (imaging modalities).
        out_channels: output channels (classes, background included).
        features: channels of each level, from the full-resolution level to the bottleneck; its length is the
            depth, and the network pools ``len(features) - 1`` times.
        kernel_size: odd kernel size of the double-convolution blocks: an int for every level and axis (3 in the
            paper), or one entry per level (``len(features)`` entries, full resolution first), each an odd int
            or one odd int per spatial axis, e.g. ``[[3, 3, 1], [3, 3, 1], [3, 3, 3], [3, 3, 3]]`` for a 3D
            network that does not convolve across the coarse third axis at its two finest levels.
        strides: the pooling factors: ``None`` (default) for 2 on every axis at every pooling (the paper's), or
            one entry per pooling (``len(features) - 1`` entries, finest first), each a positive int or one per
            spatial axis, e.g. ``[[2, 2, 1], [2, 2, 2], [2, 2, 2]]`` for a volume whose third axis is coarse.
            Pooling ``l`` (into level ``l``) is a max pooling with kernel and stride ``strides[l - 1]``; the
            up-sampling back mirrors it.
        act: MONAI activation spec: a name or a ``(name, kwargs)`` pair (a two-item list from YAML works too).
            The paper uses ``"relu"``.
        norm: MONAI normalisation spec (``"batch"``, ``"instance"``, ``("group", {"num_groups": 8})``, ...) or
            ``None``. The paper had none; 3D U-Net added batch normalisation.
        dropout: dropout probability applied to the bottleneck's output, the end of the contracting path,
            where the paper put it. 0 disables it.
        bias: whether convolutions followed by a normalisation have a bias; ``None`` (default) means only when
            ``norm`` is ``None``, since a normalisation removes any bias. Up-sampling convolutions and heads
            always have one.
        conv_mode: a :class:`~unet_med.networks.geometry.ConvMode` or its value: ``"same"`` (padded
            convolutions; output size equals input size; inputs that the divisor, the product of the strides,
            does not divide are zero-padded internally and the output cropped back) or ``"valid"`` (unpadded
            convolutions and centre-cropped skips, as in the paper; the output is ``2 * margin`` smaller per
            axis and other input sizes are refused). ``net.geometry`` gives the margins and valid sizes.
        up_mode: ``"deconv"`` (transposed convolution with kernel and stride equal to the pooling's stride,
            the paper's 2x2 "up-convolution") or ``"nontrainable"`` ((bi/tri)linear interpolation by the
            stride followed by a 1x1 convolution).
        init: ``"he"`` (zero-mean Gaussian with std ``sqrt(2 / N)``, N the incoming connections of a unit: the
            paper's), ``"xavier"`` (Glorot normal) or ``None`` (PyTorch's default). Biases start at 0.
        deep_supervision: in training mode, also return the outputs of the ``deep_supr_num`` coarser decoder
            levels, each up-sampled (nearest) by the product of the strides of the levels it skips and
            centre-cropped to the output size, stacked as ``(B, 1 + deep_supr_num, C, *S')`` with the final
            output first. In eval mode only the final output is returned, as MONAI's DynUNet
            does, so inferers work unchanged.
        deep_supr_num: number of auxiliary heads; ``None`` means every decoder level but the last
            (``depth - 2``) with deep supervision and none without. A checkpoint loads either way: auxiliary
            heads it has and the network lacks are ignored, and those it lacks keep their initialisation.
        checkpointing: recompute each block's activations during the backward pass instead of storing them:
            training takes less memory (larger patches fit) and about a third more time. Outputs and gradients
            are unchanged; batch-norm running statistics are updated twice per step.

    Attributes:
        geometry: the :class:`~unet_med.networks.geometry.UNetGeometry` of the network: per axis its margin,
            divisor, valid input sizes and output size for an input size.
        spatial_dims: number of spatial dimensions.
        features: channels of each level.

    Shapes:
        input ``(B, in_channels, *S)`` with ``len(S) == spatial_dims``; output ``(B, out_channels, *S')``,
        ``S' = S`` in same mode and ``S - 2 * geometry.margin`` in valid mode.

    Examples:
        >>> net = UNet(spatial_dims=3, in_channels=1, out_channels=3)
        >>> net(torch.zeros(1, 1, 32, 48, 32)).shape
        torch.Size([1, 3, 32, 48, 32])

        A volume whose third axis is twice as coarse as the others (e.g. 0.8 x 0.8 x 2 mm): that axis is neither
        pooled nor convolved across at the first level, so from level 1 on the voxels are nearly isotropic.

        >>> net = UNet(3, 1, 3, features=(32, 64, 128, 256), strides=[[2, 2, 1], [2, 2, 2], [2, 2, 2]],
        ...            kernel_size=[[3, 3, 1], 3, 3, 3])
        >>> net.geometry.divisor
        (8, 8, 4)
        >>> net(torch.zeros(1, 1, 40, 56, 20)).shape
        torch.Size([1, 3, 40, 56, 20])

        The paper's network, unpadded:

        >>> paper = UNet(2, 1, 2, features=(64, 128, 256, 512, 1024), conv_mode="valid", norm=None, act="relu")
        >>> paper.geometry.margin, paper.geometry.output_size(572)
        ((92, 92), (388, 388))
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] = (32, 64, 128, 256, 320),
        kernel_size: int | Sequence[int | Sequence[int]] = 3,
        strides: Sequence[int | Sequence[int]] | None = None,
        act: str | Sequence = ("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
        norm: str | Sequence | None = ("instance", {"affine": True}),
        dropout: float | None = 0.0,
        bias: bool | None = None,
        conv_mode: ConvMode | str = ConvMode.SAME,
        up_mode: str = "deconv",
        init: str | None = "he",
        deep_supervision: bool = False,
        deep_supr_num: int | None = None,
        checkpointing: bool = False,
    ) -> None:
        super().__init__()
        features = tuple(int(f) for f in features)
        _check_arguments(in_channels, out_channels, features, dropout, up_mode, init)
        self.geometry = UNetGeometry.build(spatial_dims, len(features), kernel_size, strides, conv_mode)
        self.spatial_dims = spatial_dims
        self.features = features
        depth = len(features)
        self.deep_supervision = deep_supervision
        if deep_supr_num is None:
            deep_supr_num = depth - 2 if deep_supervision else 0
        self.deep_supr_num = deep_supr_num
        if not 0 <= self.deep_supr_num <= max(depth - 2, 0):
            raise ValueError(
                f"deep_supr_num must be between 0 and depth - 2 = {max(depth - 2, 0)}, got {deep_supr_num}."
            )
        if deep_supervision and self.deep_supr_num == 0:
            raise ValueError("deep_supervision needs at least one auxiliary head: use a depth of 3 or more.")
        # Plain attributes for forward, which TorchScript compiles: the geometry object itself is Python only.
        self._same_size = self.geometry.conv_mode is ConvMode.SAME
        self._pad_multiple = list(self.geometry.divisor)
        self._aux_scales = [[float(p) for p in self.geometry.scales[k]] for k in range(1, self.deep_supr_num + 1)]

        norm = _as_spec(norm)
        act = _as_spec(act)
        block_bias = norm is None if bias is None else bias

        def block(level: int, channels_in: int, channels_out: int) -> ConvBlock:
            kernel = self.geometry.kernel_sizes[level]
            padding = self.geometry.conv_padding(level)
            return ConvBlock(
                spatial_dims, channels_in, channels_out, kernel, padding, act, norm, block_bias, checkpointing
            )

        coarse_to_fine = range(depth - 2, -1, -1)
        try:
            self.encoder = nn.ModuleList(
                [
                    block(level, channels_in, channels_out)
                    for level, (channels_in, channels_out) in enumerate(zip((in_channels, *features[:-1]), features))
                ]
            )
            self.upsamplers = nn.ModuleList(
                [
                    UpSample(spatial_dims, features[level + 1], features[level], up_mode, True, stride)
                    for level, stride in zip(coarse_to_fine, self.geometry.strides[::-1])
                ]
            )
            self.decoder = nn.ModuleList(
                [block(level, 2 * features[level], features[level]) for level in coarse_to_fine]
            )
        except (ValueError, TypeError, KeyError) as error:
            raise ValueError(f"cannot build the U-Net with norm={norm!r}, act={act!r}: {str(error).strip()}") from None
        # Pooling l - 1 leads into level l; the first entry stands for level 0, which is not pooled.
        self.pools = nn.ModuleList(
            [nn.Identity()]
            + [Pool[Pool.MAX, spatial_dims](kernel_size=stride, stride=stride) for stride in self.geometry.strides]
        )
        self.dropout = Dropout[Dropout.DROPOUT, spatial_dims](dropout or 0.0)
        conv1x1 = Conv[Conv.CONV, spatial_dims]
        self.head = conv1x1(features[0], out_channels, 1)
        self.aux_heads = nn.ModuleList(
            [conv1x1(features[k], out_channels, 1) for k in range(1, self.deep_supr_num + 1)]
        )
        _initialise(self, init)
        self.register_load_state_dict_pre_hook(_match_auxiliary_heads)
        self.instance_norm = any(isinstance(module, nn.modules.instancenorm._InstanceNorm) for module in self.modules())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segments ``x``.

        Args:
            x: images of shape ``(B, in_channels, *S)``.

        Returns:
            Logits of shape ``(B, out_channels, *S')``, or ``(B, 1 + deep_supr_num, out_channels, *S')`` with
            deep supervision in training mode.
        """
        if not torch.jit.is_scripting():
            self._check_input(x)
        input_size = x.shape[2:]
        if self._same_size:
            x = self._pad_to_divisor(x)

        skips: list[torch.Tensor] = []
        for level, (pool, block) in enumerate(zip(self.pools, self.encoder)):
            if level > 0:
                skips.append(x)
                x = pool(x)
            x = block(x)
        x = self.dropout(x)

        supervise = self.deep_supervision and self.training
        decoder_outputs: list[torch.Tensor] = []
        for upsample, block in zip(self.upsamplers, self.decoder):
            x = upsample(x)
            skip = skips.pop()
            x = block(torch.cat([center_crop(skip, x.shape[2:]), x], dim=1))
            if supervise:
                decoder_outputs.append(x)
        output = self.head(x)

        if supervise:
            outputs = [output]
            for k, aux_head in enumerate(self.aux_heads):
                # Head k sits on decoder level k + 1, whose maps are that level's scale smaller per axis.
                aux = F.interpolate(aux_head(decoder_outputs[-2 - k]), scale_factor=self._aux_scales[k], mode="nearest")
                outputs.append(center_crop(aux, output.shape[2:]))
            output = torch.stack(outputs, dim=1)
        if self._same_size:
            output = center_crop(output, input_size)
        return output

    def _pad_to_divisor(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-pads each spatial axis of ``x`` evenly on both sides up to a multiple of its divisor."""
        padding: list[int] = []
        for size, step in zip(x.shape[2:][::-1], self._pad_multiple[::-1]):
            extra = (step - size % step) % step
            padding += [extra // 2, extra - extra // 2]
        return F.pad(x, padding) if sum(padding) > 0 else x

    @torch.jit.unused
    def _check_input(self, x: torch.Tensor) -> None:
        """Raises a ``ValueError`` for inputs of the wrong rank or channels, or sizes the geometry refuses."""
        expected_channels = self.encoder[0].layers[0].in_channels
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != expected_channels:
            axes = ", ".join(["size"] * self.spatial_dims)
            raise ValueError(f"expected an input of shape (batch, {expected_channels}, {axes}), got {tuple(x.shape)}.")
        self.check_input_size(list(x.shape[2:]))

    @torch.jit.unused
    def check_input_size(self, spatial_size: Sequence[int]) -> None:
        """Raises a ``ValueError`` for a spatial input size this network cannot take.

        In valid mode each size must be one of ``geometry.valid_input_sizes``. In same mode any size works, with
        one limit: instance normalisation (which normalises each map with its own statistics, in training and
        inference) needs more than one voxel in the coarsest feature map, whose size per axis is the input's
        divided by that axis's ``geometry.divisor``, rounded up.

        Args:
            spatial_size: the input's size per spatial axis, in voxels.
        """
        self.geometry.output_size(spatial_size)
        divisor = self.geometry.divisor
        if self.instance_norm and all(size <= step for size, step in zip(spatial_size, divisor)):
            size = " x ".join(map(str, spatial_size))
            bound = " x ".join(map(str, divisor)) if len(set(divisor)) > 1 else str(divisor[0])
            raise ValueError(
                f"an input of {size} voxels leaves a coarsest feature map of one voxel after "
                f"{len(self.geometry.strides)} poolings, which instance normalisation cannot normalise: give at "
                f"least one axis more than {bound} voxels."
            )


def _match_auxiliary_heads(
    module: UNet, state_dict: dict, prefix: str, local_metadata: dict, strict: bool, *unused_lists: list
) -> None:
    """Lets a checkpoint with more or fewer deep-supervision heads load into ``module``.

    Heads the checkpoint has and the module lacks are dropped; heads the module has and the checkpoint lacks
    keep their current values. Everything else must match as usual.
    """
    heads_prefix = prefix + "aux_heads."
    own = {prefix + name: value for name, value in module.state_dict().items() if name.startswith("aux_heads.")}
    for key in [k for k in state_dict if k.startswith(heads_prefix) and k not in own]:
        del state_dict[key]
    for key, value in own.items():
        state_dict.setdefault(key, value)


def _as_spec(spec: str | Sequence | None) -> str | tuple | None:
    """Turns a YAML/JSON two-item list such as ``["group", {"num_groups": 8}]`` into MONAI's tuple form."""
    return tuple(spec) if isinstance(spec, list) else spec


def _check_arguments(
    in_channels: int,
    out_channels: int,
    features: tuple[int, ...],
    dropout: float | None,
    up_mode: str,
    init: str | None,
) -> None:
    """Raises a one-line ``ValueError`` for an argument out of its range (the geometry checks its own)."""
    if in_channels < 1 or out_channels < 1:
        raise ValueError(f"in_channels and out_channels must be at least 1, got {in_channels} and {out_channels}.")
    if not features or min(features) < 1:
        raise ValueError(f"features must list at least one positive channel count per level, got {features}.")
    if not 0.0 <= (dropout or 0.0) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
    if up_mode not in UP_MODES:
        raise ValueError(f"up_mode must be one of {UP_MODES}, got {up_mode!r}.")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}.")


def _initialise(network: nn.Module, init: str | None) -> None:
    """Initialises convolution weights by the He (paper) or Xavier scheme, and their biases to 0."""
    if init is None:
        return
    for module in network.modules():
        if not isinstance(module, nn.modules.conv._ConvNd):
            continue
        if init == "he":
            nn.init.normal_(module.weight, 0.0, (2.0 / _fan_in(module)) ** 0.5)
        else:
            nn.init.xavier_normal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _fan_in(conv: nn.modules.conv._ConvNd) -> int:
    """Inputs that reach one output unit of ``conv``: channels times kernel taps that overlap it.

    A transposed convolution with stride equal to its kernel (the up-convolution) feeds each output unit from
    one tap per input channel; PyTorch's own fan-in counts its output channels instead.
    """
    taps = 1
    for k, s in zip(conv.kernel_size, conv.stride):
        taps *= k // s if conv.transposed else k
    return conv.in_channels // conv.groups * max(taps, 1)
