"""The fingerprint of a Decathlon data set: what the planner needs to know of its images and labels.

Per case: spacing, shape, shape after cropping to the nonzero region, orientation, channel count, label values
and their voxel counts, and per channel the foreground (label > 0) voxel count, sum and sum of squares plus a
bounded random sample of foreground intensities. Per data set (:class:`Fingerprint`): medians and percentiles of
spacing and shapes; per channel the foreground mean and std (exact, from the sums) and the 0.5 / 50 / 99.5
percentiles, min and max (from the pooled samples); the channel names of ``dataset.json``.

Cases are read as the bundles read them: NIfTI through nibabel, reoriented to RAS (what MONAI's
``Orientationd(axcodes="RAS")`` does), spacing taken from the reoriented affine (what ``Spacingd`` reads).
They are streamed, one case per worker process at a time, and only the small per-case summaries travel back.

The result is cached as JSON (``fingerprint.json`` beside the plan) and reused while every listed file keeps its
path, size and modification time.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm import tqdm

from unet_med.bundle.datalists import decathlon_datalist, load_dataset_json
from unet_med.bundle.errors import BundleError
from unet_med.bundle.io import atomic_write

__all__ = ["CaseFingerprint", "Fingerprint", "channel_names", "compute_fingerprint", "file_stamp", "fingerprint_case"]

FINGERPRINT_VERSION = 1
SAMPLES_PER_CASE = 10_000


@dataclass
class CaseFingerprint:
    """What one case contributes to the fingerprint.

    Attributes:
        image: the image file.
        spacing: voxel size per spatial axis, mm, in RAS order.
        shape: spatial shape in voxels, RAS order.
        cropped_shape: shape of the bounding box of the voxels nonzero in any channel.
        orientation: the file's axis codes before reorientation, e.g. ``"LPS"``.
        channels: image channels (the 4th NIfTI axis, 1 when absent).
        label_counts: voxel count per label value, keys as strings (JSON).
        foreground_count: foreground (label > 0) voxels.
        foreground_sum: per channel, sum of the foreground intensities.
        foreground_sum_sq: per channel, sum of their squares.
        foreground_samples: per channel, up to ``SAMPLES_PER_CASE`` foreground intensities drawn at random (not
            cached; the data-set percentiles are).
    """

    image: str
    spacing: list[float]
    shape: list[int]
    cropped_shape: list[int]
    orientation: str
    channels: int
    label_counts: dict[str, int]
    foreground_count: int
    foreground_sum: list[float]
    foreground_sum_sq: list[float]
    foreground_samples: list[np.ndarray] = field(default_factory=list, repr=False)


def _ras(path: str) -> nib.spatialimages.SpatialImage:
    image = nib.load(path)
    return nib.as_closest_canonical(image)


def fingerprint_case(case: dict[str, str], samples: int = SAMPLES_PER_CASE, seed: int = 0) -> CaseFingerprint:
    """Fingerprint one image/label pair.

    Args:
        case: ``{"image": path, "label": path}``; the image is ``X x Y x Z`` or ``X x Y x Z x C``.
        samples: foreground intensities kept per channel.
        seed: seed of the sample draw (the same case gives the same samples).

    Returns:
        The case's fingerprint.
    """
    original = nib.load(case["image"])
    image = nib.as_closest_canonical(original)
    data = np.asarray(image.dataobj, dtype=np.float32)
    if data.ndim == 3:
        data = data[..., None]
    label = np.asarray(_ras(case["label"]).dataobj)
    label = label.reshape(label.shape[:3])
    spacing = np.sqrt((image.affine[:3, :3] ** 2).sum(axis=0))
    nonzero = np.any(data != 0, axis=-1)
    cropped = [0, 0, 0]
    if nonzero.any():
        cropped = [int(np.ptp(np.flatnonzero(nonzero.any(axis=tuple(a for a in range(3) if a != axis))))) + 1
                   for axis in range(3)]
    values, counts = np.unique(label, return_counts=True)
    foreground = data[label > 0]  # (N, C)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(foreground), size=min(samples, len(foreground)), replace=False)
    picked = foreground[np.sort(pick)]
    as_float64 = foreground.astype(np.float64)
    return CaseFingerprint(
        image=case["image"],
        spacing=[float(s) for s in spacing],
        shape=[int(s) for s in data.shape[:3]],
        cropped_shape=cropped,
        orientation="".join(nib.aff2axcodes(original.affine)),
        channels=int(data.shape[3]),
        label_counts={str(int(v)): int(c) for v, c in zip(values, counts)},
        foreground_count=len(foreground),
        foreground_sum=as_float64.sum(axis=0).tolist(),
        foreground_sum_sq=(as_float64**2).sum(axis=0).tolist(),
        foreground_samples=[picked[:, c].copy() for c in range(picked.shape[1])],
    )


def _fingerprint_indexed(item: tuple[int, dict[str, str], int]) -> CaseFingerprint:
    index, case, samples = item
    return fingerprint_case(case, samples, seed=index)


def channel_names(dataset_dir: str | os.PathLike) -> list[str] | None:
    """Channel names of ``dataset.json``: ``modality`` (Decathlon) or ``channel_names`` (nnU-Net), in order.

    Returns:
        The names, or ``None`` if the file names none.

    Raises:
        BundleError: if the section's keys are not channel indices ``0 .. C-1``.
    """
    content = load_dataset_json(dataset_dir)
    names = content.get("channel_names") or content.get("modality")
    if not names:
        return None
    if not isinstance(names, dict) or sorted(names) != [str(i) for i in range(len(names))]:
        raise BundleError(
            f"{Path(dataset_dir) / 'dataset.json'}: its channel names must map 0 .. C-1 to names, such as "
            f'{{"0": "CT"}}; found {names}'
        )
    return [str(names[str(i)]) for i in range(len(names))]


@dataclass
class Fingerprint:
    """A data set's fingerprint: its cases and the summaries the planner reads.

    Attributes:
        dataset_dir: the Decathlon folder.
        channel_names: one name per channel (``dataset.json``'s, or ``channel_0``, ... when it names none).
        names_given: whether ``dataset.json`` named the channels.
        labels: label values of ``dataset.json``.
        cases: per case fingerprints.
        intensity: per channel ``{"mean", "std", "min", "max", "percentile_00_5", "median", "percentile_99_5"}``
            of the foreground: mean and std exact, the others from the pooled samples.
    """

    dataset_dir: str
    channel_names: list[str]
    names_given: bool
    labels: list[int]
    cases: list[CaseFingerprint]
    intensity: list[dict[str, float]]

    def spacings(self) -> np.ndarray:
        """``(cases, 3)`` spacings in mm."""
        return np.array([case.spacing for case in self.cases], dtype=float)

    def shapes(self) -> np.ndarray:
        """``(cases, 3)`` shapes in voxels."""
        return np.array([case.shape for case in self.cases], dtype=float)

    def cropped_shapes(self) -> np.ndarray:
        """``(cases, 3)`` shapes after cropping to nonzero, in voxels."""
        return np.array([case.cropped_shape for case in self.cases], dtype=float)

    def median_spacing(self) -> np.ndarray:
        """Median spacing per axis, mm."""
        return np.median(self.spacings(), axis=0)

    def summary(self) -> dict[str, dict[str, list[float]]]:
        """Per axis 10th, 50th and 90th percentiles of spacing (mm), shape and cropped shape (voxels)."""
        return {
            name: {f"percentile_{q}": np.percentile(values, q, axis=0).tolist() for q in (10, 50, 90)}
            for name, values in (("spacing", self.spacings()), ("shape", self.shapes()),
                                 ("cropped_shape", self.cropped_shapes()))
        }

    def to_json(self) -> dict:
        """A JSON-able dict (without the intensity samples), with :meth:`summary` for a reader."""
        cases = [{k: v for k, v in asdict(case).items() if k != "foreground_samples"} for case in self.cases]
        fields = {k: v for k, v in asdict(self).items() if k != "cases"}
        return {**fields, "summary": self.summary(), "cases": cases}

    @classmethod
    def from_json(cls, content: dict) -> Fingerprint:
        """The inverse of :meth:`to_json`."""
        cases = [CaseFingerprint(**case) for case in content["cases"]]
        return cls(**{**{k: v for k, v in content.items() if k not in ("cases", "summary")}, "cases": cases})


def _intensity(cases: Sequence[CaseFingerprint], channels: int) -> list[dict[str, float]]:
    """Per channel foreground statistics: exact mean and std, percentiles of the pooled samples."""
    stats = []
    count = sum(case.foreground_count for case in cases)
    for c in range(channels):
        samples = np.concatenate([case.foreground_samples[c] for case in cases if case.foreground_samples])
        if count == 0 or samples.size == 0:
            stats.append(dict.fromkeys(("mean", "std", "min", "max", "percentile_00_5", "median", "percentile_99_5"),
                                       0.0))
            continue
        mean = sum(case.foreground_sum[c] for case in cases) / count
        square = sum(case.foreground_sum_sq[c] for case in cases) / count
        low, median, high = np.percentile(samples, [0.5, 50.0, 99.5])
        stats.append({
            "mean": float(mean), "std": float(np.sqrt(max(square - mean**2, 0.0))),
            "min": float(samples.min()), "max": float(samples.max()),
            "percentile_00_5": float(low), "median": float(median), "percentile_99_5": float(high),
        })
    return stats


def file_stamp(path: str | os.PathLike) -> list:
    """``[path, size, modification time in ns]``: a file edited in place (or replaced) gets another stamp."""
    stat = os.stat(path)
    return [str(path), stat.st_size, stat.st_mtime_ns]


def _file_key(datalist: Sequence[dict[str, str]], samples: int) -> list:
    """What the cache is valid for: version, sample count and every file's :func:`file_stamp`."""
    key: list = [FINGERPRINT_VERSION, samples]
    for case in datalist:
        key.extend(file_stamp(path) for path in (case["image"], case["label"]))
    return key


def _check_channels(cases: Sequence[CaseFingerprint], expected: int | None, dataset_json: Path) -> None:
    """Refuse cases whose channel count differs from the first case's (or from dataset.json's names)."""
    reference = expected if expected is not None else cases[0].channels
    source = f"the {reference} channel names of {dataset_json}" if expected is not None else cases[0].image
    for case in cases:
        if case.channels != reference:
            raise BundleError(f"{case.image}: {case.channels} channel(s), but {source} says {reference}")


def compute_fingerprint(
    dataset_dir: str | os.PathLike,
    cache: str | os.PathLike | None = None,
    workers: int | None = None,
    samples: int = SAMPLES_PER_CASE,
    datalist: Sequence[dict[str, str]] | None = None,
    progress: bool = True,
) -> Fingerprint:
    """Fingerprint a Decathlon folder's training cases, or read the cached fingerprint if the files are unchanged.

    Args:
        dataset_dir: the folder with ``dataset.json``, ``imagesTr/`` and ``labelsTr/``.
        cache: JSON file to reuse and (re)write; ``None``: no cache.
        workers: processes reading cases (default: the CPUs this process may use).
        samples: foreground intensities sampled per case and channel.
        datalist: the training cases if already listed (e.g. by the data check); default: ``dataset.json``'s.
        progress: show a progress bar.

    Returns:
        The fingerprint.

    Raises:
        BundleError: if a case's channel count differs from the others' or from ``dataset.json``'s names.
    """
    dataset_dir = Path(dataset_dir).resolve()
    dataset_json = dataset_dir / "dataset.json"
    if datalist is None:
        datalist = decathlon_datalist(dataset_dir)
    names = channel_names(dataset_dir)
    key = _file_key(datalist, samples)
    if cache is not None and Path(cache).is_file():
        try:
            stored = json.loads(Path(cache).read_text())
        except json.JSONDecodeError:
            stored = {}
        if stored.get("key") == key:
            return Fingerprint.from_json(stored["fingerprint"])
    workers = workers or len(os.sched_getaffinity(0))
    items = [(index, dict(case), samples) for index, case in enumerate(datalist)]
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(_fingerprint_indexed, items, chunksize=max(1, len(items) // (8 * workers)))
        cases = list(tqdm(results, total=len(items), desc="fingerprint", unit="case", disable=not progress))
    _check_channels(cases, None if names is None else len(names), dataset_json)
    names_given = names is not None
    if names is None:
        names = [f"channel_{c}" for c in range(cases[0].channels)]
        warnings.warn(
            f"{dataset_json}: no 'modality' or 'channel_names': channels named {names}, each z-scored per case "
            "(name a CT channel \"CT\" to clip and normalise it with the data set's statistics)",
            stacklevel=2,
        )
    labels = sorted(int(value) for value in load_dataset_json(dataset_dir).get("labels", {"0": ""}))
    fingerprint = Fingerprint(
        dataset_dir=str(dataset_dir),
        channel_names=names,
        names_given=names_given,
        labels=labels,
        cases=cases,
        intensity=_intensity(cases, len(names)),
    )
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(cache) as partial:
            partial.write_text(json.dumps({"key": key, "fingerprint": fingerprint.to_json()}))
    return fingerprint
