"""Fixtures every tier shares: the project's paths and the bundle command line."""

from __future__ import annotations

import locale
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import SimpleITK as sitk  # noqa: N813 (SimpleITK's own convention)

ROOT = Path(__file__).resolve().parents[1]
INTERPRETER_LOCALE = locale.setlocale(locale.LC_ALL)


@pytest.fixture(autouse=True)
def _interpreter_locale() -> None:
    """Starts each test in the C library's locale of the interpreter's start.

    GDCM's DICOM writer (SimpleITK writing the test scans, in session fixtures too) leaves the locale at "C", which
    turns Python's default text encoding into ASCII for every later test (``torch.compile`` reads its UTF-8
    templates with it). Function fixtures are set up after the session's, so this one runs after any writer.
    """
    locale.setlocale(locale.LC_ALL, INTERPRETER_LOCALE)


def _files_under(folders: Sequence[Path]) -> set[Path]:
    return {path for folder in folders for path in folder.rglob("*")}


@pytest.fixture(scope="session", autouse=True)
def _clone_stays_clean() -> Iterator[None]:
    """Fails the session if a test left a file in the bundles or the sample data (tests write to tmp folders)."""
    folders = [ROOT / "bundles", ROOT / "data_samples"]
    before = _files_under(folders)
    yield
    added = sorted(str(path.relative_to(ROOT)) for path in _files_under(folders) - before)
    assert not added, f"tests wrote into the checkout: {', '.join(added[:10])}"


@pytest.fixture(scope="session")
def project_root() -> Path:
    """The checkout's root folder."""
    return ROOT


@pytest.fixture(scope="session")
def samples() -> Path:
    """``data_samples/``: ten hippocampus MRI cases in the Decathlon layout."""
    return ROOT / "data_samples"


@pytest.fixture(scope="session")
def bundle_dirs() -> dict[str, Path]:
    """The bundle folders by name: ``{"2d": ..., "3d": ...}``."""
    return {dims: ROOT / "bundles" / f"unet_med_{dims}_segmentation" for dims in ("2d", "3d")}


@pytest.fixture(scope="session")
def corrupt_gzip() -> Callable[[Path], Path]:
    """Damages a ``.nii.gz`` file in place as a bad disk or transfer does: 200 bytes in the middle of its
    gzip stream inverted. The stream still decompresses, to wrong values; only its CRC tells."""

    def corrupt(path: Path) -> Path:
        content = bytearray(path.read_bytes())
        middle = len(content) // 2
        content[middle : middle + 200] = bytes(byte ^ 0xFF for byte in content[middle : middle + 200])
        path.write_bytes(bytes(content))
        return path

    return corrupt


