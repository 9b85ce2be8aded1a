"""Files that survive a killed process: atomic writes, and checkpoints that load without running code.

Atomic writes: a file is written beside its target under a hidden name, then renamed onto it.

A rename within one folder is atomic, so a reader sees either the previous file or the complete new one, never
a half-written one, even when the writing process is killed. A killed write leaves its hidden partial file
(``.partial-<random>-<name>``) behind, which is safe to delete. A write that fills its device removes its partial
file and raises a :class:`~unet_med.bundle.errors.DiskFullError` naming the file and the space (one line on the
terminal), whatever library was writing: MONAI's ``SaveImaged`` would report it as "cannot find a suitable
writer", so predictions are saved with :class:`AtomicSaveImaged`, which keeps the error as it is.

Checkpoints: :func:`save_checkpoint` writes through :func:`atomic_write`; :func:`load_checkpoint` reads with
``torch.load(..., weights_only=True)``: tensors, numbers, strings and plain containers only; anything else, and
any unreadable file, raises a :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import secrets
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from monai.data import NibabelWriter
from monai.transforms import SaveImaged

from unet_med.bundle.errors import BundleError, DiskFullError, disk_full_error, is_disk_full

__all__ = [
    "AtomicNibabelWriter",
    "AtomicSaveImaged",
    "CheckpointError",
    "atomic_write",
    "load_checkpoint",
    "move_aside",
    "one_line",
    "save_checkpoint",
]

PARTIAL_PREFIX = ".partial-"
FULL_BELOW = 64 * 1024
"""A write that fails with less free space than this (bytes) on its device failed for want of space."""
logger = logging.getLogger(__name__)


def _device_full(folder: Path) -> bool:
    """Whether the device of ``folder`` has (nearly) no space left for this process's writes."""
    try:
        return shutil.disk_usage(folder).free < FULL_BELOW
    except OSError:
        return False


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Give a temporary path to write ``path``'s content to; rename it onto ``path`` when the block succeeds.

    The temporary file lies in ``path``'s folder (a rename across file systems would not be atomic) and ends
    with ``path``'s name, so that writers which pick a format from the extension (``.nii.gz``) pick the same
    one. It is created empty with the permissions of any new file (``0o666`` less the umask), flushed to disk
    before the rename, and removed if the block raises.

    Args:
        path: the file to write; its folder must exist.

    Yields:
        The temporary path to write to.

    Raises:
        DiskFullError: if the device (or the quota) is full: ``path`` is left as it was.
    """
    path = Path(path)
    partial = path.with_name(f"{PARTIAL_PREFIX}{secrets.token_hex(6)}-{path.name}")
    os.close(os.open(partial, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        yield partial
        with partial.open("rb+") as file:
            os.fsync(file.fileno())
        os.replace(partial, path)
    except BaseException as error:
        written = partial.stat().st_size if partial.exists() else 0
        # torch.save reports a full device as a RuntimeError of its zip writer: the device, still holding the
        # partial file, tells
        full = is_disk_full(error) or (isinstance(error, Exception) and _device_full(partial.parent))
        partial.unlink(missing_ok=True)
        if full:
            raise disk_full_error(path, written) from error
        raise


class AtomicNibabelWriter(NibabelWriter):
    """MONAI's ``NibabelWriter`` that writes each NIfTI file atomically (see :func:`atomic_write`).

    ``nibabel.save`` writes in place, so an inference run stopped during a write would leave a truncated
    ``.nii.gz`` that looks like a finished prediction. Give it to ``SaveImage``/``SaveImaged`` as
    ``writer: unet_med.bundle.io.AtomicNibabelWriter``.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.disk_full: DiskFullError | None = None

    def write(self, filename: str | os.PathLike, verbose: bool = False, **obj_kwargs: Any) -> None:
        """Write the NIfTI file ``filename`` through a temporary file beside it.

        Args:
            filename: the target file, e.g. ``outputs/case_seg.nii.gz``.
            verbose: log the progress.
            obj_kwargs: passed to ``NibabelWriter.write``.

        Raises:
            DiskFullError: if the device is full (also kept as :attr:`disk_full`).
        """
        if verbose:
            logger.info(f"writing: {filename}")
        try:
            with atomic_write(filename) as partial:
                super().write(partial, verbose=False, **obj_kwargs)
        except DiskFullError as error:
            self.disk_full = error
            raise


