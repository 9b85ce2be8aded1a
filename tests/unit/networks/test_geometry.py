"""UNetGeometry: sizes and margins per axis, worked out by hand, and one-line errors for bad arguments."""

from __future__ import annotations

import pytest
import torch

from unet_med.networks import ConvMode, UNetGeometry, geometry_of

# A 3D network for a volume whose third axis is twice as coarse: no pooling and 1-voxel kernels on that axis
# until it catches up at level 2, as a planner following nnU-Net's rule chooses.
ANISOTROPIC = {
    "spatial_dims": 3,
    "depth": 4,
    "kernel_size": [[3, 3, 1], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
    "strides": [[2, 2, 1], [2, 2, 2], [2, 2, 2]],
}


def test_paper_network() -> None:
    paper = UNetGeometry.build(spatial_dims=2, depth=5, conv_mode="valid")
    assert paper.margin == paper.context == (92, 92)
    assert paper.divisor == (16, 16)
    assert paper.output_size(572) == (388, 388)
    assert paper.smallest_input_size == (188, 188)  # 16 * 4 + 124: a bottleneck of 4 gives an output of 4
    assert paper.valid_input_sizes(0, 240) == [188, 204, 220, 236]
    assert paper.nearest_valid_sizes(0, 570) == [556, 572]
    assert paper.nearest_valid_sizes(1, 572) == [572]
    assert paper.nearest_valid_sizes(0, 10) == [188]
    assert paper.input_size_for_output(388) == (572, 572)
    assert paper.input_size_for_output((389, 300)) == (588, 492)


def test_same_mode_takes_any_size_and_loses_no_margin() -> None:
    same = UNetGeometry.build(spatial_dims=3, depth=3)
    assert same.conv_mode is ConvMode.SAME and same.conv_mode == "same"
    assert same.margin == (0, 0, 0) and same.context == (20, 20, 20) and same.divisor == (4, 4, 4)
    assert same.output_size((17, 1, 30)) == (17, 1, 30)
    assert same.nearest_valid_sizes(0, 30) == [28, 32]
    assert same.input_size_for_output(30) == (32, 32, 32)
    assert same.conv_padding(0) == (1, 1, 1)


@pytest.mark.parametrize("conv_mode", ["same", "valid"])
def test_anisotropic_strides_and_kernels_per_axis(conv_mode: str) -> None:
    geometry = UNetGeometry.build(**ANISOTROPIC, conv_mode=conv_mode)
    assert geometry.scales == ((1, 1, 1), (2, 2, 1), (4, 4, 2), (8, 8, 4))
    assert geometry.divisor == (8, 8, 4)
    # Axes 0 and 1: (3 - 1) * (1 + 2 + 4 + 8) encoder + (3 - 1) * (1 + 2 + 4) decoder = 44.
    # Axis 2: kernels (1, 3, 3, 3) at scales (1, 1, 2, 4): 2 * (0 + 1 + 2 + 4) + 2 * (0 + 1 + 2) = 20.
    assert geometry.context == (44, 44, 20)
    if conv_mode == "same":
        assert geometry.margin == (0, 0, 0)
        assert geometry.smallest_input_size == (8, 8, 4)
        assert geometry.conv_padding(0) == (1, 1, 0)
        return
    assert geometry.margin == (44, 44, 20)
    # Axis 2: input = 4 * b + 2 * 2 * (0 + 1 + 2 + 4) = 4 * b + 28, output = 4 * b - 12, so b >= 4 gives 44.
    assert geometry.smallest_input_size == (92, 92, 44)
    assert geometry.valid_input_sizes(2, 60) == [44, 48, 52, 56, 60]
    assert geometry.output_size((100, 92, 48)) == (12, 4, 8)
    assert geometry.input_size_for_output((12, 4, 8)) == (100, 92, 48)
    with pytest.raises(ValueError, match=r"input size 46 on spatial axis 2 .*divisor 4, margin 20.* 44 or 48\.$"):
        geometry.output_size((100, 92, 46))


def test_a_size_preserving_network() -> None:
    geometry = UNetGeometry.size_preserving(2)
    assert (geometry.depth, geometry.margin, geometry.divisor, geometry.context) == (1, (0, 0), (1, 1), (0, 0))
    assert geometry.output_size((5, 1)) == (5, 1)


def test_geometry_of_a_network_without_one() -> None:
    assert geometry_of(torch.nn.Conv2d(1, 1, 3, padding=1), 2) == UNetGeometry.size_preserving(2)
    assert geometry_of(lambda x: x, 3) == UNetGeometry.size_preserving(3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"spatial_dims": 1}, r"spatial_dims must be 2 or 3, got 1"),
        ({"depth": 0}, r"depth must be at least 1"),
        ({"conv_mode": "full"}, r"conv_mode must be one of \('same', 'valid'\), got 'full'"),
        ({"kernel_size": 4}, r"kernel_size must hold positive odd numbers only, got 4"),
        ({"kernel_size": [3, 3]}, r"kernel_size must be an int or one entry per level \(3\), each an int or one"),
        ({"kernel_size": [3, [3, 1, 3], 3]}, r"kernel_size must be .* one int per spatial axis \(2\); got"),
        ({"kernel_size": [3, [3, 2], 3]}, r"kernel_size must hold positive odd numbers only"),
        ({"strides": [2, 2, 2]}, r"strides must be an int or one entry per pooling \(2\)"),
        ({"strides": [[2, 1], 0]}, r"strides must hold positive numbers only, got \[\[2, 1\], 0\]"),
        ({"strides": "22"}, r"strides must be an int or one entry per pooling"),
    ],
)
def test_wrong_arguments_give_one_line_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        UNetGeometry.build(**{"spatial_dims": 2, "depth": 3, **kwargs})
    assert "\n" not in str(error.value)
