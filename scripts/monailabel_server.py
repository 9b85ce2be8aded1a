#!/usr/bin/env python3
"""Serve the project's bundles with a MONAI Label server, from a virtual environment of its own.

MONAI Label 0.8.5 needs numpy < 2, jsonschema < 4 and pydicom < 3 (see ``monailabel_constraints.txt``; the
project needs jsonschema >= 4), so it runs apart from the project's environment, on the project's MONAI. This
script builds that environment once from PyPI under ``${XDG_CACHE_HOME:-~/.cache}/unet-med/`` and reuses it for
as long as ``monailabel_requirements.txt``, ``monailabel_constraints.txt`` and the Python version stay the same;
the project's code comes from this checkout.

Usage (Linux or macOS)::

    # build the environment (7 to 28 minutes and 7.5 GB on disk the first time), print its python
    python scripts/monailabel_server.py env
    # serve bundles/unet_med_3d_segmentation (it needs models/model.pt) on http://127.0.0.1:8000
    python scripts/monailabel_server.py start --studies /data/scans
    python scripts/monailabel_server.py start --studies /data/scans --bundle path/to/bundle --port 8001

``start`` replaces itself with the server, so the process id it runs under is the server's.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = Path(__file__).resolve().with_name("monailabel_requirements.txt")
CONSTRAINTS = Path(__file__).resolve().with_name("monailabel_constraints.txt")
DEFAULT_BUNDLE = ROOT / "bundles" / "unet_med_3d_segmentation"
SAMPLE_APP = "monaibundle"
COMPLETE_MARKER = ".complete"
# Without a network the server must not ask the model zoo for its bundle list or download SAM2 weights.
OFFLINE_CONF = (("zoo_source", "local"), ("sam2", "false"))
# Proves that the installed torchvision's compiled operators load beside the installed torch.
SMOKE_TEST = (
    "import torch, torchvision.ops, monailabel.main; "
    "torchvision.ops.nms(torch.zeros(1, 4), torch.ones(1), 0.5); "
    "print('monailabel', monailabel.__version__, 'torch', torch.__version__, 'torchvision', torchvision.__version__)"
)


def cache_dir() -> Path:
    """The project's cache folder: ``$XDG_CACHE_HOME/unet-med``, by default ``~/.cache/unet-med``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "unet-med"


