"""Datalists from Medical Segmentation Decathlon style folders, deterministic splits and label names.

A Decathlon folder holds ``imagesTr/``, ``labelsTr/`` and a ``dataset.json`` whose ``training`` section lists
``{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}`` pairs and whose ``labels`` section names
the classes. Every function here can be called from bundle YAML, for example
``"$unet_med.bundle.datalists.train_val_datalists(@dataset_dir)['training']"``.
"""

from __future__ import annotations

import glob
import json
import os
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path

from monai.data.utils import create_file_basename

from unet_med.bundle.errors import BundleError
from unet_med.bundle.readers import SCAN_SUFFIXES, is_scan

__all__ = [
    "DATASET_JSON",
    "check_output_dir",
    "decathlon_datalist",
    "image_datalist",
    "label_names",
    "load_dataset_json",
    "split_datalist",
    "train_val_datalists",
]

DATASET_JSON = "dataset.json"


def _dataset_json_path(dataset: str | os.PathLike) -> Path:
    """The ``dataset.json`` of a Decathlon folder, or ``dataset`` itself when it is a JSON file."""
    path = Path(dataset)
    if path.is_dir():
        if not any(entry for entry in path.iterdir() if not entry.name.startswith(".")):
            raise BundleError(f"dataset folder {path} is empty: expected imagesTr/, labelsTr/ and {DATASET_JSON}.")
        path = path / DATASET_JSON
    if not path.is_file():
        raise BundleError(f"no Decathlon dataset description at {path}: expected a folder with {DATASET_JSON}")
    return path


def load_dataset_json(dataset: str | os.PathLike) -> dict:
    """Read the ``dataset.json`` of a Decathlon folder.

    Args:
        dataset: the Decathlon folder or its ``dataset.json``.

    Returns:
        The parsed JSON object.

    Raises:
        BundleError (a ``ValueError``): if the folder or the file is missing, or the file is not a JSON object.
    """
    path = _dataset_json_path(dataset)
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise BundleError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(content, dict):
        raise BundleError(f"{path} must hold a JSON object, found {type(content).__name__}.")
    return content


def decathlon_datalist(
    dataset: str | os.PathLike,
    section: str = "training",
    keys: Sequence[str] = ("image", "label"),
    check_files: bool = True,
) -> list[dict[str, str]]:
    """List the cases of one section of a Decathlon ``dataset.json`` with absolute file paths.

    Args:
        dataset: the Decathlon folder or its ``dataset.json``; paths in the file are relative to its folder.
        section: the section to read, e.g. ``"training"`` or ``"test"``.
        keys: the keys of every item that name files (``"test"`` items may be bare paths: they become
            ``{"image": path}``).
        check_files: refuse listed files that do not exist (all of them named in one error); ``False`` lists
            them all the same, for a caller that reports missing files itself.

    Returns:
        One dict per case, ``{"image": "/abs/imagesTr/x.nii.gz", "label": "/abs/labelsTr/x.nii.gz"}``.

    Raises:
        BundleError (a ``ValueError``): if the description, the section or a listed file is missing, or the
            section is empty.
    """
    path = _dataset_json_path(dataset)
    root = path.parent.resolve()
    items = load_dataset_json(path).get(section)
    if not items:
        raise BundleError(f"{path} has no cases in section '{section}'.")
    datalist, missing = [], []
    for item in items:
        item = {"image": item} if isinstance(item, str) else dict(item)
        for key in keys:
            if key not in item:
                raise BundleError(f"a case in section '{section}' of {path} has no '{key}': {item}.")
            file = Path(os.path.normpath(root / item[key]))  # a symbolic link is named, not its target
            if not file.is_file():
                missing.append(str(file))
            item[key] = str(file)
        datalist.append(item)
    if check_files and missing:
        raise BundleError(f"{path} lists {len(missing)} file(s) that do not exist: {', '.join(missing)}.")
    return datalist


def split_datalist(
    datalist: Sequence[dict], val_fraction: float = 0.2, num_val: int | None = None, seed: int = 0
) -> tuple[list[dict], list[dict]]:
    """Split a datalist into training and validation cases, the same way for the same arguments.

    Args:
        datalist: the cases.
        val_fraction: share of the cases for validation, rounded to the nearest count (at least one).
        num_val: number of validation cases; overrides ``val_fraction`` when given.
        seed: seed of the shuffle that picks the validation cases.

    Returns:
        ``(training, validation)``, each in the datalist's order.

    Raises:
        BundleError (a ``ValueError``): if the split leaves no training or no validation case.
    """
    if num_val is None:
        if not 0.0 < val_fraction < 1.0:
            raise BundleError(f"val_fraction must lie in (0, 1), got {val_fraction}.")
        num_val = max(1, round(val_fraction * len(datalist)))
    if not 0 < num_val < len(datalist):
        raise BundleError(f"cannot hold out {num_val} of {len(datalist)} cases and keep some for training.")
    val_index = set(random.Random(seed).sample(range(len(datalist)), num_val))
    training = [item for i, item in enumerate(datalist) if i not in val_index]
    validation = [item for i, item in enumerate(datalist) if i in val_index]
    return training, validation


