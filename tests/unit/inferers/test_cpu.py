from pathlib import Path

import pytest
import torch
from monai.inferers import SlidingWindowInferer
from monai.transforms import Compose, EnsureChannelFirst, LoadImage, NormalizeIntensity

from unet_med import UNet
from unet_med.inferers import CPUInferer, native_bf16


def _cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.fixture(scope="module")
def hippocampus_volume(samples: Path) -> torch.Tensor:
    """A real MRI case of data_samples, z-scored, as (1, 1, X, Y, Z)."""
    load = Compose([LoadImage(image_only=True), EnsureChannelFirst(), NormalizeIntensity(nonzero=True)])
    return torch.as_tensor(load(samples / "imagesTr" / "hippocampus_001.nii.gz")).float()[None]


def _network() -> UNet:
    torch.manual_seed(0)
    return UNet(3, 1, 3, features=(8, 16, 32, 64)).eval()


def _sliding_window() -> SlidingWindowInferer:
    return SlidingWindowInferer((32, 32, 32), sw_batch_size=2, overlap=0.25, mode="gaussian")


def _infer(inferer, image: torch.Tensor, network: torch.nn.Module) -> torch.Tensor:
    with torch.inference_mode():
        return inferer(image, network)


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="reads the CPU flags from /proc/cpuinfo")
def test_native_bf16_follows_the_cpu_flags():
    flags = _cpu_flags()
    assert isinstance(native_bf16(), bool)
    assert native_bf16() == bool(flags & {"avx512_bf16", "amx_bf16", "amx_tile"})


def test_half_precision_stitching_keeps_the_label_map(hippocampus_volume):
    network = _network()
    reference = _infer(_sliding_window(), hippocampus_volume, network)
    half = _infer(CPUInferer(_sliding_window(), stitch_dtype=torch.float16), hippocampus_volume, network)
    assert half.dtype == torch.float16 and half.shape == reference.shape
    same = half.float().argmax(1) == reference.argmax(1)
    # Any voxel whose label changes is a near tie in float32: its two best logits lie within float16's rounding.
    top2 = reference.topk(2, dim=1).values
    margin = (top2[:, 0] - top2[:, 1])[~same]
    assert same.float().mean() > 0.999
    assert bool((margin < 1e-2 * top2[:, 0].abs()[~same].clamp(min=1)).all())


def test_channels_last_gives_the_same_logits(hippocampus_volume):
    network = _network()
    reference = _infer(_sliding_window(), hippocampus_volume, network)
    fast = _infer(CPUInferer(_sliding_window(), channels_last=True), hippocampus_volume, network)
    assert next(network.parameters()).is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(fast, reference, atol=1e-4, rtol=1e-4)


def test_channels_last_in_2d():
    torch.manual_seed(0)
    network = UNet(2, 1, 2, features=(4, 8)).eval()
    image = torch.randn(1, 1, 40, 40)
    inferer = SlidingWindowInferer((32, 32), overlap=0.25)
    reference = _infer(inferer, image, network)
    fast = _infer(CPUInferer(inferer, channels_last=True), image, network)
    torch.testing.assert_close(fast, reference, atol=1e-4, rtol=1e-4)


def test_autocast_runs_the_convolutions_in_bfloat16():
    network = _network()
    seen = []
    network.head.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    image = torch.randn(1, 1, 32, 32, 32)
    reference = _infer(_sliding_window(), image, network)
    low = _infer(CPUInferer(_sliding_window(), autocast_dtype=torch.bfloat16), image, network)
    assert seen == [torch.float32, torch.bfloat16]
    assert low.dtype == torch.float32
    # bfloat16 keeps 8 bits of mantissa: logits agree to a few percent of their range
    assert (low - reference).abs().max() < 0.05 * reference.abs().max()


def test_bad_dtypes_are_refused():
    with pytest.raises(ValueError, match="autocast_dtype"):
        CPUInferer(_sliding_window(), autocast_dtype=torch.float64)
    with pytest.raises(ValueError, match="stitch_dtype"):
        CPUInferer(_sliding_window(), stitch_dtype=torch.int8)
