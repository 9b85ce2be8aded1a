"""Check a Decathlon-style dataset before training, and report every problem at once.

A command, as well as what the bundles run before they build anything::

    python -m unet_med.bundle.dataset_check /data/Task04_Hippocampus --spatial-dims 3 --num-classes 3

It checks that every image of ``dataset.json``'s ``training`` section has its label and that no image or label
in ``imagesTr/``/``labelsTr/`` lacks its partner; that every file loads (not truncated or corrupt: a ``.nii.gz``
file's gzip CRC is checked); that image and label have the same shape and, within a tolerance, the same affine;
that labels hold integers of the label set of ``dataset.json``; that voxels are real numbers (not RGB or other
structured types); that images hold no NaN or Inf (nor values float32 cannot hold) and are not empty; and that
the dimensionality and the channel count suit the bundle. Intensity ranges and numeric types are not checked:
scans of one dataset may differ by orders of magnitude (MSD hippocampus mixes float32 and uint8 images), which
per-volume normalisation handles.

Shapes and affines come from the NIfTI headers; values need the data, so every file is read once, by a few
threads at a time (2 to 4 s for the 400 files of 200 hippocampus cases on a busy 2-core CPU).
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from unet_med.bundle.datalists import decathlon_datalist, label_names
from unet_med.bundle.errors import BundleError
from unet_med.bundle.readers import NIFTI_SUFFIXES, SimpleITKReader, dicom_series_files, read_scan

__all__ = ["DatasetError", "check_dataset", "check_images", "main"]


class DatasetError(BundleError):
    """Problems found in a dataset, one ``<path>: <problem>`` line each.

    Args:
        source: the folder (or what was checked), named in the message when there are several problems.
        problems: the lines.
    """

    def __init__(self, source: str | os.PathLike, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            message = f"{len(self.problems)} problems in {source}:\n" + "\n".join(self.problems)
        super().__init__(message)


@dataclass(frozen=True)
class FileSpec:
    """What a bundle needs of its files.

    Attributes:
        spatial_dims: the network's: 3 needs volumes (no axis of one voxel); 2 (slices of volumes) takes any
            3D file, a single slice ``X x Y x 1`` too. Files are 3D (``X x Y x Z``, or ``X x Y x Z x C``) either way.
        in_channels: image channels (the 4th NIfTI axis, absent for one channel).
    """

    spatial_dims: int = 3
    in_channels: int = 1

    def __post_init__(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {self.spatial_dims}.")
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be at least 1, got {self.in_channels}.")

    def shape_problem(self, shape: tuple[int, ...], channels: int) -> str | None:
        """What is wrong with a file's shape for ``channels`` channels, or ``None``."""
        size = " x ".join(map(str, shape))
        if 0 in shape:
            return f"empty: zero-size volume ({size})"
        if len(shape) < 3:
            return f"{len(shape)}D file ({size}): the bundles read 3D volumes (save a 2D image as X x Y x 1)"
        if len(shape) > 4:
            return f"{len(shape)}D file ({size}): expected X x Y x Z, or X x Y x Z x channels"
        found = shape[3] if len(shape) == 4 else 1
        if found != channels:
            return f"{found} channel(s) ({size}), expected {channels}"
        if self.spatial_dims == 3 and 1 in shape[:3]:
            return f"a 2D slice ({size}): the 3D network needs volumes"
        return None


@dataclass(frozen=True)
class Volume:
    """What a pair check needs of a file that loaded: its spatial shape and affine."""

    shape: tuple[int, ...]
    affine: np.ndarray


def _read_problem(error: Exception) -> str:
    """Why a file could not be read, in a few words."""
    if isinstance(error, nib.filebasedimages.ImageFileError):
        return "not a NIfTI file, or its header is cut short"
    if isinstance(error, EOFError):
        return "truncated: the file ends before its data does"
    if isinstance(error, (gzip.BadGzipFile, zlib.error)):
        return f"corrupt: its gzip stream fails its checks ({' '.join(str(error).split())})"
    return f"cannot be read, corrupt or truncated ({type(error).__name__}: {' '.join(str(error).split())})"


