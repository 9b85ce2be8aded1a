"""The U-Net over 2D and 3D, every norm, both conv modes and both up-sampling modes."""

from __future__ import annotations

import io
import itertools

import pytest
import torch
import yaml
from monai.bundle import ConfigParser

from unet_med import UNet
from unet_med.networks import sizing

FEATURES = (4, 8, 16)
NORMS = ["batch", "instance", ("group", {"num_groups": 2}), None]
CASES = list(itertools.product((2, 3), NORMS, ("same", "valid"), ("deconv", "nontrainable")))


def case_id(case: tuple) -> str:
    dims, norm, conv_mode, up_mode = case
    norm_name = norm[0] if isinstance(norm, tuple) else norm
    return f"{dims}d-{norm_name}-{conv_mode}-{up_mode}"


def small_input(dims: int, conv_mode: str, batch: int = 2) -> torch.Tensor:
    """A random input whose size suits the depth-3 test networks: 44 is the smallest valid-mode size."""
    size = 44 if conv_mode == "valid" else 20
    sizes = [size + 4 * axis for axis in range(dims)]  # different sizes per axis catch transposed axes
    return torch.randn(batch, 1, *sizes)


def expected_output_size(size: int, conv_mode: str) -> int:
    return sizing.valid_output_size(size, len(FEATURES)) if conv_mode == "valid" else size


@pytest.fixture(params=CASES, ids=[case_id(case) for case in CASES])
def network_and_input(request: pytest.FixtureRequest) -> tuple[UNet, torch.Tensor]:
    dims, norm, conv_mode, up_mode = request.param
    torch.manual_seed(0)
    net = UNet(dims, 1, 3, features=FEATURES, norm=norm, conv_mode=conv_mode, up_mode=up_mode)
    return net, small_input(dims, conv_mode)


def test_output_shape(network_and_input: tuple[UNet, torch.Tensor]) -> None:
    net, x = network_and_input
    out = net(x)
    expected = [expected_output_size(size, net.conv_mode) for size in x.shape[2:]]
    assert list(out.shape) == [x.shape[0], 3, *expected]


def test_gradients_reach_every_parameter(network_and_input: tuple[UNet, torch.Tensor]) -> None:
    net, x = network_and_input
    net(x).square().mean().backward()
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None, name
        assert parameter.grad.abs().sum() > 0, name


def test_torchscript_round_trip(network_and_input: tuple[UNet, torch.Tensor]) -> None:
    net, x = network_and_input
    net.eval()
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(net), buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x))


def test_yaml_config_builds_the_network() -> None:
    config = yaml.safe_load(
        """
        network_def:
          _target_: unet_med.networks.UNet
          spatial_dims: 3
          in_channels: 2
          out_channels: 4
          features: [4, 8, 16]
          norm: [group, {num_groups: 2}]
          act: [leakyrelu, {negative_slope: 0.1}]
          dropout: 0.2
        """
    )
    net = ConfigParser(config).get_parsed_content("network_def")
    assert isinstance(net, UNet)
    assert isinstance(net.encoder[0].layers[1], torch.nn.GroupNorm)
    assert net.encoder[0].layers[2].negative_slope == pytest.approx(0.1)
    assert net.dropout.p == pytest.approx(0.2)
    assert net(torch.randn(1, 2, 8, 12, 16)).shape == (1, 4, 8, 12, 16)


def test_paper_network_geometry_and_parameter_count() -> None:
    paper = UNet(2, 1, 2, features=(64, 128, 256, 512, 1024), conv_mode="valid", norm=None, act="relu")
    assert sum(p.numel() for p in paper.parameters()) == 31_030_658
    with torch.no_grad():
        assert paper(torch.zeros(1, 1, 572, 572)).shape == (1, 2, 388, 388)
    assert sizing.context_margin(5) == 92


@pytest.mark.parametrize("conv_mode", ["same", "valid"])
@pytest.mark.parametrize("dims", [2, 3])
def test_deep_supervision_stacks_in_training_and_not_in_eval(dims: int, conv_mode: str) -> None:
    net = UNet(dims, 1, 3, features=FEATURES, deep_supervision=True, conv_mode=conv_mode)
    x = small_input(dims, conv_mode)
    spatial = [expected_output_size(size, conv_mode) for size in x.shape[2:]]
    net.train()
    stacked = net(x)
    assert list(stacked.shape) == [2, 2, 3, *spatial]  # final output and one auxiliary head at depth 3
    net.eval()
    with torch.no_grad():
        final = net(x)
    assert list(final.shape) == [2, 3, *spatial]


