"""Scans as they come: DICOM series folders, NRRD and MetaImage files, read through SimpleITK for MONAI.

NIfTI files stay with MONAI's ``NibabelReader``; :class:`SimpleITKReader` takes everything else a scanner or a
viewer writes. Both give the array in the same index order (``x, y, z``) with an affine in RAS world
coordinates (mm), so the bundles' ``Orientationd("RAS")`` and ``Spacingd`` treat every format alike, and a
prediction inverted to the scan's grid carries the scan's origin, spacing and direction.

A DICOM series is refused (one line naming the folder and the gap) when its slices are not evenly spaced: a
missing, truncated or garbage slice file is left out of the series by GDCM, and SimpleITK would otherwise stack
the rest with their mean spacing, every slice past the gap shifted, and only an ITK warning.

Importing the module also drops MONAI's two notices that nvImageCodec is unavailable (a logged warning and a
``UserWarning``), which every ``LoadImage`` prints once pydicom is installed: MONAI builds its GPU DICOM reader
among the defaults of every loader, and on a machine without nvImageCodec that reader declines every file anyway.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk  # noqa: N813 (SimpleITK's own convention)
from monai.data import ImageReader
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

from unet_med.bundle.errors import BundleError

__all__ = [
    "ITK_SUFFIXES",
    "NIFTI_SUFFIXES",
    "SCAN_SUFFIXES",
    "SimpleITKReader",
    "check_slice_spacing",
    "dicom_series_files",
    "is_scan",
    "read_scan",
]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".mha", ".mhd")
SCAN_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES
MODALITY_TAG = "0008|0060"
"""DICOM's Modality (``CT``, ``MR``, ...): in the metadata as ``modality`` for a DICOM scan."""
SLICE_GAP_TOLERANCE = 0.05
"""How far (in slice spacings) a step between neighbouring slices of a DICOM series may differ from the median.

A missing slice makes a step 100% longer; positions written to two decimals (0.62 and 0.63 mm steps for a
0.625 mm spacing) differ by about 1%."""


class _NoNvImageCodecNotice(logging.Filter):
    """Drops MONAI's record that nvImageCodec is not available (logged by every ``LoadImage`` without it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "nvImageCodec is not available" not in record.getMessage()


def _quiet_nvimagecodec_notices() -> None:
    """Drop the notices MONAI's unavailable nvImageCodec DICOM reader prints whenever a loader is built."""
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").addFilter(_NoNvImageCodecNotice())
    warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register")


_quiet_nvimagecodec_notices()


def dicom_series_files(folder: str | os.PathLike) -> list[str]:
    """The slice files of the one DICOM series in ``folder``, in the order of their position along the scan.

    Raises:
        BundleError: if the folder holds no DICOM series, or several (named by their series instance UIDs), or
            the slices are not evenly spaced (see :func:`check_slice_spacing`).
    """
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise BundleError(f"{folder}: no DICOM series in this folder (expected the slice files of one series).")
    if len(series) > 1:
        raise BundleError(
            f"{folder}: {len(series)} DICOM series in one folder ({', '.join(series)}): give each its own folder."
        )
    files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0]))
    check_slice_spacing(folder, files)
    return files


def _slice_position(file: str) -> np.ndarray:
    """The position of a slice file's first pixel (ITK's LPS world, mm), and its slice normal, from its header."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(file)
    reader.ReadImageInformation()
    direction = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(3, 3)
    return np.concatenate([np.asarray(reader.GetOrigin(), dtype=np.float64), direction[:, 2]])


def check_slice_spacing(folder: str | os.PathLike, files: Sequence[str]) -> None:
    """Refuse a DICOM series whose slices are not evenly spaced along their normal.

    GDCM leaves a slice file that does not read (truncated, garbage) out of the series, and SimpleITK stacks the
    remaining slices at their mean spacing: every slice past the gap lands up to a spacing away from where it was
    scanned. A step between neighbours that differs from the median step by more than
    :data:`SLICE_GAP_TOLERANCE` of it (a missing slice doubles it, two slices at one position make it 0) is
    refused. A slice missing at either end leaves no gap and cannot be told from a shorter scan.

    Args:
        folder: the series folder, named in the error.
        files: its slice files, in their order along the normal (as GDCM sorts them).

    Raises:
        BundleError: naming the folder, the two slices around the uneven step, the step and the median step, and
            the files of the folder that are not slices of the series.
    """
    if len(files) < 3:
        return
    headers = np.stack([_slice_position(file) for file in files])
    normal = headers[0, 3:]
    steps = np.diff(headers[:, :3] @ normal)
    median = float(np.median(steps))
    uneven = np.flatnonzero(np.abs(steps - median) > SLICE_GAP_TOLERANCE * abs(median))
    if not uneven.size:
        return
    first = int(uneven[0])
    message = (
        f"{folder}: the DICOM series has a gap: slices {Path(files[first]).name} and {Path(files[first + 1]).name} "
        f"are {abs(steps[first]):.3g} mm apart, the others {abs(median):.3g} mm ({uneven.size} uneven step"
        f"{'s' if uneven.size > 1 else ''}); a slice is missing or does not read"
    )
    series = {Path(file).name for file in files}
    left_out = sorted(path.name for path in Path(folder).iterdir() if path.is_file() and path.name not in series)
    if left_out:
        message += f"; not read as slices of it: {', '.join(left_out[:5])}" + (" ..." if len(left_out) > 5 else "")
    raise BundleError(message + ".")


def is_scan(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file of a supported format or a folder that holds a DICOM series."""
    path = Path(path)
    if path.is_dir():
        return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))
    return path.name.lower().endswith(SCAN_SUFFIXES)


