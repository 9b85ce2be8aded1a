"""Options checked before anything is built: one line naming the option and what it takes, or the closest id."""

from __future__ import annotations

import shutil

import pytest
import torch
from monai.bundle import ConfigWorkflow
from monai.bundle.scripts import create_workflow

from unet_med.bundle.errors import BundleError, bundle_error_in
from unet_med.bundle.options import (
    check_device,
    check_patch_size,
    check_training_options,
    main,
    option_lines,
    unknown_ids,
)

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
        ("num_workers", -1, "--num_workers -1: expected a whole number of at least 0."),
        ("num_workers", "two", "--num_workers 'two': expected a whole number of at least 0."),
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


def test_unknown_ids_are_found_at_any_depth_with_the_closest_known_id():
    known = {"epochs": None, "train": {"trainer": {"max_epochs": 1}, "handlers": [{"a": 1}]}, "_meta_": {}}
    given = {
        "epochs": 3,
        "epoch": 3,  # a typo
        "foo": 1,  # close to nothing
        "train": {"trainer": {"max_epochs": 1, "max_epoch": 2}, "handlers": [{"b": 2}]},  # a list is one id
        "_meta_": {"version": "1"},  # MONAI's metadata
        "tracking_uri": "mlruns",  # MONAI's experiment tracking
    }
    assert unknown_ids(given, known) == [
        ("epoch", "epochs"),
        ("foo", None),
        ("train#trainer#max_epoch", "train#trainer#max_epochs"),
    ]


def bundle_workflow(bundle, config_names, **overrides) -> ConfigWorkflow:
    configs = bundle / "configs"
    return ConfigWorkflow(config_file=[str(configs / name) for name in config_names], workflow_type="train",
                          bundle_root=str(bundle), **overrides)


@pytest.mark.parametrize(
    ("config_names", "override", "message"),
    [
        (["train.yaml"], {"epoch": 3}, "--epoch: configs/train.yaml defines no such option; did you mean --epochs? "
         "python -m unet_med.bundle.options configs/train.yaml lists them"),
        (["train.yaml", "evaluate.yaml"], {"ttta": True}, "--ttta: configs/train.yaml + configs/evaluate.yaml "
         "defines no such option; did you mean --tta?"),
        (["inference.yaml"], {"epochs": 3}, "--epochs: configs/inference.yaml defines no such option; python -m"),
    ],
)
def test_a_bundle_refuses_an_override_that_names_no_id_of_its_files(config_names, override, message, tmp_path,
                                                                     bundle_dirs):
    workflow = bundle_workflow(bundle_dirs["3d"], config_names, ckpt_dir=str(tmp_path / "models"),
                               output_dir=str(tmp_path / "out"), **override)
    with pytest.raises(RuntimeError) as raised:
        workflow.initialize()
    error = raised.value
    while error.__cause__ is not None:
        error = error.__cause__
    assert isinstance(error, BundleError) and str(error).startswith(message)
    assert not list(tmp_path.iterdir()), "refused before anything is written"


def test_monai_label_overrides_pass(tmp_path, bundle_dirs, planned_models, samples):
    """The ids MONAI Label's training sets in-process: all defined by train.yaml, so initialize goes on."""
    models = shutil.copytree(planned_models["3d"], tmp_path / "models")
    case = {"image": str(samples / "imagesTr" / "hippocampus_001.nii.gz"),
            "label": str(samples / "labelsTr" / "hippocampus_001.nii.gz")}
    loader = {"_target_": "CheckpointLoader", "load_path": str(models / "model.pt"), "load_dict": {"model": "@network"}}
    overrides = {"train#trainer#max_epochs": 1, "train#dataset#data": [case], "validate#dataset#data": [case],
                 "device": "cpu", "train#handlers": [loader], "ckpt_dir": str(models),
                 "output_dir": str(tmp_path / "runs")}
    bundle_workflow(bundle_dirs["3d"], ["train.yaml"], **overrides).initialize()


def test_the_options_of_a_config_file_merged_into_the_run_are_known(tmp_path, bundle_dirs, planned_models, samples):
    """A user's own file in --config_file defines ids (as the torchrun test's case log does); a typo still fails."""
    models = shutil.copytree(planned_models["3d"], tmp_path / "models")
    mine = tmp_path / "mine.yaml"
    mine.write_text("case_log: null\n")
    files = [str(bundle_dirs["3d"] / "configs" / "train.yaml"), str(mine)]
    common = {"bundle_root": str(bundle_dirs["3d"]), "ckpt_dir": str(models), "output_dir": str(tmp_path / "runs")}
    create_workflow(config_file=files, workflow_type="train", case_log="cases.txt", **common)
    with pytest.raises(RuntimeError) as raised:
        create_workflow(config_file=files, workflow_type="train", case_logs="cases.txt", **common)
    assert str(bundle_error_in(raised.value)).startswith("--case_logs: configs/train.yaml defines no such option; "
                                                        "did you mean --case_log?")


def test_a_bundle_root_without_the_config_files_is_refused(tmp_path, bundle_dirs):
    workflow = ConfigWorkflow(config_file=str(bundle_dirs["3d"] / "configs" / "train.yaml"), workflow_type="train",
                              bundle_root=str(tmp_path), output_dir=str(tmp_path / "out"))
    with pytest.raises(RuntimeError) as raised:
        workflow.initialize()
    assert f"--bundle_root {tmp_path}: no configs/train.yaml there" in str(raised.value.__cause__)


def test_the_option_list_shows_each_option_with_its_default_and_comment(bundle_dirs, capsys):
    configs = bundle_dirs["3d"] / "configs"
    lines = option_lines([configs / "train.yaml", configs / "evaluate.yaml"])
    assert "--epochs null" in lines and "--val_interval 4" in lines
    assert "--output_dir $@bundle_root + '/eval'" in lines  # evaluate.yaml's value, merged over train.yaml's
    assert "--tta False" in lines  # evaluate.yaml's option, merged
    amp = lines.index("--amp auto")
    assert lines[amp + 1].startswith("    auto: mixed precision on CUDA")
    assert not any(line.startswith(("--train", "--initialize", "--network_def")) for line in lines)
    assert main([str(configs / "inference.yaml")]) == 0
    assert "--dicom_seg False" in capsys.readouterr().out.splitlines()
