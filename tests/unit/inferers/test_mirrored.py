import pytest
import torch
from monai.data import MetaTensor
from monai.inferers import SimpleInferer, SliceInferer, SlidingWindowInferer

from unet_med import MirroredInferer, OverlapTileInferer, UNet
from unet_med.inferers.mirrored import mirror_flips


def _net(spatial_dims: int, **kwargs) -> UNet:
    torch.manual_seed(0)
    return UNet(spatial_dims, 1, 3, features=(4, 8, 16), **kwargs).eval()


def _mean_of_flipped(inner, net, image: torch.Tensor, dims_list) -> torch.Tensor:
    """The flipped-back predictions of the flipped images, summed in order and divided: the definition."""
    total = 0
    for dims in dims_list:
        flipped = torch.flip(image, dims) if dims else image
        prediction = torch.as_tensor(inner(flipped, net))
        total = total + (torch.flip(prediction, dims) if dims else prediction)
    return total / len(dims_list)


def test_mirror_flips_are_every_combination_once():
    flips = list(mirror_flips((0, 1, 2)))
    assert flips[0] == () and len(flips) == 8 and len(set(flips)) == 8
    assert set(flips) == {(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)}
    assert list(mirror_flips((0, 1))) == [(), (2,), (3,), (2, 3)]


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_mean_of_the_flipped_predictions_exactly(spatial_dims):
    net, image = _net(spatial_dims), torch.rand(2, 1, *[12] * spatial_dims)
    with torch.no_grad():
        tta = MirroredInferer(SimpleInferer())(image, net)
        expected = _mean_of_flipped(SimpleInferer(), net, image, list(mirror_flips(range(spatial_dims))))
    assert tta.shape == (2, 3, *[12] * spatial_dims)
    torch.testing.assert_close(tta, expected, rtol=0, atol=0)


def test_any_network_becomes_mirror_equivariant():
    net, image = _net(3), torch.rand(1, 1, 16, 12, 8)
    dims = (2, 4)
    with torch.no_grad():
        plain = net(torch.flip(image, dims)), torch.flip(net(image), dims)
        tta = MirroredInferer(SimpleInferer())
        mirrored = tta(torch.flip(image, dims), net), torch.flip(tta(image, net), dims)
    assert not torch.allclose(*plain, atol=1e-3)  # a trained-looking network is not equivariant by itself
    torch.testing.assert_close(*mirrored, rtol=1e-5, atol=1e-6)


def test_a_symmetric_network_is_unchanged():
    """A convolution whose kernel is symmetric under every mirroring commutes with it: TTA changes nothing."""
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(1, 2, 3, padding=1, padding_mode="reflect")
    with torch.no_grad():
        kernel = conv.weight.clone()
        conv.weight.copy_(sum(torch.flip(kernel, dims) for dims in mirror_flips((0, 1, 2))) / 8)
        image = torch.rand(1, 1, 9, 10, 11)
        torch.testing.assert_close(conv(torch.flip(image, (2, 3))), torch.flip(conv(image), (2, 3)))
        torch.testing.assert_close(MirroredInferer(SimpleInferer())(image, conv), conv(image))


def test_with_overlap_tile_inference_of_a_valid_network():
    net = _net(2, conv_mode="valid", norm=None)
    image = MetaTensor(torch.rand(1, 1, 45, 53), meta={"filename_or_obj": "case.nii.gz"})
    inner = OverlapTileInferer(output_tile=24)
    with torch.no_grad():
        tta = MirroredInferer(inner)(image, net)
        expected = _mean_of_flipped(inner, net, image.as_tensor(), list(mirror_flips((0, 1))))
    assert isinstance(tta, MetaTensor) and tta.meta["filename_or_obj"] == "case.nii.gz"
    assert tta.shape == (1, 3, 45, 53)
    torch.testing.assert_close(tta.as_tensor(), expected, rtol=0, atol=0)


def test_with_slice_inference_mirroring_the_in_plane_axes():
    """A 2D network slice by slice (slices along spatial axis 2): mirroring across slices adds nothing."""
    net, volume = _net(2), torch.rand(1, 1, 16, 12, 5)
    inner = SliceInferer(roi_size=(16, 12), spatial_dim=2, sw_batch_size=8)
    with torch.no_grad():
        in_plane = MirroredInferer(inner, spatial_axes=(0, 1))(volume, net)
        expected = _mean_of_flipped(inner, net, volume, list(mirror_flips((0, 1))))
        every_axis = MirroredInferer(inner)(volume, net)
    torch.testing.assert_close(in_plane, expected, rtol=0, atol=0)
    torch.testing.assert_close(every_axis, in_plane, rtol=1e-5, atol=1e-6)


def test_with_sliding_windows_keeps_the_inner_dtype():
    net, image = _net(2), torch.rand(1, 1, 20, 28)
    inner = SlidingWindowInferer(roi_size=(16, 16), overlap=0.5, mode="gaussian")
    with torch.no_grad():
        tta = MirroredInferer(inner)(image, net)
        expected = _mean_of_flipped(inner, net, image, list(mirror_flips((0, 1))))
    assert tta.dtype == torch.float32
    torch.testing.assert_close(tta, expected, rtol=0, atol=0)


def test_bad_axes_and_predictions_are_refused():
    with pytest.raises(ValueError, match="distinct"):
        MirroredInferer(SimpleInferer(), spatial_axes=(0, 0))
    with pytest.raises(ValueError, match="2 spatial axes"):
        MirroredInferer(SimpleInferer(), spatial_axes=(2,))(torch.rand(1, 1, 8, 8), _net(2))
    with pytest.raises(ValueError, match="one prediction"):
        MirroredInferer(SimpleInferer())(torch.rand(1, 1, 8, 8), lambda x: (x, x))
