import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor

from unet_med import OverlapTileInferer, UNet
from unet_med.inferers.tiling import mirror_pad
from unet_med.networks import UNetGeometry


def _valid_net(spatial_dims: int) -> UNet:
    torch.manual_seed(0)
    return UNet(spatial_dims, 1, 2, features=(4, 8, 16), conv_mode="valid", norm=None).eval()


def _whole_image(net: UNet, image: torch.Tensor, margin: tuple[int, ...]) -> torch.Tensor:
    """The network on the whole image, mirrored (by NumPy) by ``margin`` per axis and up to a size it accepts."""
    geometry = net.geometry
    padding = [(0, 0), (0, 0)]
    for n, m, first_valid, step in zip(image.shape[2:], margin, geometry.smallest_input_size, geometry.divisor):
        size = max(n + 2 * m, first_valid)
        size = first_valid + -(-(size - first_valid) // step) * step
        padding.append((m, size - n - m))
    padded = torch.from_numpy(np.pad(image.numpy(), padding, mode="reflect"))
    with torch.no_grad():
        out = net(padded)
    lost = [m - own for m, own in zip(margin, geometry.margin)]  # a valid-mode network drops its margin itself
    return out[(..., *(slice(k, k + n) for k, n in zip(lost, image.shape[2:])))]


def _valid_reference(net: UNet, image: torch.Tensor) -> torch.Tensor:
    return _whole_image(net, image, net.geometry.margin)


def _infer(inferer: OverlapTileInferer, image: torch.Tensor, net: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return inferer(image, net)


@pytest.mark.parametrize(
    ("shape", "tile"),
    [
        ((2, 1, 48, 60), 24),  # multiples of the tile
        ((1, 1, 45, 53), 24),  # not multiples; odd sizes
        ((1, 1, 11, 7), 24),  # smaller than one tile and than the margin (20)
        ((1, 1, 45, 53), (12, 20)),  # per-axis tiles, overlapping by tile % divisor
    ],
)
def test_valid_2d_tiles_equal_whole_image(shape, tile):
    net = _valid_net(2)
    image = torch.rand(shape)
    tiled = _infer(OverlapTileInferer(output_tile=tile), image, net)
    assert tiled.shape == (shape[0], 2, *shape[2:])
    torch.testing.assert_close(tiled, _valid_reference(net, image), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 1, 24, 24, 24), (1, 1, 13, 30, 9)])
def test_valid_3d_tiles_equal_whole_image(shape):
    net = _valid_net(3)
    image = torch.rand(shape)
    tiled = _infer(OverlapTileInferer(output_tile=12, sw_batch_size=4), image, net)
    assert tiled.shape == (1, 2, *shape[2:])
    torch.testing.assert_close(tiled, _valid_reference(net, image), rtol=1e-4, atol=1e-5)