def read_scan(path: str | os.PathLike) -> sitk.Image:
    """A DICOM series folder or an image file as a SimpleITK image; a series' image keeps its DICOM modality tag.

    Raises:
        BundleError: for a folder without exactly one DICOM series.
        RuntimeError: SimpleITK's, for a file it cannot read.
    """
    if Path(path).is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(dicom_series_files(path))
        reader.MetaDataDictionaryArrayUpdateOn()
        image = reader.Execute()
        if reader.HasMetaDataKey(0, MODALITY_TAG):
            image.SetMetaData(MODALITY_TAG, reader.GetMetaData(0, MODALITY_TAG))
        return image
    return sitk.ReadImage(str(path))


def ras_affine(image: sitk.Image) -> np.ndarray:
    """The ``(D + 1, D + 1)`` voxel-to-world matrix of an image, world in RAS mm (ITK's own world is LPS)."""
    dims = image.GetDimension()
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dims, dims)
    affine = np.eye(dims + 1)
    affine[:dims, :dims] = direction * np.asarray(image.GetSpacing(), dtype=np.float64)
    affine[:dims, dims] = image.GetOrigin()
    lps_to_ras = np.diag([-1.0, -1.0] + [1.0] * (dims - 1))
    return lps_to_ras @ affine


class SimpleITKReader(ImageReader):
    """MONAI image reader for DICOM series folders, ``.nrrd``, ``.mha`` and ``.mhd`` files, through SimpleITK.

    The array is indexed ``x, y, z`` (then channels, for vector pixels) like NIfTI arrays from MONAI's
    ``NibabelReader``; the metadata holds the RAS affine, the spatial shape and the channel axis as MONAI's
    transforms expect, and for DICOM the ``modality`` (``CT``, ``MR``, ...). Use it beside ``NibabelReader`` in
    ``LoadImaged(reader=[...])``: it claims no NIfTI file.
    """

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        """Whether every given path is a folder (a DICOM series) or has one of :data:`ITK_SUFFIXES`."""
        return all(Path(p).is_dir() or str(p).lower().endswith(ITK_SUFFIXES) for p in ensure_tuple(filename))

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> Any:
        """The SimpleITK image of a path, or a list of them for several paths."""
        images = [read_scan(path) for path in ensure_tuple(data)]
        return images if len(images) > 1 else images[0]

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        """The array and metadata of one image, or of several stacked on a new first (channel) axis."""
        images = img if isinstance(img, (list, tuple)) else [img]  # a SimpleITK image is iterable itself
        arrays, metas = zip(*(self._array_and_meta(image) for image in images))
        meta = dict(metas[0])
        if len(arrays) == 1:
            return arrays[0], meta
        meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0
        return np.stack(arrays), meta

    @staticmethod
    def _array_and_meta(image: sitk.Image) -> tuple[np.ndarray, dict]:
        """``(array, meta)`` of one image: spatial axes ``x, y, z`` first, vector components last."""
        dims = image.GetDimension()
        array = sitk.GetArrayFromImage(image)  # z, y, x (, components)
        spatial = tuple(reversed(range(dims)))
        array = np.transpose(array, spatial + tuple(range(dims, array.ndim)))
        affine = ras_affine(image)
        meta = {
            MetaKeys.AFFINE: affine,
            MetaKeys.ORIGINAL_AFFINE: affine.copy(),
            MetaKeys.SPATIAL_SHAPE: np.asarray(image.GetSize()),
            MetaKeys.SPACE: SpaceKeys.RAS,
            MetaKeys.ORIGINAL_CHANNEL_DIM: -1 if image.GetNumberOfComponentsPerPixel() > 1 else float("nan"),
        }
        if image.HasMetaDataKey(MODALITY_TAG):
            meta["modality"] = image.GetMetaData(MODALITY_TAG).strip()
        return array, meta
