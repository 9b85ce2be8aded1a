import pytest
import torch

from unet_med.bundle import precision
from unet_med.bundle.errors import BundleError


@pytest.mark.parametrize("native, expected", [(False, None), (True, torch.bfloat16)])
def test_auto_autocasts_only_on_native_bfloat16(monkeypatch, native, expected):
    monkeypatch.setattr(precision, "native_bf16", lambda: native)
    assert precision.cpu_autocast_dtype("auto") is expected
    assert precision.cpu_autocast_dtype(" AUTO ") is expected


def test_auto_picks_float32_on_this_cpu_unless_it_has_bfloat16_units():
    expected = torch.bfloat16 if precision.native_bf16() else None
    assert precision.cpu_autocast_dtype("auto") is expected


@pytest.mark.parametrize(
    "amp, expected", [(True, torch.bfloat16), ("true", torch.bfloat16), (False, None), ("0", None)]
)
def test_explicit_flags_are_obeyed(amp, expected):
    assert precision.cpu_autocast_dtype(amp) is expected


def test_cuda_amp_follows_the_device():
    assert precision.cuda_amp("auto", "cpu") is False
    assert precision.cuda_amp("auto", torch.device("cuda")) is True
    assert precision.cuda_amp("false", "cuda") is False
    assert precision.cuda_amp(True, "cpu") is False  # on a CPU the inferers autocast, not the engine
    assert precision.cuda_amp("yes", "cuda:0") is True


def test_a_bad_flag_is_one_line():
    assert [precision.amp_mode(value) for value in ("Auto", True, "no", 1)] == ["auto", "true", "false", "true"]
    for check in (precision.amp_mode, precision.cpu_autocast_dtype, lambda amp: precision.cuda_amp(amp, "cpu")):
        with pytest.raises(BundleError, match=r"^--amp must be auto, true or false, got 'maybe'\.$"):
            check("maybe")
