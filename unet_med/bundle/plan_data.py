"""Whether a data set is the data a plan was made from: training refuses a plan reused on other data.

The planner records in the plan what it planned from: ``channel_names`` (``dataset.json``'s modality) and the
``fingerprint`` section (the median spacing and, per channel, the foreground intensity percentiles). Training
compares the fingerprint of the data it is given (:func:`unet_med.bundle.fingerprint.compute_fingerprint`,
cached beside the plan) with that record. "Differs" is chosen so that the same data exported again passes and
other data does not:

- **Channel names**, exactly: ``dataset.json`` names the modality; MRI turned CT needs CT normalisation.
- **Median spacing**, per axis within ``SPACING_TOLERANCE`` (5%): a re-export changes a header's spacing by
  rounding (far below 0.1%), a converter that derives the slice spacing from the slice positions rather than the
  thickness tag by about 1%, and cases added from the same scanners move a median little; a resampled copy or
  another protocol (1 mm against 3 mm, or 0.7 mm against 1 mm) moves it by 30% or more, and the network would see
  anatomy at another scale than it was planned for.
- **Intensities**, for the channels the plan normalises with the data set's own statistics (``ct``: clip range,
  mean and std in HU), by the foreground's 0.5 / 50 / 99.5 percentiles: the 0.5-99.5 range may not grow or
  shrink by more than ``INTENSITY_RANGE_FACTOR`` (2x) and the median may not move by more than
  ``INTENSITY_SHIFT`` (half) of the plan's range. Percentiles of samples drawn from the same cases move by a few
  percent, another scanner's HU by a few tens of HU; raw stored values without the rescale slope (0..4095 instead
  of -1024..3071) shift the median by 1024 HU, a third of a typical range or more. Channels z-scored per case
  (``zscore``: MRI) are not compared: their intensities have no unit, and each case is rescaled anyway.

A plan written before the planner recorded its ``fingerprint`` is still used: only its channel names are
compared, and a warning says so.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from unet_med.bundle.errors import BundleError
from unet_med.bundle.fingerprint import Fingerprint
from unet_med.bundle.plan_file import FINGERPRINT_PERCENTILES

__all__ = ["INTENSITY_RANGE_FACTOR", "INTENSITY_SHIFT", "SPACING_TOLERANCE", "check_plan_fits_data",
           "data_difference"]

SPACING_TOLERANCE = 0.05
INTENSITY_RANGE_FACTOR = 2.0
INTENSITY_SHIFT = 0.5


def _mm(values: Sequence[float]) -> str:
    return " x ".join(f"{value:.3g}" for value in values)


def _spacing_difference(recorded: Sequence[float], current: Sequence[float]) -> str | None:
    if all(abs(now - then) <= SPACING_TOLERANCE * then for then, now in zip(recorded, current)):
        return None
    return (f"median spacing {_mm(current)} mm, the plan's {_mm(recorded)} mm (more than "
            f"{SPACING_TOLERANCE:.0%} apart)")


def _intensity_difference(name: str, recorded: Mapping[str, float], current: Mapping[str, float]) -> str | None:
    then_range = max(recorded["percentile_99_5"] - recorded["percentile_00_5"], 1e-6)
    now_range = max(current["percentile_99_5"] - current["percentile_00_5"], 1e-6)
    scaled = max(now_range / then_range, then_range / now_range) > INTENSITY_RANGE_FACTOR
    shifted = abs(current["median"] - recorded["median"]) > INTENSITY_SHIFT * then_range
    if not (scaled or shifted):
        return None
    found = ", ".join(f"{current[key]:.4g}" for key in FINGERPRINT_PERCENTILES)
    planned = ", ".join(f"{recorded[key]:.4g}" for key in FINGERPRINT_PERCENTILES)
    return (f"{name} foreground intensities (0.5 / 50 / 99.5 percentiles) {found}, the plan's {planned}: its "
            "clip, mean and std do not fit them")


def data_difference(plan: Mapping[str, Any], fingerprint: Fingerprint) -> str | None:
    """The first way the fingerprinted data differ from what the plan was made from (see the module), or ``None``.

    Args:
        plan: a loaded plan; one without a ``fingerprint`` section has only its channel names compared.
        fingerprint: the data set's.

    Returns:
        ``"<what>: <the data's> ..., the plan's <value>"`` in a few words, or ``None`` if the data fit.
    """
    names = plan.get("channel_names")
    if names is not None and list(names) != list(fingerprint.channel_names):
        return f"channel names {', '.join(fingerprint.channel_names)}, the plan's {', '.join(map(str, names))}"
    recorded = plan.get("fingerprint")
    if not isinstance(recorded, Mapping):
        return None
    spacing = _spacing_difference(recorded["median_spacing"], fingerprint.median_spacing().tolist())
    if spacing:
        return spacing
    for name, entry, then, now in zip(fingerprint.channel_names, plan["normalization"], recorded["intensity"],
                                      fingerprint.intensity):
        differs = _intensity_difference(name, then, now) if entry["scheme"] == "ct" else None
        if differs:
            return differs
    return None


def check_plan_fits_data(
    plan: Mapping[str, Any], plan_file: str | os.PathLike, fingerprint: Fingerprint, dataset_dir: str | os.PathLike
) -> None:
    """Refuse to train with a plan made from other data than ``dataset_dir`` (see the module for "other").

    Raises:
        BundleError: one line naming the data set, the plan file, the first difference and how to plan again.
    """
    plan_file = Path(plan_file)
    if not isinstance(plan.get("fingerprint"), Mapping):
        warnings.warn(f"{plan_file} records no fingerprint of the data it was planned from (planned before plans "
                      f"recorded it): only its channel names are compared with {dataset_dir}; delete it to plan "
                      "again and have the spacing and intensities compared too", stacklevel=2)
    differs = data_difference(plan, fingerprint)
    if differs:
        raise BundleError(
            f"{dataset_dir} is not the data {plan_file} was planned from: {differs}; to train on it, plan again: "
            f"delete {plan_file} and train (training plans from the data; --overwrite true replaces a model of the "
            "old plan), or train into another --ckpt_dir"
        )