def test_sw_batch_size_and_automatic_tiles():
    net = _valid_net(2)
    image = torch.rand(2, 1, 57, 41)
    one = _infer(OverlapTileInferer(max_input_tile=60, sw_batch_size=1), image, net)
    many = _infer(OverlapTileInferer(max_input_tile=60, sw_batch_size=5), image, net)
    torch.testing.assert_close(one, many, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(one, _valid_reference(net, image), rtol=1e-4, atol=1e-5)


def test_bad_tiles_name_valid_sizes():
    net = _valid_net(2)  # margin 20, divisor 4: valid output tiles are 4, 8, 12, ...; at least 4
    with pytest.raises(ValueError, match=r"output_tile 10 on spatial axis 1 .* 8 or 12"):
        _infer(OverlapTileInferer(output_tile=(12, 10)), torch.rand(1, 1, 30, 30), net)
    with pytest.raises(ValueError, match=r"smallest input tile .* \(44 voxels\)"):
        _infer(OverlapTileInferer(max_input_tile=40), torch.rand(1, 1, 30, 30), net)
    with pytest.raises(ValueError, match="fixes the margin to 20"):
        _infer(OverlapTileInferer(output_tile=12, margin=4), torch.rand(1, 1, 30, 30), net)


def test_same_mode_with_context_margin_equals_whole_image():
    torch.manual_seed(0)
    net = UNet(2, 1, 3, features=(4, 8), norm=None).eval()  # same mode, divisor 2
    # The receptive field reaches context_margin = 8 voxels, and up to divisor - 1 more by the pooling grid.
    margin = net.geometry.context[0] + net.geometry.divisor[0]
    image = torch.rand(1, 1, 50, 37)
    tiled = _infer(OverlapTileInferer(output_tile=16, margin=margin), image, net)
    # Equal to the network on the whole mirror-padded image everywhere ...
    torch.testing.assert_close(tiled, _whole_image(net, image, (margin, margin)), rtol=1e-4, atol=1e-5)
    # ... and to the network on the plain image away from the image border, where its zero padding reaches.
    with torch.no_grad():
        plain = net(image)
    inner = (..., slice(margin, -margin), slice(margin, -margin))
    torch.testing.assert_close(tiled[inner], plain[inner], rtol=1e-4, atol=1e-5)
    # Without a margin the tiles' own zero padding shows at their seams.
    seamed = _infer(OverlapTileInferer(output_tile=16, margin=0), image, net)
    assert (seamed[inner] - plain[inner]).abs().max() > 1e-3


def test_metatensor_devices_and_amp():
    net = _valid_net(2)
    image = MetaTensor(torch.rand(1, 1, 30, 31), meta={"filename_or_obj": "slice.png"})
    inferer = OverlapTileInferer(output_tile=12, sw_device="cpu", device="cpu", amp=True, progress=True)
    out = _infer(inferer, image, net)
    assert isinstance(out, MetaTensor)
    assert out.meta["filename_or_obj"] == "slice.png"
    assert out.shape == (1, 2, 30, 31)
    torch.testing.assert_close(
        out.as_tensor().float(), _valid_reference(net, image.as_tensor()), rtol=0.1, atol=0.1
    )


def test_mirror_pad_matches_numpy_for_large_padding():
    image = torch.arange(12.0).reshape(1, 1, 3, 4)
    padded = mirror_pad(image, [(7, 5), (0, 9)])
    np.testing.assert_array_equal(
        padded.numpy(), np.pad(image.numpy(), [(0, 0), (0, 0), (7, 5), (0, 9)], "reflect")
    )
    assert mirror_pad(torch.ones(1, 1, 1, 2), [(3, 3), (0, 0)]).shape == (1, 1, 7, 2)


class _Affine(UNet):
    def forward(self, x, scale, shift=0.0):
        return super().forward(x) * scale + shift


def test_network_with_extra_arguments_and_wrong_output():
    net = _valid_net(2)
    wrapped = _Affine(2, 1, 2, features=(4, 8, 16), conv_mode="valid", norm=None).eval()
    wrapped.load_state_dict(net.state_dict())
    image = torch.rand(1, 1, 20, 20)
    inferer = OverlapTileInferer(output_tile=12)
    with torch.no_grad():
        out = inferer(image, wrapped, 2.0, shift=1.0)
    torch.testing.assert_close(out, _valid_reference(net, image) * 2 + 1, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="one tensor of spatial size"):
        inferer(image, lambda x: (x, x))


def test_bundle_config_builds_the_inferer():
    parser = ConfigParser(
        {
            "network_def": {
                "_target_": "unet_med.networks.UNet",
                "spatial_dims": 2,
                "in_channels": 1,
                "out_channels": 2,
                "features": [4, 8, 16],
                "conv_mode": "valid",
                "norm": None,
            },
            "inferer": {
                "_target_": "unet_med.inferers.OverlapTileInferer",
                "max_input_tile": [64, 48],
                "sw_batch_size": 2,
            },
        }
    )
    inferer = parser.get_parsed_content("inferer")
    net = parser.get_parsed_content("network_def").eval()
    assert isinstance(inferer, OverlapTileInferer)
    assert _infer(inferer, torch.rand(1, 1, 33, 70), net).shape == (1, 2, 33, 70)


def test_supervised_evaluator_runs_the_inferer():
    from monai.engines import SupervisedEvaluator

    net = _valid_net(2)
    data = [{"image": torch.rand(1, 1, 29, 34), "label": torch.zeros(1, 1, 29, 34)}]
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=data,
        network=net,
        inferer=OverlapTileInferer(output_tile=12),
    )
    evaluator.run()
    assert evaluator.state.output[0]["pred"].shape == (2, 29, 34)


