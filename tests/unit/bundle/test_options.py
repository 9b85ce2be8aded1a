"""Training options checked before anything is built: one line naming the option and what it takes."""

from __future__ import annotations

import pytest
import torch

from unet_med.bundle.errors import BundleError
from unet_med.bundle.options import check_device, check_patch_size, check_training_options

GOOD = {"epochs": 2, "val_interval": 1, "batch_size": 2, "learning_rate": 0.002, "patch_size": [32, 48, 32]}


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("epochs", 0, "--epochs 0: expected a whole number of at least 1."),
        ("epochs", -1, "--epochs -1: expected a whole number of at least 1."),
        ("epochs", "abc", "--epochs 'abc': expected a whole number of at least 1."),
        ("epochs", 2.5, "--epochs 2.5: expected a whole number of at least 1."),
        ("val_interval", 0, "--val_interval 0: expected a whole number of at least 1."),
        ("batch_size", 0, "--batch_size 0: expected a whole number of at least 1."),
        ("learning_rate", "abc", "--learning_rate 'abc': expected a number above 0, such as 0.002."),
        ("learning_rate", float("nan"), "--learning_rate nan: expected a number above 0, such as 0.002."),
        ("learning_rate", 0, "--learning_rate 0: expected a number above 0, such as 0.002."),
        ("patch_size", [32, 48], "--patch_size [32, 48]: expected 3 whole numbers of at least 1"),
        ("patch_size", [32, 0, 32], "--patch_size [32, 0, 32]: expected 3 whole numbers"),
        ("patch_size", "big", "--patch_size 'big': expected 3 whole numbers"),
    ],
)
def test_a_wrong_option_is_named_with_what_it_takes(option, value, message):
    with pytest.raises(BundleError) as error:
        check_training_options(**{**GOOD, option: value}, device="cpu", spatial_dims=3)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_good_options_pass_and_a_2d_network_takes_two_sizes():
    check_training_options(**GOOD, device=torch.device("cpu"), spatial_dims=3)
    assert check_patch_size([48, 64], 2) == [48, 64]


def test_options_left_to_the_plan_are_not_checked():
    check_training_options(None, 1, None, 0.002, None, "cpu", 3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_machine_without_it():
    with pytest.raises(BundleError, match=r"^--device cuda: this machine has no usable CUDA GPU .*use --device cpu\.$"):
        check_device("cuda")
    with pytest.raises(BundleError, match=r"^--device 'gpu0': expected cpu, cuda or cuda:<index>\.$"):
        check_device("gpu0")