class AtomicSaveImaged(SaveImaged):
    """MONAI's ``SaveImaged`` writing through :class:`AtomicNibabelWriter`, that says when the disk is full.

    MONAI's ``SaveImage`` catches any error of its writers, logs "<writer>: unable to write <file>" and raises
    "cannot find a suitable writer" in its place; this one raises the writer's :class:`DiskFullError` instead,
    and keeps that log line (its ``SaveImage`` logger's INFO records, which say nothing else) off the console.
    It takes ``SaveImaged``'s arguments but ``writer``. MONAI Label, which leaves every ``SaveImaged`` out of the
    bundles' postprocessing, leaves it out.
    """

    def __init__(self, keys: Any, **kwargs: Any) -> None:
        self._writer: AtomicNibabelWriter | None = None
        super().__init__(keys, writer=self._new_writer, **kwargs)
        logging.getLogger(type(self.saver).__name__).setLevel(logging.WARNING)

    def _new_writer(self, **kwargs: Any) -> AtomicNibabelWriter:
        """A writer for one image (``SaveImage`` makes one per image), remembered for its error."""
        self._writer = AtomicNibabelWriter(**kwargs)
        return self._writer

    def __call__(self, data: Any) -> Any:
        """Save the images of ``data``, as ``SaveImaged`` does.

        Raises:
            DiskFullError: if the device is full; the file is left as it was.
        """
        try:
            return super().__call__(data)
        except RuntimeError:
            if self._writer is None or self._writer.disk_full is None:
                raise
            raise self._writer.disk_full from None


def move_aside(paths: Sequence[str | os.PathLike], when: float | None = None, copy: bool = False) -> list[Path]:
    """Move files into ``previous/<time>/`` beside them, so that a new run does not overwrite them.

    Args:
        paths: existing files.
        when: the time that names the folder (seconds since the epoch); by default the newest file's
            modification time, i.e. when the previous run last wrote.
        copy: copy them instead (written atomically), leaving each file in place until it is replaced.

    Returns:
        The new paths.
    """
    paths = [Path(path) for path in paths]
    if not paths:
        return []
    when = max(path.stat().st_mtime for path in paths) if when is None else when
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when))
    moved = []
    for path in paths:
        target = path.parent / "previous" / stamp / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if copy:
            with atomic_write(target) as partial:
                shutil.copy2(path, partial)
        else:
            os.replace(path, target)
        moved.append(target)
    return moved


class CheckpointError(BundleError):
    """A checkpoint file is missing, unreadable, refused or does not fit what it is loaded into."""


def one_line(error: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, shortened to ``limit`` characters."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def save_checkpoint(checkpoint: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write ``checkpoint`` with ``torch.save`` so that ``path`` is never left half-written.

    Args:
        checkpoint: what to save, e.g. ``{"model": net.state_dict(), "optimizer": opt.state_dict()}``.
        path: the file; its folder is created when missing.
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as partial, partial.open("wb") as file:  # closed, its space freed, even on an error
        torch.save(checkpoint, file)


def load_checkpoint(path: str | os.PathLike, map_location: Any = None) -> Any:
    """Read a checkpoint with ``torch.load(..., weights_only=True)``.

    Args:
        path: the file.
        map_location: where tensors go, as for ``torch.load`` (e.g. ``"cpu"``).

    Returns:
        The checkpoint: tensors, numbers, strings and dicts, lists and tuples of them.

    Raises:
        CheckpointError: if the file is missing or unreadable (truncated, corrupt, not a checkpoint), or holds
            code or Python objects other than tensors and plain containers: such a file is refused, never run.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        refused = re.search(r"GLOBAL (\S+)", str(err)) if isinstance(err, pickle.UnpicklingError) else None
        if refused:
            raise CheckpointError(
                f"{path} is refused for safety: it holds code or Python objects ({refused.group(1)}) that are not "
                "weights, and loading them could run that code. Use checkpoints written by the bundles or by "
                "torch.save of a state_dict."
            ) from None
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupt): {one_line(err, limit=200)}"
        ) from None
