"""Fixtures every tier shares: the project's paths and the bundle command line."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
