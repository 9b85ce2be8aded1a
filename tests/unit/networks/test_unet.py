"""The U-Net over 2D and 3D, every norm, both conv modes and both up-sampling modes."""

from __future__ import annotations

import io
import itertools
import json
from pathlib import Path

import pytest
import torch
import yaml
from monai.bundle import ConfigParser

from unet_med import UNet

FEATURES = (4, 8, 16)
DATA = Path(__file__).parent / "data"
# Per-level, per-axis geometry as a planner writes it for data whose last axis is twice as coarse: that axis is
# not pooled (and not convolved across) at the first level.
ANISOTROPIC = {
    2: {"strides": [[2, 1], [2, 2]], "kernel_size": [[3, 1], [3, 3], [3, 3]]},
    3: {"strides": [[2, 2, 1], [2, 2, 2]], "kernel_size": [[3, 3, 1], 3, [3, 3, 3]]},
}
ANISOTROPIC_CASES = list(itertools.product((2, 3), ("same", "valid"), ("deconv", "nontrainable")))
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


@pytest.fixture(params=CASES, ids=[case_id(case) for case in CASES])
def network_and_input(request: pytest.FixtureRequest) -> tuple[UNet, torch.Tensor]:
    dims, norm, conv_mode, up_mode = request.param
    torch.manual_seed(0)
    net = UNet(dims, 1, 3, features=FEATURES, norm=norm, conv_mode=conv_mode, up_mode=up_mode)
    return net, small_input(dims, conv_mode)


def test_output_shape(network_and_input: tuple[UNet, torch.Tensor]) -> None:
    net, x = network_and_input
    dims, conv_mode = net.spatial_dims, net.geometry.conv_mode.value
    out = net(x)
    margin = 20 if conv_mode == "valid" else 0  # (3 - 1) * (1 + 2 + 4) + (3 - 1) * (1 + 2) for three levels
    assert net.geometry.margin == (margin,) * dims
    assert list(out.shape) == [x.shape[0], 3, *(size - 2 * margin for size in x.shape[2:])]


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
    assert paper.geometry.margin == (92, 92)
    assert paper.geometry.output_size(572) == (388, 388)


@pytest.mark.parametrize("conv_mode", ["same", "valid"])
@pytest.mark.parametrize("dims", [2, 3])
def test_deep_supervision_stacks_in_training_and_not_in_eval(dims: int, conv_mode: str) -> None:
    net = UNet(dims, 1, 3, features=FEATURES, deep_supervision=True, conv_mode=conv_mode)
    x = small_input(dims, conv_mode)
    spatial = list(net.geometry.output_size(x.shape[2:]))
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
def test_geometry_matches_the_valid_network(depth: int, kernel_size: int) -> None:
    net = UNet(2, 1, 1, features=[2] * depth, kernel_size=kernel_size, conv_mode="valid", norm=None)
    geometry = net.geometry
    sizes = geometry.valid_input_sizes(0, max_size=400)
    assert sizes[0] == geometry.smallest_input_size[0]
    for size in sizes[:3]:
        with torch.no_grad():
            out = net(torch.zeros(1, 1, size, size))
        assert tuple(out.shape[2:]) == geometry.output_size(size)
        assert size - out.shape[-1] == 2 * geometry.margin[0]
    assert geometry.input_size_for_output(1) == geometry.smallest_input_size
    with pytest.raises(ValueError, match="nearest valid sizes"):
        net(torch.zeros(1, 1, sizes[0] - 1, sizes[0]))  # one voxel too few: refused


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"norm": "bogus"}, r"norm='bogus'.*Available options"),
        ({"spatial_dims": 4}, r"spatial_dims must be 2 or 3, got 4"),
        ({"norm": ("group", {"num_groups": 5})}, r"divisible by num_groups"),
        ({"conv_mode": "full"}, r"conv_mode must be one of \('same', 'valid'\)"),
        ({"up_mode": "pixelshuffle"}, r"^up_mode must be one of \('deconv', 'nontrainable'\), got 'pixelshuffle'\.$"),
        ({"init": "orthogonal"}, r"init must be one of"),
        ({"kernel_size": 4}, r"kernel_size must hold positive odd numbers only, got 4"),
        ({"dropout": 1.5}, r"dropout must be in \[0, 1\)"),
        ({"strides": [2, 2, 2]}, r"strides must be an int or one entry per pooling \(2\)"),
        ({"kernel_size": [3, 3]}, r"kernel_size must be an int or one entry per level \(3\)"),
        ({"deep_supervision": True, "features": (4, 8)}, r"deep_supervision needs"),
        ({"features": ()}, r"features must list at least one"),
    ],
)
def test_wrong_arguments_give_one_line_errors(kwargs: dict, message: str) -> None:
    arguments = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "features": FEATURES, **kwargs}
    with pytest.raises(ValueError, match=message) as error:
        UNet(**arguments)
    assert "\n" not in str(error.value)