def _nifti(path: str) -> nib.Nifti1Image:
    """A NIfTI file's image; a ``.nii.gz`` file read to the end of its gzip stream, whose CRC is then checked.

    nibabel reads only the bytes the header announces, so a gzip stream damaged inside its data decompresses
    to wrong values (often around 1e38) without an error; Python's ``gzip`` checks the CRC and length once the
    stream is read to its end, which is what the check reads anyway.
    """
    with open(path, "rb") as file:
        gzipped = file.read(2) == b"\x1f\x8b"
    if not gzipped:  # a plain .nii, or a file that is no NIfTI at all: nibabel names what it finds
        return nib.load(path)
    with gzip.open(path) as stream:
        raw = stream.read()
    header_size = {int.from_bytes(raw[:4], order) for order in ("little", "big")}
    return (nib.Nifti2Image if 540 in header_size else nib.Nifti1Image).from_bytes(raw)


def _load(path: str, problems: list[str]) -> tuple[tuple[int, ...], np.ndarray, np.ndarray] | None:
    """``(shape, affine, data)`` of a scan, or ``None`` with a problem added.

    NIfTI files through nibabel; DICOM series folders, NRRD and MetaImage files through SimpleITK, with the
    ``x, y, z (, channels)`` shape and RAS affine that the bundles' readers give them.
    """
    if not os.access(path, os.R_OK):
        problems.append(f"{path}: cannot be read: permission denied")
        return None
    if Path(path).is_dir():
        try:
            dicom_series_files(path)
        except ValueError as err:  # no series, or several: the message names the folder
            problems.append(str(err).removesuffix("."))
            return None
    try:
        if path.lower().endswith(NIFTI_SUFFIXES):
            image = _nifti(path)
            return tuple(image.shape), image.affine, np.asanyarray(image.dataobj)
        data, meta = SimpleITKReader().get_data(read_scan(path))
        return data.shape, meta["affine"], data
    except Exception as err:  # nibabel, gzip, zlib and SimpleITK raise many types for broken files
        problems.append(f"{path}: {_read_problem(err)}")
        return None


def _non_finite(data: np.ndarray) -> str | None:
    """NaN and Inf voxels, and values that the bundles' float32 cannot hold, or ``None``."""
    if data.dtype.kind not in "fc":
        return None
    nan, inf = int(np.isnan(data).sum()), int(np.isinf(data).sum())
    if nan or inf:
        return f"{nan} NaN and {inf} Inf voxels"
    beyond = int((np.abs(data) > np.finfo(np.float32).max).sum()) if data.dtype.itemsize > 4 else 0
    return f"{beyond} voxels beyond float32's range (they would read as Inf)" if beyond else None


def _voxel_type_problem(data: np.ndarray) -> str | None:
    """Why a file's voxels are not one real number each (RGB, structured or complex data), or ``None``."""
    if data.dtype.kind in "biuf":
        return None
    kind = f"{', '.join(data.dtype.names)} fields" if data.dtype.names else f"{data.dtype.name} numbers"
    return (
        f"voxels of data type {data.dtype} ({kind}): the bundles read one real number per voxel and channel "
        "(store channels on the 4th axis)"
    )


def _image_values(data: np.ndarray) -> str | None:
    """What is wrong with an image's values, or ``None``."""
    return _non_finite(data) or (None if data.any() else "empty: every voxel is 0")


def _label_values(data: np.ndarray, labels: Sequence[int]) -> str | None:
    """What is wrong with a label map's values, or ``None``."""
    problem = _non_finite(data)
    if problem:
        return problem
    if data.dtype.kind in "fc":
        fraction = data != np.round(data)
        if fraction.any():
            return f"non-integer label values, e.g. {data[fraction].flat[0]:g}"
    unknown = np.unique(data[~np.isin(data, labels)])
    if unknown.size:
        shown = ", ".join(f"{value:g}" for value in unknown[:10])
        return f"label values {{{shown}}} are not in dataset.json's labels {set(labels)}"
    return None


