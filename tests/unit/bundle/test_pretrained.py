import logging

import pytest
import torch
from ignite.engine import Engine

from unet_med import UNet
from unet_med.bundle.io import CheckpointError
from unet_med.bundle.pretrained import PretrainedLoader, check_pretrained, load_pretrained, pretrained_weights

FEATURES = (4, 8, 16)


def _unet(out_channels: int = 3, in_channels: int = 1, features=FEATURES, seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(3, in_channels, out_channels, features=features, norm=("instance", {"affine": True}))


def _saved(tmp_path, network: torch.nn.Module, name: str = "model.pt", wrap: bool = False):
    path = tmp_path / name
    state = network.state_dict()
    torch.save({"model": state, "plan": {"patch_size": [32, 48, 32]}} if wrap else state, path)
    return path


def _copy(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in network.state_dict().items()}


def test_three_classes_onto_two_loads_all_but_the_head(tmp_path):
    source = _unet(3)
    path = _saved(tmp_path, source)
    target = _unet(2, seed=1)
    fresh = _copy(target)
    report = load_pretrained(target, path)
    assert report.reinitialised == (("head.weight", (3, 4, 1, 1, 1), (2, 4, 1, 1, 1)), ("head.bias", (3,), (2,)))
    assert len(report.loaded) == len(fresh) - 2
    assert report.line() == (
        f"pretrained: {len(fresh) - 2} of {len(fresh)} tensors from {path}; re-initialised (other shape): "
        "head.weight [3,4,1,1,1] -> [2,4,1,1,1], head.bias [3] -> [2]"
    )
    loaded = target.state_dict()
    for name in report.loaded:
        assert torch.equal(loaded[name], source.state_dict()[name]), name
    assert torch.equal(loaded["head.weight"], fresh["head.weight"])
    assert not torch.equal(loaded["encoder.0.layers.0.weight"], fresh["encoder.0.layers.0.weight"])


def test_other_input_channels_reinitialise_the_first_convolution(tmp_path):
    path = _saved(tmp_path, _unet(3, in_channels=1))
    report = load_pretrained(_unet(3, in_channels=2), path)
    assert [name for name, *_ in report.reinitialised] == ["encoder.0.layers.0.weight"]


def test_same_network_loads_everything_and_says_nothing_else(tmp_path):
    source = _unet(3)
    report = load_pretrained(_unet(3, seed=1), _saved(tmp_path, source))
    assert not report.reinitialised and report.line().endswith(f"tensors from {tmp_path / 'model.pt'}")


def test_a_plan_beside_the_weights_and_a_bundle_folder_are_read(tmp_path):
    source = _unet(3)
    (tmp_path / "models").mkdir()
    _saved(tmp_path / "models", source, wrap=True)
    path, weights = pretrained_weights(tmp_path)
    assert path == tmp_path / "models" / "model.pt" and weights.keys() == source.state_dict().keys()


@pytest.mark.parametrize(
    ("features", "problem"),
    [
        ((4, 8, 16, 32), r"another depth or architecture\): \d+ of its tensors are not the network's \(first decoder"),
        ((4, 8), r"another depth or architecture\): \d+ of the network's tensors are not in it \(first decoder"),
        ((6, 12, 24), r"another width\): encoder.0.layers.1.weight is \[6\] there, \[4\] in the network\.$"),
    ],
)
def test_another_depth_or_width_is_refused_and_changes_nothing(tmp_path, features, problem):
    path = _saved(tmp_path, _unet(3, features=features))
    target = _unet(3, seed=1)
    before = _copy(target)
    with pytest.raises(CheckpointError, match=problem) as error:
        load_pretrained(target, path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    assert all(torch.equal(before[name], tensor) for name, tensor in target.state_dict().items())


def test_missing_file_and_files_without_weights_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint file at"):
        pretrained_weights(tmp_path / "absent.pt")
    torch.save({"epoch": 3}, tmp_path / "state.pt")
    with pytest.raises(CheckpointError, match="holds no network weights"):
        pretrained_weights(tmp_path / "state.pt")


def test_check_pretrained_reads_without_loading(tmp_path):
    target = _unet(2, seed=1)
    before = _copy(target)
    check_pretrained(_saved(tmp_path, _unet(3)), target)
    assert all(torch.equal(before[name], tensor) for name, tensor in target.state_dict().items())
    check_pretrained(None, target)
    check_pretrained(tmp_path / "absent.pt", target, resume="true")  # resumed runs ignore the weights
    with pytest.raises(CheckpointError, match="another depth"):
        check_pretrained(_saved(tmp_path, _unet(3, features=(4, 8)), "shallow.pt"), target)


@pytest.mark.parametrize("resume", [False, True])
def test_loader_loads_when_a_fresh_training_starts(tmp_path, caplog, resume):
    source, target = _unet(3), _unet(2, seed=1)
    before = _copy(target)
    path = _saved(tmp_path, source)
    engine = Engine(lambda engine, batch: None)
    PretrainedLoader(path, target, resume=str(resume).lower()).attach(engine)
    with caplog.at_level(logging.INFO):
        engine.run([0], max_epochs=1)
    weight = target.state_dict()["encoder.1.layers.0.weight"]
    if resume:
        assert torch.equal(weight, before["encoder.1.layers.0.weight"])
        assert f"pretrained: {path} not loaded: --resume true" in caplog.text
    else:
        assert torch.equal(weight, source.state_dict()["encoder.1.layers.0.weight"])
        assert f"tensors from {path}; re-initialised (other shape): head.weight" in caplog.text