@pytest.fixture
def one_process_group(tmp_path):
    """A gloo process group of one process on the CPU, as torchrun would start it, destroyed at the end."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    torch.distributed.destroy_process_group()


def test_network_inside_distributed_data_parallel(one_process_group):
    net = _valid_net(2)
    image = torch.rand(1, 1, 45, 53)
    inferer = OverlapTileInferer(output_tile=12, sw_batch_size=3)
    wrapped = torch.nn.parallel.DistributedDataParallel(net)
    torch.testing.assert_close(_infer(inferer, image, wrapped), _infer(inferer, image, net), rtol=0, atol=0)


def test_compiled_network():
    net = _valid_net(3)
    image = torch.rand(1, 1, 13, 30, 9)
    inferer = OverlapTileInferer(output_tile=12, sw_batch_size=4)
    compiled = torch.compile(net, backend="eager", dynamic=False)
    torch.testing.assert_close(_infer(inferer, image, compiled), _infer(inferer, image, net), rtol=1e-5, atol=1e-6)


def test_explicit_geometry_for_a_scripted_network():
    net = _valid_net(2)
    image = torch.rand(1, 1, 30, 41)
    scripted = torch.jit.script(net)  # TorchScript keeps the weights, not the geometry
    misread = r"size \(52, 52\) \(same mode.*got \(1, 2, 12, 12\).*OverlapTileInferer\(geometry="
    with pytest.raises(ValueError, match=misread):
        _infer(OverlapTileInferer(output_tile=12, margin=20), image, scripted)
    explicit = _infer(OverlapTileInferer(output_tile=12, geometry=net.geometry), image, scripted)
    torch.testing.assert_close(explicit, _valid_reference(net, image), rtol=1e-4, atol=1e-5)


def test_network_without_geometry_is_size_preserving():
    geometry = UNetGeometry.size_preserving(2)
    assert (geometry.margin, geometry.divisor, geometry.context) == ((0, 0), (1, 1), (0, 0))
    image = torch.rand(1, 1, 21, 17)
    out = _infer(OverlapTileInferer(output_tile=5, margin=3), image, lambda x: 2 * x)  # no parameters, any size
    torch.testing.assert_close(out, 2 * image)


def test_anisotropic_valid_3d_tiles_equal_whole_image():
    torch.manual_seed(0)
    arguments = {"strides": [[2, 2, 1], [2, 2, 2]], "kernel_size": [[3, 3, 1], 3, 3]}
    net = UNet(3, 1, 2, features=(4, 8, 16), conv_mode="valid", norm=None, **arguments).eval()
    assert (net.geometry.margin, net.geometry.divisor) == ((20, 20, 8), (4, 4, 2))
    image = torch.rand(1, 1, 19, 26, 11)
    chosen = OverlapTileInferer(output_tile=(8, 12, 6), sw_batch_size=4)
    for inferer in (chosen, OverlapTileInferer(max_input_tile=(52, 60, 24))):
        torch.testing.assert_close(_infer(inferer, image, net), _valid_reference(net, image), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"output_tile 5 on spatial axis 2 .*margin 8, divisor 2.* 4 or 6"):
        _infer(OverlapTileInferer(output_tile=(8, 12, 5)), image, net)
    with pytest.raises(ValueError, match=r"fixes the margin to \(20, 20, 8\) voxels"):
        _infer(OverlapTileInferer(output_tile=8, margin=20), image, net)


def test_same_mode_margin_per_axis():
    torch.manual_seed(0)
    net = UNet(2, 1, 3, features=(4, 8), norm=None, strides=[[2, 1]]).eval()  # divisor (2, 1)
    margin = tuple(c + d for c, d in zip(net.geometry.context, net.geometry.divisor))  # (10, 9)
    image = torch.rand(1, 1, 30, 23)
    tiled = _infer(OverlapTileInferer(output_tile=(16, 7), margin=margin), image, net)
    torch.testing.assert_close(tiled, _whole_image(net, image, margin), rtol=1e-4, atol=1e-5)