def _inspect(
    path: str, channels: int, spec: FileSpec, values: Callable[[np.ndarray], str | None], problems: list[str]
) -> Volume | None:
    """Check one file's shape and values; add its problems; return its geometry if it loaded."""
    loaded = _load(path, problems)
    if loaded is None:
        return None
    shape, affine, data = loaded
    type_problem = _voxel_type_problem(data)
    found = [spec.shape_problem(shape, channels), type_problem or (None if 0 in shape else values(data))]
    problems += [f"{path}: {problem}" for problem in found if problem]
    return Volume(shape[:3], affine)


def _broken_link(path: str) -> str | None:
    """Why ``path`` is a symbolic link that leads nowhere, or ``None``."""
    if os.path.islink(path) and not os.path.exists(path):
        return f"a broken symbolic link: its target {os.readlink(path)} does not exist"
    return None


def _check_image(path: str, spec: FileSpec, problems: list[str]) -> Volume | None:
    return _inspect(path, spec.in_channels, spec, _image_values, problems)


def _check_case(case: dict[str, str], spec: FileSpec, labels: Sequence[int], affine_atol: float) -> list[str]:
    """Problems of one image/label pair."""
    image_path, label_path = case["image"], case["label"]
    problems = [f"{path}: {_broken_link(path)}" for path in (image_path, label_path) if _broken_link(path)]
    if problems:
        return problems
    if not Path(image_path).is_file():
        problems.append(f"{image_path}: missing image (dataset.json pairs it with {label_path})")
    if not Path(label_path).is_file():
        problems.append(f"{label_path}: missing label (dataset.json pairs it with {image_path})")
    if problems:
        return problems
    image = _check_image(image_path, spec, problems)
    label = _inspect(label_path, 1, spec, lambda data: _label_values(data, labels), problems)
    if image is not None and label is not None:
        if image.shape != label.shape:
            problems.append(f"{label_path}: shape {label.shape} differs from its image's {image.shape}")
        elif not np.allclose(image.affine, label.affine, rtol=0.0, atol=affine_atol):
            worst = float(np.abs(image.affine - label.affine).max())
            problems.append(
                f"{label_path}: affine differs from its image's by up to {worst:.3g} mm (tolerance {affine_atol:g})"
            )
    return problems


def _parallel(check: Callable[[dict], list[str]], items: Sequence[dict], workers: int) -> list[str]:
    """Every problem of ``check`` over ``items``, in their order."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return [problem for problems in pool.map(check, items) for problem in problems]


def _unpaired_files(folder: Path, datalist: Sequence[dict[str, str]]) -> list[str]:
    """NIfTI files of ``imagesTr/`` and ``labelsTr/`` that no training case of ``dataset.json`` lists."""
    problems = []
    for key, subfolder, partner in (("image", "imagesTr", "label"), ("label", "labelsTr", "image")):
        listed = {Path(case[key]) for case in datalist}
        directory = folder / subfolder
        for file in sorted(directory.iterdir()) if directory.is_dir() else []:
            listed_as = file.parent.resolve() / file.name
            if file.name.endswith(NIFTI_SUFFIXES) and not file.name.startswith(".") and listed_as not in listed:
                problems.append(f"{file}: {key} with no {partner}: no training case of dataset.json lists it")
    return problems


def _label_set_problem(folder: Path, labels: list[int], num_classes: int | None) -> list[str]:
    """A problem if ``dataset.json``'s label values are not ``0 .. num_classes - 1`` (or lack 0)."""
    if num_classes is None:
        fits, expected = 0 in labels, "expected 0 (background) among them"
    else:
        fits = labels == list(range(num_classes))
        expected = f"but num_classes={num_classes} expects 0 to {num_classes - 1}"
    return [] if fits else [f"{folder / 'dataset.json'}: its labels are {labels}, {expected}"]