def test_deep_supervision_final_map_is_the_plain_output() -> None:
    torch.manual_seed(0)
    supervised = UNet(3, 1, 3, features=FEATURES, deep_supervision=True, norm=None)
    plain = UNet(3, 1, 3, features=FEATURES, norm=None)
    plain.load_state_dict(supervised.state_dict())
    x = small_input(3, "same")
    torch.testing.assert_close(supervised(x)[:, 0], plain(x))


def test_checkpoints_load_with_or_without_auxiliary_heads() -> None:
    supervised = UNet(3, 1, 3, features=(4, 8, 16, 32), deep_supervision=True)
    plain = UNet(3, 1, 3, features=(4, 8, 16, 32))
    assert len(supervised.aux_heads) == 2 and len(plain.aux_heads) == 0
    plain.load_state_dict(supervised.state_dict())  # extra heads are ignored
    heads_before = [head.weight.clone() for head in supervised.aux_heads]
    supervised.load_state_dict(plain.state_dict())  # missing heads keep their values
    torch.testing.assert_close(supervised.head.weight, plain.head.weight)
    for head, before in zip(supervised.aux_heads, heads_before):
        torch.testing.assert_close(head.weight, before)
    with pytest.raises(RuntimeError, match="encoder"):
        plain.load_state_dict({k: v for k, v in supervised.state_dict().items() if "encoder.0" not in k})


@pytest.mark.parametrize("norm", ["instance", None])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_checkpointing_gives_the_same_gradients(norm: str | None, dropout: float) -> None:
    torch.manual_seed(0)
    plain = UNet(3, 1, 3, features=FEATURES, norm=norm, dropout=dropout)
    checkpointed = UNet(3, 1, 3, features=FEATURES, norm=norm, dropout=dropout, checkpointing=True)
    checkpointed.load_state_dict(plain.state_dict())
    x = small_input(3, "same")
    for net in (plain, checkpointed):
        torch.manual_seed(1)
        net(x).square().mean().backward()
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


@pytest.mark.parametrize("sizes", [(17, 20, 23), (1, 5, 9), (16, 16, 16)])
def test_same_mode_takes_any_size(sizes: tuple[int, int, int]) -> None:
    net = UNet(3, 1, 2, features=FEATURES)
    assert net(torch.randn(1, 1, *sizes)).shape == (1, 2, *sizes)


def test_instance_norm_refuses_a_one_voxel_coarsest_map() -> None:
    net = UNet(3, 1, 2, features=(4, 8, 16))  # two poolings: an input of at most 4 voxels per axis ends as one
    message = r"^an input of 4 x 3 x 4 voxels leaves a coarsest feature map of one voxel .* more than 4 voxels\.$"
    for mode in (net.train(), net.eval()):
        with pytest.raises(ValueError, match=message):
            mode(torch.randn(2, 1, 4, 3, 4))
    assert net.train()(torch.randn(2, 1, 5, 3, 4)).shape == (2, 2, 5, 3, 4)
    UNet(3, 1, 2, features=(4, 8, 16), norm="batch").check_input_size([4, 3, 4])


def test_same_mode_padding_matches_a_padded_input() -> None:
    """An input the depth cannot divide gives the centre of the output for the zero-padded input."""
    net = UNet(2, 1, 2, features=FEATURES, norm=None).eval()
    x = torch.randn(1, 1, 18, 21)
    padded = torch.nn.functional.pad(x, (1, 2, 1, 1))  # to 20 x 24, split as the network splits it
    with torch.no_grad():
        torch.testing.assert_close(net(x), net(padded)[..., 1:19, 1:22])


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize("kernel_size", [3, 5])
def test_sizing_matches_the_valid_network(depth: int, kernel_size: int) -> None:
    net = UNet(2, 1, 1, features=[2] * depth, kernel_size=kernel_size, conv_mode="valid", norm=None)
    for size in sizing.valid_input_sizes(depth, kernel_size, max_size=150)[:3]:
        with torch.no_grad():
            out = net(torch.zeros(1, 1, size, size))
        assert out.shape[-1] == sizing.valid_output_size(size, depth, kernel_size)
        assert size - out.shape[-1] == 2 * sizing.context_margin(depth, kernel_size)
    smallest = sizing.valid_input_sizes(depth, kernel_size, max_size=400)[0]
    assert sizing.valid_input_size_for_output(1, depth, kernel_size) == smallest


