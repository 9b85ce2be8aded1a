"""Cost estimates of a planned U-Net: counted layers, memory, operations, a measured throughput."""

from __future__ import annotations

import pytest
import torch

from unet_med.bundle import cost
from unet_med.networks import UNet


def test_parameters_match_the_built_network():
    features, strides, kernels = [8, 16, 32], [[2, 2, 2]] * 2, [[3, 3, 3]] * 3
    network = UNet(3, 2, 3, features=features, norm=None, bias=False)
    weights = sum(p.numel() for name, p in network.named_parameters() if name.endswith("weight"))
    assert cost.parameter_count(features, strides, kernels, 2, 3) == weights


def test_operations_of_a_single_level_by_hand():
    # One level: conv 1->4 and conv 4->4 (3x3x3) on 8^3 voxels, then the 1x1 head 4->2.
    forward = 2 * 512 * (27 * 1 * 4 + 27 * 4 * 4 + 4 * 2)
    assert cost.training_flops([8, 8, 8], 2, [4], [], [[3, 3, 3]], 1, 2) == 3 * forward * 2


def test_anisotropic_kernels_and_strides_cost_less():
    features = [32, 64, 128]
    iso = cost.training_flops([64, 64, 16], 1, features, [[2, 2, 2]] * 2, [[3, 3, 3]] * 3, 1, 2)
    aniso = cost.training_flops([64, 64, 16], 1, features, [[2, 2, 1], [2, 2, 2]], [[3, 3, 1], [3, 3, 3], [3, 3, 3]],
                                1, 2)
    assert aniso < iso


def test_memory_grows_with_batch_and_patch():
    args = ([32, 64, 128], [[2, 2, 2]] * 2, [[3, 3, 3]] * 3, 1, 2)
    one, two = cost.training_memory_bytes([32, 32, 32], 1, *args), cost.training_memory_bytes([32, 32, 32], 2, *args)
    weights = 4 * 4 * cost.parameter_count(*args)
    assert two - weights == pytest.approx(2 * (one - weights))
    assert cost.training_memory_bytes([64, 32, 32], 1, *args) - weights == pytest.approx(2 * (one - weights))


def test_throughput_is_measured():
    torch.manual_seed(0)
    rate = cost.measure_flops_per_second(3, [4, 8], 1, 2, size=16, repeats=1)
    assert 1e6 < rate < 1e15