def environment_key() -> str:
    """A short digest of everything the environment is built from: packages, pins, Python and platform."""
    parts = [
        REQUIREMENTS.read_text(),
        CONSTRAINTS.read_text(),
        f"python{sys.version_info.major}.{sys.version_info.minor}",
        platform.system(),
        platform.machine(),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def environment_python(env_dir: Path) -> Path:
    """The interpreter of a virtual environment."""
    return env_dir / "bin" / "python"


def run_step(title: str, command: Sequence[str | Path], extra_env: dict[str, str] | None = None) -> None:
    """Run one build step, echoing its title and duration to stderr.

    Raises:
        RuntimeError: if the command fails (its own output has already gone to stderr).
    """
    print(f"[monailabel env] {title}", file=sys.stderr, flush=True)
    start = time.monotonic()
    result = subprocess.run([str(part) for part in command], env={**os.environ, **(extra_env or {})})
    if result.returncode != 0:
        raise RuntimeError(f"building the MONAI Label environment failed at '{title}' (exit {result.returncode}).")
    print(f"[monailabel env]   {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)


def build_environment(env_dir: Path) -> None:
    """Create the virtual environment and install MONAI Label and what the bundles import, from PyPI.

    torch and torchvision go in first, so that sam2 (a MONAI Label dependency published as source only) builds
    against them without build isolation, which would otherwise download another torch just to build it.
    """
    python = environment_python(env_dir)
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-c", CONSTRAINTS]
    run_step("create the virtual environment", [sys.executable, "-m", "venv", env_dir])
    run_step("update pip", [*pip, "--upgrade", "pip"])
    run_step("install torch and torchvision", [*pip, "torch", "torchvision", "setuptools", "wheel"])
    # SAM2_BUILD_CUDA=0: sam2's optional CUDA extension is not needed; the server runs with SAM2 off.
    run_step("install MONAI Label", [*pip, "--no-build-isolation", "-r", REQUIREMENTS], {"SAM2_BUILD_CUDA": "0"})
    run_step("check that torchvision's operators load", [python, "-c", SMOKE_TEST])


def ensure_environment() -> Path:
    """Build the MONAI Label environment unless a complete one with the same key exists.

    Concurrent calls wait for each other through a lock file. A build that did not finish leaves no
    ``.complete`` marker and is started afresh.

    Returns:
        The environment's python interpreter.
    """
    env_dir = cache_dir() / f"monailabel-{environment_key()}"
    env_dir.parent.mkdir(parents=True, exist_ok=True)
    with (env_dir.parent / "monailabel.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (env_dir / COMPLETE_MARKER).is_file():
            shutil.rmtree(env_dir, ignore_errors=True)
            start = time.monotonic()
            try:
                build_environment(env_dir)
            except BaseException:
                shutil.rmtree(env_dir, ignore_errors=True)
                raise
            (env_dir / COMPLETE_MARKER).touch()
            minutes, seconds = divmod(round(time.monotonic() - start), 60)
            print(f"[monailabel env] built {env_dir} in {minutes} min {seconds} s", file=sys.stderr)
    return environment_python(env_dir)


def check_bundle(bundle: Path) -> None:
    """Refuse a folder that MONAI Label would skip (it only logs a warning), naming what is missing.

    Raises:
        ValueError: if the bundle lacks its metadata, its inference config, its weights or its plan.
    """
    configs = bundle / "configs"
    if not (configs / "metadata.json").is_file():
        raise ValueError(f"{bundle} is not a bundle folder: configs/metadata.json is missing.")
    if not any((configs / f"inference.{ext}").is_file() for ext in ("yaml", "json")):
        raise ValueError(f"{bundle} has no configs/inference.yaml (or .json), which MONAI Label runs.")
    if not any((bundle / "models" / name).is_file() for name in ("model.pt", "model.ts")):
        raise ValueError(
            f"{bundle / 'models'} holds no model.pt: MONAI Label serves only bundles with weights; train first "
            "(python -m monai.bundle run training --config_file configs/train.yaml)."
        )
    if not (bundle / "models" / "plan.yaml").is_file():
        raise ValueError(
            f"{bundle / 'models'} holds no plan.yaml: the bundle's configs read the plan its model was trained with, "
            "which training writes beside model.pt."
        )


def default_app_dir(bundles: Sequence[Path]) -> Path:
    """An app folder in the cache for this set of bundles, so that servers of other bundles keep theirs."""
    digest = hashlib.sha256("\n".join(sorted(str(b) for b in bundles)).encode()).hexdigest()[:12]
    return cache_dir() / f"monailabel-app-{digest}"


def prepare_app(app: Path, python: Path, bundles: Sequence[Path]) -> None:
    """Copy MONAI Label's monaibundle sample app to ``app`` if absent, and link each bundle into ``app/model``.

    The copy is what ``monailabel apps --download --name monaibundle`` makes (it copies from the installed package;
    nothing is downloaded). A bundle is served under its folder name.

    Raises:
        ValueError: if ``app/model/<name>`` is a folder other than the bundle itself.
    """
    if not (app / "main.py").is_file():
        sample = python.parents[1] / "monailabel" / "sample-apps" / SAMPLE_APP
        shutil.copytree(sample, app, ignore=shutil.ignore_patterns("logs", "model", "__pycache__"), dirs_exist_ok=True)
    (app / "model").mkdir(exist_ok=True)
    for bundle in bundles:
        link = app / "model" / bundle.name
        if link.is_symlink():
            link.unlink()
        elif link.exists():
            if link.resolve() == bundle:
                continue
            raise ValueError(f"{link} exists and is not a link to {bundle}: remove it or pass --bundle {link}.")
        link.symlink_to(bundle, target_is_directory=True)


def server_command(
    python: Path, app: Path, studies: Path, names: Sequence[str], host: str, port: int, conf: Sequence[Sequence[str]]
) -> list[str]:
    """The ``monailabel.main start_server`` command line: offline settings first, then the caller's ``conf``."""
    command = [str(python), "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies)]
    for key, value in [("models", ",".join(names)), *OFFLINE_CONF, *conf]:
        command += ["--conf", key, value]
    return [*command, "--host", host, "--port", str(port)]


def start(args: argparse.Namespace) -> None:
    """Build or reuse the environment, prepare the app and replace this process with the server."""
    studies = args.studies.resolve()
    if not studies.is_dir():
        raise ValueError(f"studies folder {studies} does not exist.")
    bundles = [bundle.resolve() for bundle in args.bundle or [DEFAULT_BUNDLE]]
    for bundle in bundles:
        check_bundle(bundle)
    python = ensure_environment()
    app = (args.app or default_app_dir(bundles)).resolve()
    prepare_app(app, python, bundles)
    command = server_command(python, app, studies, [b.name for b in bundles], args.host, args.port, args.conf)
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    print("[monailabel]", " ".join(command), file=sys.stderr, flush=True)
    os.execve(command[0], command, {**os.environ, "PYTHONPATH": pythonpath})


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line: ``env`` or ``start`` with its options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("env", help="build the MONAI Label environment if needed and print its python")
    server = commands.add_parser("start", help="start a MONAI Label server with the bundles on a studies folder")
    server.add_argument("--studies", type=Path, required=True, help="folder of images (NIfTI) to annotate")
    server.add_argument(
        "--bundle", type=Path, action="append", help=f"bundle folder to serve, repeatable (default: {DEFAULT_BUNDLE})"
    )
    server.add_argument("--app", type=Path, help="MONAI Label app folder (default: one in the cache per bundle set)")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    server.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    server.add_argument(
        "--conf", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"), help="more MONAI Label app settings"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the ``env`` or ``start`` command; user errors end the program with a one-line message."""
    args = parse_args(argv)
    try:
        if args.command == "env":
            print(ensure_environment())
        else:
            start(args)
    except (ValueError, RuntimeError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