def test_sizing_names_the_nearest_valid_sizes() -> None:
    assert sizing.nearest_valid_input_sizes(570, depth=5) == [556, 572]
    assert sizing.nearest_valid_input_sizes(10, depth=5) == [188]
    assert sizing.nearest_valid_input_sizes(30, depth=3, conv_mode="same") == [28, 32]
    assert sizing.valid_input_size_for_output(388, depth=5) == 572
    assert sizing.valid_input_size_for_output(389, depth=5) == 588


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"norm": "bogus"}, r"norm='bogus'.*Available options"),
        ({"spatial_dims": 4}, r"spatial_dims must be 2 or 3, got 4"),
        ({"norm": ("group", {"num_groups": 5})}, r"divisible by num_groups"),
        ({"conv_mode": "full"}, r"conv_mode must be one of \('same', 'valid'\)"),
        ({"up_mode": "pixelshuffle"}, r"up_mode must be 'deconv' or 'nontrainable'"),
        ({"init": "orthogonal"}, r"init must be one of"),
        ({"kernel_size": 4}, r"kernel_size must be a positive odd number"),
        ({"dropout": 1.5}, r"dropout must be in \[0, 1\)"),
        ({"deep_supervision": True, "features": (4, 8)}, r"deep_supervision needs"),
    ],
)
def test_wrong_arguments_give_one_line_errors(kwargs: dict, message: str) -> None:
    arguments = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, **kwargs}
    with pytest.raises(ValueError, match=message) as error:
        UNet(**arguments)
    assert "\n" not in str(error.value)


def test_wrong_inputs_give_clear_errors() -> None:
    net = UNet(2, 1, 2, features=FEATURES, conv_mode="valid")
    with pytest.raises(ValueError, match=r"input size 45 does not fit .* nearest valid sizes are 44 or 48"):
        net(torch.zeros(1, 1, 45, 44))
    with pytest.raises(ValueError, match=r"expected an input of shape \(batch, 1, size, size\)"):
        net(torch.zeros(1, 2, 44, 44))


def test_he_initialisation_has_the_papers_spread() -> None:
    net = UNet(3, 1, 2, features=(32, 64, 128))
    conv = net.decoder[0].layers[0]  # 128 inputs x 27 taps
    assert conv.weight.std().item() == pytest.approx((2 / (128 * 27)) ** 0.5, rel=0.05)
    up = net.upsamplers[0][0]  # a stride-2 transposed conv: each output sees one tap per input channel
    assert up.weight.std().item() == pytest.approx((2 / 128) ** 0.5, rel=0.05)
    assert all(head.bias.abs().sum() == 0 for head in [net.head])


def test_bfloat16_autocast_is_close_to_float32() -> None:
    torch.manual_seed(0)
    net = UNet(3, 1, 3, features=FEATURES).eval()
    x = small_input(3, "same", batch=1)
    with torch.no_grad():
        reference = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(x)
    assert low.dtype == torch.bfloat16
    assert (low.float() - reference).abs().max() < 0.05 * reference.abs().max()


@pytest.mark.parametrize("dims", [2, 3])
def test_channels_last_gives_the_same_output(dims: int) -> None:
    net = UNet(dims, 1, 3, features=FEATURES).eval()
    x = small_input(dims, "same", batch=1)
    memory_format = torch.channels_last if dims == 2 else torch.channels_last_3d
    with torch.no_grad():
        reference = net(x)
        fast = net.to(memory_format=memory_format)(x.to(memory_format=memory_format))
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-5)


def test_torch_compile_traces_forward_and_backward() -> None:
    torch.manual_seed(0)
    net = UNet(3, 1, 3, features=FEATURES, checkpointing=True)
    x = small_input(3, "same")
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), net(x))
    compiled(x).mean().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_onnx_export_runs_in_onnxruntime(tmp_path) -> None:
    import onnxruntime

    net = UNet(3, 1, 3, features=FEATURES).eval()
    x = small_input(3, "same", batch=1)
    path = tmp_path / "unet.onnx"
    torch.onnx.export(net, (x,), str(path), input_names=["image"], output_names=["logits"], dynamo=True)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(logits), net(x), rtol=1e-4, atol=1e-4)
