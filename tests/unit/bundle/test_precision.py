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


@pytest.mark.parametrize(
    ("amp", "device", "native", "text"),
    [
        ("auto", "cpu", True, "cpu, bfloat16 autocast (--amp auto: this CPU has native bfloat16 units)"),
        ("auto", "cpu", False, "cpu, float32 (--amp auto: this CPU has no native bfloat16 units)"),
        ("yes", "cpu", False, "cpu, bfloat16 autocast (--amp true: emulated on this CPU, many times slower)"),
        (False, "cpu", True, "cpu, float32 (--amp false: float32 asked for)"),
        ("auto", "cuda:0", False, "cuda:0, float16 mixed precision (--amp auto)"),
        ("false", torch.device("cuda"), False, "cuda, float32 (--amp false)"),
    ],
)
def test_the_precision_is_named_with_its_reason(monkeypatch, amp, device, native, text):
    monkeypatch.setattr(precision, "native_bf16", lambda: native)
    assert precision.precision_text(amp, device) == text
