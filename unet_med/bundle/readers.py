"""Scans as they come: DICOM series folders, NRRD and MetaImage files, read through SimpleITK for MONAI.

NIfTI files stay with MONAI's ``NibabelReader``; :class:`SimpleITKReader` takes everything else a scanner or a
viewer writes. Both give the array in the same index order (``x, y, z``) with an affine in RAS world
coordinates (mm), so the bundles' ``Orientationd("RAS")`` and ``Spacingd`` treat every format alike, and a
prediction inverted to the scan's grid carries the scan's origin, spacing and direction.
"""

from __future__ import annotations

import os
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
    "dicom_series_files",
    "is_scan",
    "read_scan",
]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".mha", ".mhd")
SCAN_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES


def dicom_series_files(folder: str | os.PathLike) -> list[str]:
    """The slice files of the one DICOM series in ``folder``, in the order of their position along the scan.

    Raises:
        BundleError: if the folder holds no DICOM series, or several (named by their series instance UIDs).
    """
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise BundleError(f"{folder}: no DICOM series in this folder (expected the slice files of one series).")
    if len(series) > 1:
        raise BundleError(
            f"{folder}: {len(series)} DICOM series in one folder ({', '.join(series)}): give each its own folder."
        )
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0]))


def is_scan(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file of a supported format or a folder that holds a DICOM series."""
    path = Path(path)
    if path.is_dir():
        return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))
    return path.name.lower().endswith(SCAN_SUFFIXES)


def read_scan(path: str | os.PathLike) -> sitk.Image:
    """A DICOM series folder or an image file as a SimpleITK image.

    Raises:
        BundleError: for a folder without exactly one DICOM series.
        RuntimeError: SimpleITK's, for a file it cannot read.
    """
    if Path(path).is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(dicom_series_files(path))
        return reader.Execute()
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
    transforms expect. Use it beside ``NibabelReader`` in ``LoadImaged(reader=[...])``: it claims no NIfTI file.
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
        return array, meta