@pytest.fixture(scope="session")
def child_env() -> dict[str, str]:
    """The environment for a child Python process that imports the checkout's ``unet_med``."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="session")
def bundle_cli(child_env: dict[str, str]) -> Callable[..., subprocess.CompletedProcess]:
    """Runs ``python -m monai.bundle run`` in a bundle folder and checks that it succeeds.

    Called as ``bundle_cli(bundle, config, out, output, *overrides, run_id="", launcher=(python,), check=True)``:
    weights go to ``out/models`` and outputs to ``out/<output>``; ``launcher`` starts the module (the interpreter,
    or torchrun and its options); ``check=False`` returns a failed run instead of failing the test.
    """

    def run(
        bundle: Path,
        config: str,
        out: Path,
        output: str,
        *overrides: str,
        run_id: str = "",
        launcher: Sequence[str] = (sys.executable,),
        check: bool = True,
    ) -> subprocess.CompletedProcess:
        paths = ["--ckpt_dir", str(out / "models"), "--output_dir", str(out / output)]
        command = [*launcher, "-m", "monai.bundle", "run", *filter(None, [run_id])]
        command += ["--config_file", config, *paths, *overrides]
        result = subprocess.run(command, cwd=bundle, env=child_env, capture_output=True, text=True, timeout=300)
        report = f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        assert result.returncode == 0 or not check, report
        return result

    return run


@pytest.fixture(scope="session")
def planned_models(tmp_path_factory, samples, bundle_dirs) -> dict[str, Path]:
    """A models folder per bundle, as training leaves it, with freshly initialised weights.

    ``{"2d": folder, "3d": folder}``, each holding ``plan.yaml`` (data_samples planned for the CPU with the
    bundle's dimensions) and ``model.pt`` (``{"model": state_dict, "plan": plan}``, the network built by the
    bundle's inference config). Read-only: copy a folder before changing it.
    """
    import shutil

    import torch
    from monai.bundle import ConfigParser

    from unet_med.bundle.plan import PlanSettings, plan_dataset

    folders = {}
    fingerprint = None
    for dims in ("3d", "2d"):
        folder = tmp_path_factory.mktemp(f"planned_{dims}") / "models"
        folder.mkdir()
        if fingerprint is not None:  # the same cases: the cached fingerprint serves both
            shutil.copy(fingerprint, folder / "fingerprint.json")
        settings = PlanSettings(device="cpu", spatial_dims=int(dims[0]))
        plan, _ = plan_dataset(samples, folder / "plan.yaml", settings, workers=1, progress=False)
        fingerprint = folder / "fingerprint.json"
        parser = ConfigParser()
        parser.read_config(str(bundle_dirs[dims] / "configs" / "inference.yaml"))
        parser["plan"] = plan
        network = parser.get_parsed_content("network_def")
        torch.save({"model": network.state_dict(), "plan": plan}, folder / "model.pt")
        folders[dims] = folder
    return folders


def _write_dicom_series(image, folder: Path) -> None:
    """One DICOM file per slice of a 3D int16 SimpleITK image, with the tags that place each slice in space."""
    folder.mkdir(parents=True)
    direction = image.GetDirection()
    shared = {
        "0008|0060": "MR",
        "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
        "0020|000e": "1.2.826.0.1.3680043.2.1125.1.1",
        "0020|0052": "1.2.826.0.1.3680043.2.1125.1.2",
        "0020|0037": "\\".join(f"{value:.6f}" for value in direction[0::3] + direction[1::3]),
        "0028|0030": "\\".join(f"{value:.6f}" for value in reversed(image.GetSpacing()[:2])),
        "0018|0050": f"{image.GetSpacing()[2]:.6f}",
    }
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for index in range(image.GetDepth()):
        plane = image[:, :, index]
        position = image.TransformIndexToPhysicalPoint((0, 0, index))
        tags = {**shared, "0020|0032": "\\".join(f"{value:.6f}" for value in position), "0020|0013": str(index + 1)}
        tags["0008|0018"] = f"{shared['0020|000e']}.{index + 1}"
        for tag, value in tags.items():
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice_{index:03d}.dcm"))
        writer.Execute(plane)


@pytest.fixture(scope="session")
def scan_formats(tmp_path_factory, samples) -> dict[str, Path]:
    """One sample scan (hippocampus_001 as int16, turned 90 degrees about z, 0.9 x 1.1 x 1.3 mm voxels) in every
    format inference reads.

    Keys: ``nifti`` (``.nii.gz``), ``dicom`` (a folder with the series), ``nrrd``, ``mha``; all hold the same
    voxels at the same world positions.
    """
    image = sitk.Cast(sitk.ReadImage(str(samples / "imagesTr" / "hippocampus_001.nii.gz")), sitk.sitkInt16)
    image.SetDirection((0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    image.SetSpacing((0.9, 1.1, 1.3))
    folder = tmp_path_factory.mktemp("scan_formats")
    paths = {"nifti": folder / "scan.nii.gz", "nrrd": folder / "scan.nrrd", "mha": folder / "scan.mha"}
    for path in paths.values():
        sitk.WriteImage(image, str(path))
    _write_dicom_series(image, folder / "dicom" / "scan")
    return {**paths, "dicom": folder / "dicom" / "scan"}
