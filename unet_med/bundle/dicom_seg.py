"""Predictions as DICOM Segmentation objects that reference the series they were made from.

A DICOM SEG (written with highdicom, BINARY type) holds one segment per foreground class, named after it, and
one frame per segment and slice of the source series; each frame names its source instance and carries that
slice's position, so PACS viewers and OHIF show it over the series it was made from.

The label map comes in any orientation with its affine (voxel indices to RAS world mm, as MONAI and NIfTI keep
it); :func:`series_frames` takes each slice's pixels from it at the slice's own world positions
(``ImagePositionPatient``, ``ImageOrientationPatient``, ``PixelSpacing``), so neither the file order of the series
nor the axis order of the label map matters, and a label map that is not on the series' grid is refused.

- :func:`write_dicom_seg`: a label map to a ``.dcm`` file, atomically.
- :class:`SaveDicomSegd`: the same in a bundle's postprocessing, beside the NIfTI that ``SaveImaged`` wrote.
- :func:`check_dicom_seg_inputs`: before anything is built, every input must be a DICOM series fit for a SEG.

highdicom (``pip install "unet-med[dicom]"``) is imported only when a SEG is written or checked for.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import ImageMetaKey, MetaKeys

from unet_med.bundle.errors import BundleError
from unet_med.bundle.flags import as_bool
from unet_med.bundle.io import atomic_write
from unet_med.bundle.readers import SimpleITKReader, dicom_series_files, read_scan

if TYPE_CHECKING:
    from pydicom import Dataset
    from pydicom.sr.coding import Code

__all__ = [
    "GRID_TOLERANCE",
    "SaveDicomSegd",
    "check_dicom_seg_inputs",
    "read_series",
    "seg_path",
    "series_frames",
    "write_dicom_seg",
]

GRID_TOLERANCE = 0.05
"""How far (in voxels) a slice's pixel may lie from a voxel centre of the label map and still take its label."""
SEG_SUFFIX = ".dcm"
NIFTI_SUFFIXES = (".nii.gz", ".nii")
LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])
INSTALL_HINT = 'pip install "unet-med[dicom]"'
logger = logging.getLogger(__name__)


@contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Drop the info records of the logger ``name`` within the block (highdicom logs every module it copies)."""
    quieted = logging.getLogger(name)
    level = quieted.level
    quieted.setLevel(max(logging.WARNING, level))
    try:
        yield
    finally:
        quieted.setLevel(level)


def _highdicom() -> Any:
    """The highdicom module, or a one-line error saying how to install it."""
    try:
        import highdicom
    except ImportError:
        raise BundleError(f"DICOM SEG output needs highdicom: {INSTALL_HINT}.") from None
    return highdicom


SOP_UIDS = {"SOPClassUID": "MediaStorageSOPClassUID", "SOPInstanceUID": "MediaStorageSOPInstanceUID"}
"""The SOP class and instance UIDs a SEG references, each with the file meta element that repeats it."""


def _fill_sop_uids_from_file_meta(dataset: Dataset, series_dir: str | os.PathLike) -> None:
    """Give a slice whose data set has a blank SOP class or instance UID the one its file meta holds.

    Anonymisers often blank them in the data set and leave the file meta (``MediaStorageSOPClassUID``,
    ``MediaStorageSOPInstanceUID``) as it was; highdicom looks the data set's up and fails on a blank one.

    Raises:
        BundleError: if both are blank or absent.
    """
    file_meta = getattr(dataset, "file_meta", None)
    for name, meta_name in SOP_UIDS.items():
        if str(dataset.get(name, "")).strip():
            continue
        value = str(file_meta.get(meta_name, "")).strip() if file_meta is not None else ""
        if not value:
            raise BundleError(
                f"{series_dir}: slice {Path(dataset.filename).name} has no {name}, neither in its data set nor in "
                f"its file meta ({meta_name}), which a DICOM SEG needs to reference it."
            )
        setattr(dataset, name, value)


def read_series(series_dir: str | os.PathLike) -> list[Dataset]:
    """The headers (no pixel data) of the one DICOM series in a folder, sorted along the slice normal.

    The order is that of ``ImagePositionPatient`` projected on the normal of ``ImageOrientationPatient`` (the
    order in which SimpleITK stacks the slices), whatever the file names. A blank ``SOPClassUID`` or
    ``SOPInstanceUID``, as anonymised series often have, is taken from the file meta.

    Raises:
        BundleError: if the folder holds no DICOM series or several, or a slice has no position, orientation or
            frame of reference (a SEG cannot be placed without them), or no SOP class or instance UID.
    """
    import pydicom

    datasets = [pydicom.dcmread(file, stop_before_pixels=True) for file in dicom_series_files(series_dir)]
    for dataset in datasets:
        _fill_sop_uids_from_file_meta(dataset, series_dir)
        missing = [
            name
            for name in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "FrameOfReferenceUID")
            if name not in dataset
        ]
        if missing:
            raise BundleError(
                f"{series_dir}: slice {Path(dataset.filename).name} has no {', '.join(missing)}, which a DICOM SEG "
                "needs to place its frames."
            )
    orientation = np.asarray(datasets[0].ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(orientation[:3], orientation[3:])
    return sorted(datasets, key=lambda dataset: float(np.dot(normal, np.asarray(dataset.ImagePositionPatient))))


def series_frames(label_map: np.ndarray, affine: np.ndarray, datasets: Sequence[Dataset]) -> np.ndarray:
    """The label of every pixel of every slice of a series, read from a label map at the pixel's world position.

    Args:
        label_map: ``(X, Y, Z)`` integer labels.
        affine: ``(4, 4)`` voxel index to RAS world (mm) matrix of ``label_map``.
        datasets: the slices (single-frame DICOM headers), in the order the frames are wanted.

    Returns:
        ``(len(datasets), Rows, Columns)`` labels, ``label_map``'s dtype; frame ``f``'s pixel ``[r, c]`` is the
        voxel at the world position of pixel ``[r, c]`` of slice ``f``.

    Raises:
        BundleError: if a slice's pixels do not fall on voxel centres of the label map (within
            :data:`GRID_TOLERANCE` voxels) or fall outside it.
    """
    world_to_voxel = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    frames = []
    for dataset in datasets:
        orientation = np.asarray(dataset.ImageOrientationPatient, dtype=np.float64)
        row_spacing, column_spacing = (float(value) for value in dataset.PixelSpacing)
        position = np.asarray(dataset.ImagePositionPatient, dtype=np.float64) * LPS_TO_RAS
        origin = world_to_voxel[:3, :3] @ position + world_to_voxel[:3, 3]
        next_column = world_to_voxel[:3, :3] @ (orientation[:3] * LPS_TO_RAS * column_spacing)
        next_row = world_to_voxel[:3, :3] @ (orientation[3:] * LPS_TO_RAS * row_spacing)
        rows, columns = np.arange(dataset.Rows), np.arange(dataset.Columns)
        voxels = origin + rows[:, None, None] * next_row + columns[None, :, None] * next_column  # (R, C, 3)
        index = np.rint(voxels).astype(np.int64)
        off_grid = float(np.abs(voxels - index).max())
        if off_grid > GRID_TOLERANCE or (index < 0).any() or (index >= label_map.shape).any():
            where = "off its voxel centres" if off_grid > GRID_TOLERANCE else "outside it"
            raise BundleError(
                f"the label map ({' x '.join(map(str, label_map.shape))} voxels) is not on the grid of the series "
                f"of {Path(dataset.filename).parent}: slice {Path(dataset.filename).name} lies {where}."
            )
        frames.append(label_map[index[..., 0], index[..., 1], index[..., 2]])
    return np.stack(frames)


def write_dicom_seg(
    label_map: np.ndarray,
    series_dir: str | os.PathLike,
    output_path: str | os.PathLike,
    class_names: Sequence[str],
    affine: np.ndarray | None = None,
    segmented_property_category: Code | None = None,
    segmented_property_type: Code | None = None,
) -> Path:
    """Write a label map as a DICOM SEG that references the series it was predicted from.

    Args:
        label_map: ``(X, Y, Z)`` integer labels, 0 the background and ``k`` the class ``class_names[k - 1]``.
        series_dir: the folder with the source DICOM series.
        output_path: the ``.dcm`` file to write; its folder must exist. Written atomically.
        class_names: the foreground classes in label order; one segment each, labelled with the name.
        affine: ``(4, 4)`` voxel index to RAS world (mm) matrix of ``label_map``; by default the series' own (as
            :class:`unet_med.bundle.readers.SimpleITKReader` reads it: ``x, y, z``, slices along the normal).
        segmented_property_category: the segments' category; SNOMED CT "Tissue" by default.
        segmented_property_type: the segments' type; SNOMED CT "Tissue" by default.

    Returns:
        ``output_path``.

    Raises:
        BundleError: if the series is unusable (see :func:`read_series`), the label map is not on its grid, or
            holds labels without a class name.
    """
    highdicom = _highdicom()
    from pydicom.sr.codedict import codes

    import unet_med

    label_map = np.asarray(label_map)
    labels = np.unique(label_map)
    if not np.issubdtype(label_map.dtype, np.integer) or labels.min() < 0 or labels.max() > len(class_names):
        raise BundleError(
            f"the label map for {series_dir} holds labels {labels.tolist()[:10]}: expected whole numbers 0 to "
            f"{len(class_names)} (one per class name)."
        )
    datasets = read_series(series_dir)
    if affine is None:
        affine = SimpleITKReader().get_data(read_scan(series_dir))[1][MetaKeys.AFFINE]
    frames = series_frames(label_map, affine, datasets).astype(np.min_scalar_type(len(class_names)))
    algorithm = highdicom.AlgorithmIdentificationSequence(
        name="unet-med", version=unet_med.__version__, family=codes.cid7162.ArtificialIntelligence
    )
    segments = [
        highdicom.seg.SegmentDescription(
            segment_number=number,
            segment_label=name,
            segmented_property_category=segmented_property_category or codes.SCT.Tissue,
            segmented_property_type=segmented_property_type or codes.SCT.Tissue,
            algorithm_type=highdicom.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, name in enumerate(class_names, start=1)
    ]
    logger.info(f"writing: {output_path}")
    with _quiet("highdicom"):
        seg = highdicom.seg.Segmentation(
            source_images=datasets,
            pixel_array=frames,
            segmentation_type=highdicom.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=segments,
            series_instance_uid=highdicom.UID(),
            series_number=1,
            sop_instance_uid=highdicom.UID(),
            instance_number=1,
            manufacturer="unet-med",
            manufacturer_model_name="unet-med",
            software_versions=unet_med.__version__,
            device_serial_number="0",  # software, no device
            series_description="unet-med segmentation",
            content_label="UNET_MED",
        )
    with atomic_write(output_path) as partial:
        seg.save_as(partial)
    return Path(output_path)


def seg_path(nifti_path: str | os.PathLike) -> Path:
    """The SEG file beside a NIfTI prediction: ``out/case_seg.nii.gz`` -> ``out/case_seg.dcm``."""
    path = Path(nifti_path)
    stem = next((path.name[: -len(suffix)] for suffix in NIFTI_SUFFIXES if path.name.endswith(suffix)), path.stem)
    return path.with_name(stem + SEG_SUFFIX)


def check_dicom_seg_inputs(datalist: Sequence[Mapping[str, Any]], enabled: bool | str, key: str = "image") -> None:
    """Before anything is built: with DICOM SEG output on, every input must be a DICOM series fit for a SEG.

    Args:
        datalist: the inputs, dicts whose ``key`` is a file or folder path.
        enabled: the ``dicom_seg`` option (``true``/``false`` as the command line gives it).
        key: the key of the input path.

    Raises:
        BundleError: if ``enabled`` is not a truth value; with it on, if highdicom is missing, an input is not a
            DICOM series folder (a SEG references the series' instances, which a NIfTI, NRRD or MetaImage file
            does not have), or a series lacks what a SEG needs (see :func:`read_series`).
    """
    if not as_bool(enabled, "--dicom_seg"):
        return
    _highdicom()
    for item in datalist:
        path = Path(item[key])
        if not path.is_dir():
            raise BundleError(
                f"--dicom_seg true: {path} is not a DICOM series folder, and a DICOM SEG can only reference a DICOM "
                "series; run the other inputs without --dicom_seg."
            )
        read_series(path)


class SaveDicomSegd(MapTransform):
    """Postprocessing that writes a DICOM SEG beside the NIfTI prediction of every DICOM series input.

    Put it after ``SaveImaged(..., savepath_in_metadict=True)``: the SEG is named after the NIfTI file that
    recorded its path in the prediction's metadata (``case_seg.nii.gz`` -> ``case_seg.dcm``). The prediction
    must be the label map on the scan's grid, as ``Invertd`` and ``AsDiscreted(argmax=True)`` leave it: a
    ``(1, X, Y, Z)`` MetaTensor whose ``filename_or_obj`` is the series folder.

    Args:
        keys: the prediction's key.
        class_names: the foreground classes in label order (see :func:`unet_med.bundle.report.class_names`).
        enabled: write the SEG (``false`` passes the data through: the bundles' ``dicom_seg`` option).
    """

    def __init__(self, keys: KeysCollection, class_names: Sequence[str], enabled: bool | str = True) -> None:
        super().__init__(keys)
        self.class_names = list(class_names)
        self.enabled = as_bool(enabled, "--dicom_seg")

    def __call__(self, data: Mapping[Hashable, Any]) -> Mapping[Hashable, Any]:
        """Write the SEG of each key's prediction; the data is returned as it came."""
        if not self.enabled:
            return data
        for key in self.key_iterator(data):
            prediction = data[key]
            meta = prediction.meta
            if MetaKeys.SAVED_TO not in meta:
                raise BundleError(
                    f"SaveDicomSegd on '{key}': no saved NIfTI path in its metadata; put it after "
                    "SaveImaged(..., savepath_in_metadict=True)."
                )
            if prediction.ndim != 4 or prediction.shape[0] != 1:
                raise BundleError(
                    f"SaveDicomSegd on '{key}': expected a (1, X, Y, Z) label map, got shape {tuple(prediction.shape)}."
                )
            label_map = prediction.detach().cpu().numpy()[0].astype(np.int64)
            write_dicom_seg(
                label_map,
                meta[ImageMetaKey.FILENAME_OR_OBJ],
                seg_path(meta[MetaKeys.SAVED_TO]),
                self.class_names,
                affine=np.asarray(prediction.affine, dtype=np.float64),
            )
        return data
