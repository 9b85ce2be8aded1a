"""Atomic file writes: a file is written beside its target under a hidden name, then renamed onto it.

A rename within one folder is atomic, so a reader sees either the previous file or the complete new one, never
a half-written one, even when the writing process is killed. A killed write leaves its hidden partial file
(``.partial-<random>-<name>``) behind, which is safe to delete.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from monai.data import NibabelWriter

__all__ = ["AtomicNibabelWriter", "atomic_write"]

PARTIAL_PREFIX = ".partial-"
logger = logging.getLogger(__name__)


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
    """
    path = Path(path)
    partial = path.with_name(f"{PARTIAL_PREFIX}{secrets.token_hex(6)}-{path.name}")
    os.close(os.open(partial, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        yield partial
        with partial.open("rb+") as file:
            os.fsync(file.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


class AtomicNibabelWriter(NibabelWriter):
    """MONAI's ``NibabelWriter`` that writes each NIfTI file atomically (see :func:`atomic_write`).

    ``nibabel.save`` writes in place, so an inference run stopped during a write would leave a truncated
    ``.nii.gz`` that looks like a finished prediction. Give it to ``SaveImage``/``SaveImaged`` as
    ``writer: unet_med.atomic.AtomicNibabelWriter``.
    """

    def write(self, filename: str | os.PathLike, verbose: bool = False, **obj_kwargs) -> None:
        """Write the NIfTI file ``filename`` through a temporary file beside it.

        Args:
            filename: the target file, e.g. ``outputs/case_seg.nii.gz``.
            verbose: log the progress.
            obj_kwargs: passed to ``NibabelWriter.write``.
        """
        if verbose:
            logger.info(f"writing: {filename}")
        with atomic_write(filename) as partial:
            super().write(partial, verbose=False, **obj_kwargs)