def test_wrong_inputs_give_clear_errors() -> None:
    net = UNet(2, 1, 2, features=FEATURES, conv_mode="valid")
    with pytest.raises(ValueError, match=r"input size 45 on spatial axis 0 does not fit .* valid sizes are 44 or 48"):
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


@pytest.mark.parametrize(
    "arguments", [{}, {**ANISOTROPIC[3], "up_mode": "nontrainable"}], ids=["default", "anisotropic-nontrainable"]
)
def test_onnx_export_runs_in_onnxruntime(tmp_path, arguments: dict) -> None:
    import onnxruntime

    net = UNet(3, 1, 3, features=FEATURES, **arguments).eval()
    x = small_input(3, "same", batch=1)
    path = tmp_path / "unet.onnx"
    torch.onnx.export(net, (x,), str(path), input_names=["image"], output_names=["logits"], dynamo=True)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(logits), net(x), rtol=1e-4, atol=1e-4)


def anisotropic_input(net: UNet, batch: int = 2) -> torch.Tensor:
    """Same mode: sizes the divisor does not divide; valid mode: one divisor above the smallest valid size."""
    geometry = net.geometry
    if geometry.conv_mode == "same":
        sizes = [9 + 2 * axis for axis in range(geometry.spatial_dims)]
    else:
        sizes = [s + d for s, d in zip(geometry.smallest_input_size, geometry.divisor)]
    return torch.randn(batch, 1, *sizes)


@pytest.fixture(params=ANISOTROPIC_CASES, ids=["{}d-{}-{}".format(*case) for case in ANISOTROPIC_CASES])
def anisotropic_network(request: pytest.FixtureRequest) -> UNet:
    dims, conv_mode, up_mode = request.param
    torch.manual_seed(0)
    return UNet(dims, 1, 3, features=FEATURES, conv_mode=conv_mode, up_mode=up_mode, **ANISOTROPIC[dims])


def test_anisotropic_shapes_and_gradients(anisotropic_network: UNet) -> None:
    net = anisotropic_network
    first_pool = net.pools[1]
    assert list(first_pool.kernel_size) == list(first_pool.stride) == ANISOTROPIC[net.spatial_dims]["strides"][0]
    assert net.encoder[0].layers[0].kernel_size[-1] == 1 and net.encoder[1].layers[0].kernel_size[-1] == 3
    x = anisotropic_input(net)
    out = net(x)
    assert tuple(out.shape) == (2, 3, *net.geometry.output_size(x.shape[2:]))
    if net.geometry.conv_mode == "valid":
        assert out.shape[-1] == x.shape[-1] - 2 * net.geometry.margin[-1] != x.shape[2] - 2 * net.geometry.margin[0]
        wrong = list(x.shape[2:])
        wrong[-1] += 1
        with pytest.raises(ValueError, match=f"on spatial axis {net.spatial_dims - 1} does not fit"):
            net(torch.zeros(1, 1, *wrong))
    out.square().mean().backward()
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_anisotropic_torchscript(anisotropic_network: UNet) -> None:
    net = anisotropic_network.eval()
    x = anisotropic_input(net, batch=1)
    scripted = torch.jit.script(net)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))


@pytest.mark.parametrize("conv_mode", ["same", "valid"])
@pytest.mark.parametrize("dims", [2, 3])
def test_anisotropic_deep_supervision(dims: int, conv_mode: str) -> None:
    torch.manual_seed(0)
    features = (4, 8, 16, 32)
    arguments = {"strides": [*ANISOTROPIC[dims]["strides"], 2], "kernel_size": [*ANISOTROPIC[dims]["kernel_size"], 5]}
    net = UNet(dims, 1, 2, features=features, conv_mode=conv_mode, deep_supervision=True, **arguments).train()
    x = anisotropic_input(net, batch=1)
    stacked = net(x)
    spatial = net.geometry.output_size(x.shape[2:])
    assert tuple(stacked.shape) == (1, 3, 2, *spatial)
    if conv_mode == "same":
        # Head k sits on level k + 1 and is up-sampled (nearest) by that level's scale: constant in such blocks
        # (seen on an input the divisor divides, which the network neither pads nor crops).
        stacked = net(torch.randn(1, 1, *(2 * d for d in net.geometry.divisor)))
        for head, scale in ((1, net.geometry.scales[1]), (2, net.geometry.scales[2])):
            aux = stacked[:, head]
            coarse = aux[(..., *(slice(0, None, s) for s in scale))]
            for axis, s in enumerate(scale):
                coarse = coarse.repeat_interleave(s, dim=2 + axis)
            torch.testing.assert_close(coarse, aux)
    net.eval()
    with torch.no_grad():
        assert tuple(net(x).shape) == (1, 2, *spatial)