def check_dataset(
    folder: str | os.PathLike,
    spatial_dims: int = 3,
    in_channels: int = 1,
    num_classes: int | None = None,
    affine_atol: float = 1e-3,
    workers: int = 4,
) -> list[dict[str, str]]:
    """Check a Decathlon folder's training cases; raise one error that lists every problem.

    Args:
        folder: the folder with ``dataset.json``, ``imagesTr/`` and ``labelsTr/``.
        spatial_dims: the network's (see :class:`FileSpec`): 3 refuses single slices, 2 takes them.
        in_channels: image channels the network takes.
        num_classes: the network's output classes: ``dataset.json``'s labels must be ``0 .. num_classes - 1``;
            ``None``: any label set with 0.
        affine_atol: largest difference, in mm, allowed between an image's affine and its label's.
        workers: files read at once.

    Returns:
        The training cases, ``{"image": path, "label": path}`` with absolute paths.

    Raises:
        DatasetError: with every problem, one ``<path>: <problem>`` line each (a ``ValueError``); with one
            line for a missing, empty or unreadable folder or ``dataset.json``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(folder, [f"{folder}: no such dataset folder"])
    try:
        labels = sorted(label_names(folder))
        datalist = decathlon_datalist(folder, check_files=False)
    except ValueError as err:
        raise DatasetError(folder, [str(err)]) from None
    spec = FileSpec(spatial_dims, in_channels)
    problems = _label_set_problem(folder, labels, num_classes) + _unpaired_files(folder, datalist)
    problems += _parallel(lambda case: _check_case(case, spec, labels, affine_atol), datalist, workers)
    if problems:
        raise DatasetError(folder, problems)
    return datalist


def check_images(
    datalist: Sequence[dict[str, str]], spatial_dims: int = 3, in_channels: int = 1, workers: int = 4
) -> None:
    """Check images to segment, as :func:`check_dataset` checks training images; raise with every problem.

    Args:
        datalist: ``{"image": path}`` dicts, e.g. from :func:`unet_med.bundle.datalists.image_datalist`: NIfTI,
            NRRD or MetaImage files, or folders with one DICOM series.
        spatial_dims: the network's (see :class:`FileSpec`).
        in_channels: image channels the network takes.
        workers: files read at once.

    Raises:
        DatasetError: with every problem, one ``<path>: <problem>`` line each.
    """
    spec = FileSpec(spatial_dims, in_channels)

    def check(item: dict[str, str]) -> list[str]:
        problems: list[str] = []
        if _broken_link(item["image"]):
            problems.append(f"{item['image']}: {_broken_link(item['image'])}")
        elif not Path(item["image"]).exists():
            problems.append(f"{item['image']}: missing image")
        else:
            _check_image(item["image"], spec, problems)
        return problems

    problems = _parallel(check, datalist, workers)
    if problems:
        raise DatasetError(f"the {len(datalist)} images", problems)


def main(argv: Sequence[str] | None = None) -> int:
    """Run :func:`check_dataset` from the command line; print the problems, one per line.

    Returns:
        0 if the dataset passes, 1 otherwise.
    """
    parser = argparse.ArgumentParser(
        prog="python -m unet_med.bundle.dataset_check", description=__doc__.splitlines()[0]
    )
    parser.add_argument("folder", help="Decathlon folder: dataset.json, imagesTr/, labelsTr/")
    parser.add_argument("--spatial-dims", type=int, default=3, choices=(2, 3), help="the network's (default 3)")
    parser.add_argument("--in-channels", type=int, default=1, help="image channels (default 1)")
    parser.add_argument("--num-classes", type=int, default=None, help="the network's classes, background included")
    parser.add_argument("--affine-atol", type=float, default=1e-3, help="affine tolerance in mm (default 1e-3)")
    parser.add_argument("--workers", type=int, default=4, help="files read at once (default 4)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        cases = check_dataset(
            args.folder, args.spatial_dims, args.in_channels, args.num_classes, args.affine_atol, args.workers
        )
    except DatasetError as err:
        print(err, file=sys.stderr)
        return 1
    print(f"{args.folder}: {len(cases)} cases, no problems ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
