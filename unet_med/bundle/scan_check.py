"""Scans unlike the ones a model was trained on: a warning line naming the scan and what differs, or a refusal.

A model segments whatever it is given: a hippocampus MRI model labelled 13.5% of an abdominal CT "hippocampus"
without a word. The plan records the range of voxel spacings and of physical sizes (shape times spacing, mm) of
the scans it was made from (``trained_on``, see :func:`trained_on`). :class:`ScanCheckd`, in the bundles'
inference preprocessing (so in MONAI Label too) and in evaluation's (:func:`with_scan_check`), compares each
scan with it after ``Orientationd`` and, for a scan outside those ranges by more than :data:`FACTOR` on some
axis, or a DICOM scan of another modality than the model's channel (``CT`` against ``MRI``), logs one warning
line naming the scan and each difference, or with ``--strict_scans true`` refuses it:
:func:`refuse_unlike_scans` runs the preprocessing up to the check on every input before anything is built or
written, and names every such scan, one line each (exit 1).

The factor was chosen on real data (spacing and size of every case, RAS axes; "outside by" is how many times
smaller than the smallest or larger than the largest training value a scan is on its worst axis):

=============================================  =============  ===========
plan from / scans checked                      spacing        size
=============================================  =============  ===========
10 hippocampus cases / the 200 of MSD Task04   1.00 (all)     1.00 - 1.29
10 hippocampus cases / 80 LA 2018 MRI          1.60 (all)     2.37 - 3.91
10 hippocampus cases / the abdominal CT        3.00           9.38
200 hippocampus cases / 80 LA 2018 MRI         1.60 (all)     2.15 - 3.55
80 LA 2018 MRI / 200 hippocampus cases         1.60 (all)     2.15 - 2.98
80 LA 2018 MRI / the abdominal CT              4.80           3.03
=============================================  =============  ===========

With a factor of 2, none of the 200 hippocampus cases is flagged against a plan made from 10 of them, and every
left-atrium MRI and the CT are flagged against a hippocampus plan (and the reverse). Intensities are not compared:
the MRI intensity scale differs up to ~1000x between cases of the hippocampus set itself. A plan written before
``trained_on`` existed has no ranges, and its scans are not checked.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.data.utils import affine_to_spacing
from monai.transforms import Compose, MapTransform, Orientationd
from monai.utils import ImageMetaKey

from unet_med.bundle.errors import BundleError, bundle_error_in
from unet_med.bundle.flags import as_bool

__all__ = ["FACTOR", "ScanCheckd", "refuse_unlike_scans", "scan_differences", "trained_modality", "trained_on",
           "with_scan_check"]

MR_NAMES = ("MR", "MRI", "T1", "T1W", "T1GD", "T2", "T2W", "FLAIR", "PD", "ADC", "DWI")
"""Channel names of MR images (the plan's ``channel_names``, from ``dataset.json``), read as DICOM's ``MR``."""
FACTOR = 2.0
"""How many times smaller than the smallest, or larger than the largest, training value a scan may be on an axis."""
RANGES = {"spacing": "mm", "size": "mm"}
logger = logging.getLogger(__name__)


def trained_on(spacings: np.ndarray, shapes: np.ndarray) -> dict[str, list[list[float]]]:
    """The plan's ``trained_on`` section: per axis the smallest and largest spacing and size of the cases.

    Args:
        spacings: ``(cases, 3)`` voxel spacings, mm, RAS axes.
        shapes: ``(cases, 3)`` shapes in voxels, RAS axes.

    Returns:
        ``{"spacing": [[min per axis], [max per axis]], "size": [[...], [...]]}``, size in mm.
    """
    spacings, sizes = np.asarray(spacings, dtype=float), np.asarray(shapes, dtype=float) * spacings
    return {name: [values.min(axis=0).tolist(), values.max(axis=0).tolist()]
            for name, values in (("spacing", spacings), ("size", sizes))}


def _axes(values: Sequence[float]) -> str:
    return " x ".join(f"{value:.3g}" for value in values)


def trained_modality(channel_names: Sequence[str]) -> str | None:
    """The DICOM modality (``CT``, ``MR``) a one-channel model was trained on, from its channel name, if known."""
    if len(channel_names) != 1:
        return None
    name = channel_names[0].strip().upper()
    if name == "CT":
        return "CT"
    return "MR" if name in MR_NAMES or "MRI" in name else None


def scan_differences(
    spacing: Sequence[float], shape: Sequence[int], ranges: Mapping[str, Any], axes: int = 3
) -> list[str]:
    """What sets a scan apart from the training scans, one phrase per measure; empty if nothing does.

    Args:
        spacing: the scan's voxel spacing, mm, RAS axes.
        shape: its spatial shape, voxels, RAS axes.
        ranges: the plan's ``trained_on`` (see :func:`trained_on`).
        axes: the axes compared, from the first: 3, or 2 for a 2D model, which sees one slice at a time and
            takes any number of slices (a single one too).

    Returns:
        e.g. ``["spacing 3 x 3 x 3 mm (trained on 1 x 1 x 1 mm)"]``: a measure is named when on some compared
        axis it is more than :data:`FACTOR` times below the training minimum or above the training maximum.
    """
    measured = {"spacing": np.asarray(spacing, dtype=float)}
    measured["size"] = np.asarray(shape, dtype=float) * measured["spacing"]
    differences = []
    for name, unit in RANGES.items():
        low, high = (np.asarray(bound, dtype=float) for bound in ranges[name])
        value, low_axes, high_axes = measured[name][:axes], low[:axes], high[:axes]
        if np.any(value * FACTOR < low_axes) or np.any(value > high_axes * FACTOR):
            trained = _axes(low) if np.allclose(low, high) else " x ".join(
                f"{lo:.3g}-{hi:.3g}" for lo, hi in zip(low, high))
            differences.append(f"{name} {_axes(measured[name])} {unit} (trained on {trained} {unit})")
    return differences


class ScanCheckd(MapTransform):
    """Warn about (or refuse) a scan unlike the ones the model was trained on; the data passes unchanged.

    Put it after ``Orientationd(axcodes="RAS")`` and before any resampling, so that spacing and shape are the
    scan's own on RAS axes. A DICOM scan's ``modality`` (see :class:`~unet_med.bundle.readers.SimpleITKReader`)
    is compared with a one-channel model's channel name when that names a modality (:func:`trained_modality`). A
    2D plan compares the in-plane axes only (see :func:`scan_differences`).

    Args:
        keys: the images.
        plan: the model's plan (its ``spatial_dims`` and ``trained_on``); without ``trained_on`` nothing is
            checked.
        strict: refuse such a scan instead of warning (the bundles' ``strict_scans`` option).
    """

    def __init__(self, keys: KeysCollection, plan: Mapping[str, Any], strict: bool | str = False) -> None:
        super().__init__(keys)
        self.ranges = plan.get("trained_on")
        self.axes = plan["spatial_dims"]
        self.channel_names = list(plan.get("channel_names", []))
        self.modality = trained_modality(self.channel_names)
        self.strict = as_bool(strict, "--strict_scans")

    def __call__(self, data: Mapping[Hashable, Any]) -> Mapping[Hashable, Any]:
        """Check every key's scan; the data is returned as it came."""
        if not self.ranges:
            return data
        for key in self.key_iterator(data):
            image = data[key]
            spacing = affine_to_spacing(np.asarray(image.affine, dtype=float), r=3)
            differences = scan_differences(spacing, image.shape[1:4], self.ranges, self.axes)
            modality = image.meta.get("modality")
            if self.modality and modality and modality != self.modality:
                differences.insert(0, f"modality {modality} (trained on {self.channel_names[0]})")
            if not differences:
                continue
            scan = image.meta.get(ImageMetaKey.FILENAME_OR_OBJ, key)
            message = f"{scan}: unlike the scans the model was trained on: {'; '.join(differences)}"
            if self.strict:
                raise BundleError(f"{message} (--strict_scans true refuses it).")
            logger.warning(f"{message}; its segmentation may be wrong (--strict_scans true refuses such scans).")
        return data


def refuse_unlike_scans(datalist: Sequence[Mapping[str, Any]], preprocessing: Compose) -> None:
    """Before anything is built: refuse every input that ``preprocessing``'s strict :class:`ScanCheckd` refuses.

    Runs the transforms up to and including the first :class:`ScanCheckd` (loading and orienting each scan) on
    every input when that check is strict (``--strict_scans true``); otherwise, or without such a transform, it
    does nothing.

    Raises:
        BundleError: one line per scan unlike the training scans.
    """
    checks = [index for index, transform in enumerate(preprocessing.transforms) if isinstance(transform, ScanCheckd)]
    if not checks or not preprocessing.transforms[checks[0]].strict:
        return
    head = Compose(preprocessing.transforms[: checks[0] + 1])
    refused = []
    for item in datalist:
        try:
            head(dict(item))
        except Exception as error:  # Compose wraps it in a RuntimeError
            ours = bundle_error_in(error)
            if ours is None:
                raise
            refused.append(str(ours))
    if refused:
        raise BundleError("\n".join(refused))


def with_scan_check(
    transforms: Sequence[Any], plan: Mapping[str, Any], strict: bool | str, keys: KeysCollection = "image"
) -> list[Any]:
    """``transforms`` with a :class:`ScanCheckd` of ``keys`` right after their ``Orientationd``.

    Raises:
        ValueError: if ``transforms`` hold no ``Orientationd`` (spacing and shape would not be on RAS axes).
    """
    transforms = list(transforms)
    oriented = next((i for i, transform in enumerate(transforms) if isinstance(transform, Orientationd)), None)
    if oriented is None:
        raise ValueError("with_scan_check: the transforms hold no Orientationd to put the check after")
    return [*transforms[: oriented + 1], ScanCheckd(keys, plan, strict), *transforms[oriented + 1 :]]