def test_old_parameter_names_and_shapes() -> None:
    """The default, bundle and paper networks keep the parameters of unet-med 0.1 (before per-level strides).

    The fixture lists every parameter's name and shape as the network of commit 4badfc7 built them.
    """
    saved = json.loads((DATA / "unet_0.1_state_dict_shapes.json").read_text())
    for name, entry in saved.items():
        net = UNet(**entry["arguments"])
        shapes = {key: list(value.shape) for key, value in net.state_dict().items()}
        assert shapes == entry["state_dict"], name
        net.load_state_dict({key: torch.zeros(shape) for key, shape in entry["state_dict"].items()}, strict=True)


def float32_tolerance(net: UNet, expected: torch.Tensor) -> float:
    """How far two correct float32 evaluations of ``net`` may differ on outputs like ``expected``, on any CPU.

    Each convolution output is a float32 sum of K products (input channels x kernel voxels). CPUs order and block
    that sum differently (AVX2, AVX-512 and AMX kernels, thread splits): each order's rounding error is at most
    K * u (u = 2**-24, the float32 unit roundoff) of the terms' magnitude, so two orders differ by up to K * eps
    (eps = 2u). A layer passes its input's differences on and adds its own, so over the network's L convolutions
    they add up to L * K * eps of the output's scale: 1.7e-3 on the 2D network's outputs up to 15 (saved on one
    CPU, 2.8e-4 away on an AVX-512/AMX one), 3e-4 on the 3D one's, while one wrong weight moves them by more
    (see test_old_checkpoint_tolerance_catches_a_wrong_weight).
    """
    convolutions = [m for m in net.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
    terms = max(m.weight.numel() // m.out_channels for m in convolutions)
    return len(convolutions) * terms * torch.finfo(torch.float32).eps * float(expected.abs().max())


def assert_predicts(net: UNet, entry: dict, name: str) -> None:
    """``net`` gives the saved evaluation and training outputs of ``entry``, within :func:`float32_tolerance`."""
    with torch.no_grad():
        for mode, key in ((net.eval, "output"), (net.train, "training_output")):
            expected = entry[key]
            tolerance = float32_tolerance(net, expected)
            torch.testing.assert_close(mode()(entry["input"]), expected, rtol=0.0, atol=tolerance, msg=f"{name} {key}")


def old_checkpoints() -> dict[str, dict]:
    """Weights, an input and the outputs saved by unet-med 0.1 (commit 4badfc7), by network."""
    saved = torch.load(DATA / "unet_0.1_checkpoints.pt", weights_only=True)
    assert set(saved) == {"same_3d_deep_supervision", "valid_2d_nontrainable"}
    return saved


def test_old_checkpoints_load_and_predict_alike() -> None:
    for name, entry in old_checkpoints().items():
        net = UNet(**entry["arguments"])
        net.load_state_dict(entry["state_dict"], strict=True)
        assert_predicts(net, entry, name)


@pytest.mark.parametrize("layer", ["encoder.0", "decoder.0", "head"])
def test_old_checkpoint_tolerance_catches_a_wrong_weight(layer: str) -> None:
    """The tolerance is no blanket: one weight of the first, a middle or the last layer set to 0 fails it."""
    for name, entry in old_checkpoints().items():
        state = dict(entry["state_dict"])
        key = next(key for key in state if key.startswith(layer) and key.endswith("weight") and state[key].dim() > 1)
        state[key] = state[key].clone()
        state[key].view(-1)[state[key].abs().argmax()] = 0.0
        net = UNet(**entry["arguments"])
        net.load_state_dict(state, strict=True)
        with pytest.raises(AssertionError):
            assert_predicts(net, entry, name)
