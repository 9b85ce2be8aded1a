"""Fixtures of the bundle-runtime tests: Decathlon folders written from arrays."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest


@pytest.fixture
def write_decathlon(tmp_path: Path) -> Callable[..., Path]:
    """Writes a Decathlon folder of real NIfTI files.

    Called as ``write_decathlon(cases, spacings, channel_names, labels, name)``: ``cases`` are ``(image, label)``
    arrays (images ``X x Y x Z`` or ``X x Y x Z x C``), ``spacings`` one ``(sx, sy, sz)`` per case (RAS affine),
    ``channel_names`` the ``modality`` of dataset.json (``None`` leaves it out), ``labels`` the label names.
    """

    def write(
        cases: Sequence[tuple[np.ndarray, np.ndarray]],
        spacings: Sequence[Sequence[float]],
        channel_names: Sequence[str] | None = ("MRI",),
        labels: Sequence[str] = ("background", "organ"),
        name: str = "dataset",
    ) -> Path:
        folder = tmp_path / name
        (folder / "imagesTr").mkdir(parents=True)
        (folder / "labelsTr").mkdir()
        training = []
        for index, ((image, label), spacing) in enumerate(zip(cases, spacings)):
            affine = np.diag([*spacing, 1.0])
            file = f"case_{index:03d}.nii.gz"
            nib.save(nib.Nifti1Image(image, affine), folder / "imagesTr" / file)
            nib.save(nib.Nifti1Image(label, affine), folder / "labelsTr" / file)
            training.append({"image": f"./imagesTr/{file}", "label": f"./labelsTr/{file}"})
        description = {"name": name, "labels": {str(i): label for i, label in enumerate(labels)},
                       "numTraining": len(training), "training": training}
        if channel_names is not None:
            description["modality"] = {str(i): channel for i, channel in enumerate(channel_names)}
        (folder / "dataset.json").write_text(json.dumps(description))
        return folder

    return write