def train_val_datalists(
    dataset: str | os.PathLike | Sequence[dict[str, str]],
    val_fraction: float = 0.2,
    num_val: int | None = None,
    seed: int = 0,
) -> dict[str, list[dict[str, str]]]:
    """The ``training`` section of a Decathlon folder split into training and validation cases.

    Args:
        dataset: the Decathlon folder or its ``dataset.json``, or its training cases already listed (e.g. by
            :func:`unet_med.bundle.dataset_check.check_dataset`).
        val_fraction: share of the cases for validation (see :func:`split_datalist`).
        num_val: number of validation cases; overrides ``val_fraction`` when given.
        seed: seed of the split.

    Returns:
        ``{"training": [...], "validation": [...]}`` of image/label dicts with absolute paths.
    """
    cases = decathlon_datalist(dataset) if isinstance(dataset, (str, os.PathLike)) else list(dataset)
    training, validation = split_datalist(cases, val_fraction, num_val, seed)
    return {"training": training, "validation": validation}


def label_names(dataset: str | os.PathLike) -> dict[int, str]:
    """Class names from the ``labels`` section of a ``dataset.json``.

    Args:
        dataset: the Decathlon folder or its ``dataset.json``.

    Returns:
        ``{0: "background", 1: "Anterior", ...}``, keyed by label value.

    Raises:
        BundleError (a ``ValueError``): if the file has no ``labels`` section, or its keys are not integers.
    """
    labels = load_dataset_json(dataset).get("labels")
    if not labels or not isinstance(labels, dict):
        raise BundleError(f"{_dataset_json_path(dataset)} has no 'labels' section.")
    try:
        return {int(value): name for value, name in labels.items()}
    except ValueError:
        raise BundleError(
            f"the 'labels' of {_dataset_json_path(dataset)} must map label values to names, such as "
            f'{{"0": "background", "1": "tumour"}}; found keys {list(labels)}.'
        ) from None


def image_datalist(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[dict[str, str]]:
    """Scans to run inference on, as ``{"image": path}`` dicts.

    A scan is a NIfTI, NRRD or MetaImage file (:data:`unet_med.bundle.readers.SCAN_SUFFIXES`) or a folder that
    holds one DICOM series.

    Args:
        source: a folder (its scan files and its subfolders with a DICOM series, hidden ones such as
            ``._x.nii.gz`` left out; or the folder itself, when it is a DICOM series), a glob pattern such as
            ``"/data/imagesTs/*.nii.gz"``, one file, or a sequence of files and DICOM folders.

    Returns:
        One dict per scan, sorted by path.

    Raises:
        BundleError (a ``ValueError``): if nothing matches or a listed path does not exist.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            files = [str(p) for p in path.iterdir() if p.name[0] != "." and is_scan(p)]
            if not files and is_scan(path):
                files = [str(path)]
            if not files:
                raise BundleError(
                    f"no images ({', '.join(SCAN_SUFFIXES)} files or DICOM series folders) in folder {path}."
                )
        elif path.is_file():
            files = [str(path)]
        else:
            files = glob.glob(str(source))
        if not files:
            raise BundleError(f"no images found at {source}.")
    else:
        files = [str(file) for file in source]
        missing = [file for file in files if not Path(file).exists()]
        if missing or not files:
            raise BundleError(f"image files missing: {missing or 'an empty list was given'}.")
    return [{"image": str(Path(file).resolve())} for file in sorted(files)]


def _check_writable(folder: Path) -> None:
    """Refuse a folder that cannot be created or written, without creating it."""
    existing = next(path for path in (folder, *folder.parents) if path.exists())
    if not existing.is_dir():
        raise BundleError(f"output folder {folder} cannot be created: {existing} is a file.")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise BundleError(f"output folder {folder} cannot be written: {err.strerror} in {existing}.") from None


def check_output_dir(output_dir: str | os.PathLike, datalist: Sequence[dict] = ()) -> None:
    """Refuse an output folder that cannot be written, or whose predictions would overwrite anything.

    Predictions are named after their inputs (``x.nii.gz`` -> ``output_dir/x_seg.nii.gz``, as MONAI's
    ``SaveImaged`` with ``separate_folder=False`` names them, and ``x_seg.dcm`` beside it for a DICOM SEG). So
    that none overwrites an input or another prediction, ``output_dir`` must not be the folder of an input (then
    no prediction can have an input's path) nor lie in a DICOM series folder (its files would join the series),
    and no two inputs may share a name without their extensions (``a/x.nii.gz`` and ``b/x.nii``).

    Args:
        output_dir: the folder outputs are written to; it need not exist yet.
        datalist: the inputs, dicts whose ``"image"`` is a file or DICOM series folder path (none for a training
            run's folders).

    Raises:
        BundleError (a ``ValueError``): if the folder cannot be created or written, is the folder of one of the
            images or lies in a series folder, or two images would give the same output file.
    """
    target = Path(output_dir).resolve()
    _check_writable(target)
    written_by: dict[str, str] = {}
    for item in datalist:
        image = Path(item["image"]).resolve()
        if image.parent == target:
            raise BundleError(f"output_dir {target} holds the input {item['image']}: choose another folder.")
        if image.is_dir() and (image == target or image in target.parents):
            raise BundleError(
                f"output_dir {target} lies in the DICOM series folder {item['image']}: choose a folder outside it."
            )
        stem = create_file_basename("", image, target, separate_folder=False, makedirs=False)
        if stem in written_by:
            raise BundleError(
                f"the inputs {written_by[stem]} and {image} have the same name, so their outputs would overwrite "
                f"each other in {target}: rename one."
            )
        written_by[stem] = str(image)
