"""A plan reused on other data: the planned fingerprint against a data set's, on real NIfTI folders."""

from __future__ import annotations

import numpy as np
import pytest

from unet_med.bundle.errors import BundleError
from unet_med.bundle.fingerprint import compute_fingerprint
from unet_med.bundle.plan import PlanSettings, make_plan
from unet_med.bundle.plan_data import check_plan_fits_data, data_difference


def cases(offset: float = 0.0, scale: float = 1.0, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Three 24^3 cases: a noisy body of about 40 (x ``scale``, + ``offset``) around a labelled cube."""
    rng = np.random.default_rng(seed)
    result = []
    for index in range(3):
        image = rng.normal(40, 20, (24, 24, 24)) * scale + offset
        label = np.zeros((24, 24, 24), np.uint8)
        label[6 + index : 16 + index, 6:16, 6:16] = 1
        result.append((image.astype(np.float32), label))
    return result


def planned(write_decathlon, channel: str, spacing=(1.0, 1.0, 2.0), **kwargs) -> tuple[dict, str]:
    folder = write_decathlon(cases(**kwargs), [spacing] * 3, channel_names=[channel], name=f"planned_{channel}")
    plan, _ = make_plan(compute_fingerprint(folder, workers=1, progress=False), PlanSettings(flops_per_second=1e11))
    return plan, folder


def difference(plan: dict, write_decathlon, name: str, channel: str, spacing=(1.0, 1.0, 2.0), **kwargs) -> str | None:
    folder = write_decathlon(cases(**kwargs), [spacing] * 3, channel_names=[channel], name=name)
    return data_difference(plan, compute_fingerprint(folder, workers=1, progress=False))


def test_the_same_data_exported_again_fits_its_plan(write_decathlon):
    plan, _ = planned(write_decathlon, "MRI")
    assert plan["fingerprint"]["median_spacing"] == [1.0, 1.0, 2.0]
    # Headers rounded by another converter (0.4%), other draws of the samples, MRI stored at 3x the scale.
    assert difference(plan, write_decathlon, "again", "MRI", (1.004, 0.998, 2.01), seed=1, scale=3.0) is None
    ct_plan, _ = planned(write_decathlon, "CT")
    assert difference(ct_plan, write_decathlon, "ct_again", "CT", offset=15.0, seed=2) is None  # another scanner


def test_other_spacing_channels_or_ct_intensities_are_named(write_decathlon):
    plan, _ = planned(write_decathlon, "MRI")
    assert difference(plan, write_decathlon, "coarse", "MRI", (3.0, 3.0, 6.0)) == (
        "median spacing 3 x 3 x 6 mm, the plan's 1 x 1 x 2 mm (more than 5% apart)")
    assert difference(plan, write_decathlon, "ct", "CT") == "channel names CT, the plan's MRI"
    ct_plan, _ = planned(write_decathlon, "CT")
    raw = difference(ct_plan, write_decathlon, "raw", "CT", offset=1024.0)  # stored values without the HU offset
    assert raw is not None and raw.startswith("CT foreground intensities (0.5 / 50 / 99.5 percentiles)")
    assert raw.endswith("its clip, mean and std do not fit them")
    assert difference(ct_plan, write_decathlon, "wide", "CT", scale=3.0) is not None


def test_the_refusal_is_one_line_and_an_old_plan_is_still_used(write_decathlon):
    plan, folder = planned(write_decathlon, "MRI")
    other = write_decathlon(cases(), [(3.0, 3.0, 6.0)] * 3, channel_names=["MRI"], name="other")
    with pytest.raises(BundleError) as error:
        check_plan_fits_data(plan, "models/plan.yaml", compute_fingerprint(other, workers=1, progress=False), other)
    assert str(error.value) == (
        f"{other} is not the data models/plan.yaml was planned from: median spacing 3 x 3 x 6 mm, the plan's "
        "1 x 1 x 2 mm (more than 5% apart); to train on it, plan again: delete models/plan.yaml and train (training "
        "plans from the data; --overwrite true replaces a model of the old plan), or train into another --ckpt_dir"
    )
    old = {key: value for key, value in plan.items() if key != "fingerprint"}  # planned before the record
    with pytest.warns(UserWarning, match="records no fingerprint of the data it was planned from"):
        check_plan_fits_data(old, "models/plan.yaml", compute_fingerprint(other, workers=1, progress=False), other)
    with pytest.raises(BundleError, match="channel names MRI, the plan's CT"), pytest.warns(UserWarning):
        check_plan_fits_data({**old, "channel_names": ["CT"]}, "models/plan.yaml",
                             compute_fingerprint(folder, workers=1, progress=False), folder)
