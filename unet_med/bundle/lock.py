"""One run at a time per output folder: a lock file with its owner, released when the process exits.

Two trainings writing to the same ``models/`` would overwrite each other's best model and training state. The
training configs call :func:`lock_folders` on their output folders before they build anything (inference on its
``output_dir``, for the same reason): it creates
``<folder>/.unet-med.lock`` holding the owner's pid, host, start time and command line, with ``O_EXCL`` (so of
two processes racing for it, one wins), and deletes it when the process exits. A second training finds the
lock and is refused with one line naming the owner. A lock left by a killed process (``SIGKILL`` runs no exit
code) names a pid that no longer runs on this host: it is reported and taken over. A lock of another host
cannot be checked from here and is refused; its message says to delete the file once that run is over. A folder
made for the lock is removed again at exit if nothing was written to it (a run refused for bad data leaves no
trace).

Holding the lock, the owner also deletes the ``.partial-*`` files that killed writes left in its folders
(see :func:`unet_med.bundle.io.atomic_write`): no other process can be writing them.

In a multi-process (torchrun) training, rank 0 takes the lock for all ranks.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from unet_med.bundle.errors import BundleError
from unet_med.bundle.io import PARTIAL_PREFIX

__all__ = ["LOCK_NAME", "lock_folders", "release"]

LOCK_NAME = ".unet-med.lock"
logger = logging.getLogger(__name__)
_held: list[tuple[Path, bool]] = []  # the locks held, each with whether its folder was made for it


def _owner() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(sys.argv),
    }


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(lock: Path) -> dict | None:
    """The owner recorded in ``lock``, or ``None`` when it vanished or is unreadable (a write cut short)."""
    try:
        owner = json.loads(lock.read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None


def _create(lock: Path, owner: dict) -> bool:
    """Create ``lock`` for ``owner`` unless it exists."""
    try:
        descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "w") as file:
        json.dump(owner, file)
    return True


def _acquire(folder: Path, owner: dict, run: str, options: str) -> None:
    lock = folder / LOCK_NAME
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    while not _create(lock, owner):
        holder = _read(lock)
        if holder is None:  # deleted meanwhile, or a half-written lock of a killed process
            if lock.exists() and time.time() - lock.stat().st_mtime > 5:
                lock.unlink(missing_ok=True)
            time.sleep(0.1)
            continue
        same_host = holder.get("host") == owner["host"]
        if same_host and holder["pid"] == owner["pid"]:
            break  # this process's own lock, from an earlier run in it
        if same_host and not _running(holder["pid"]):
            logger.warning(
                f"{lock}: taking over the lock of pid {holder['pid']} (started {holder.get('started')}), "
                "which is no longer running (killed?)."
            )
            lock.unlink(missing_ok=True)
            continue
        where = f"pid {holder['pid']} on {holder.get('host')}"
        advice = "" if same_host else f"; if it is over, delete {lock}"
        raise BundleError(
            f"{lock}: another {run} ({where}, started {holder.get('started')}) writes to {folder}; wait for it "
            f"to end or give this one other {options}{advice}."
        )
    if all(held != lock for held, _ in _held):
        _held.append((lock, made))


def _remove_partials(folder: Path) -> None:
    for partial in folder.glob(f"{PARTIAL_PREFIX}*"):
        partial.unlink(missing_ok=True)
        logger.info(f"Deleted {partial}, left by a write that was cut short.")


def lock_folders(
    folders: Sequence[str | os.PathLike], run: str = "training", options: str = "--ckpt_dir/--output_dir"
) -> None:
    """Lock ``folders`` for this process (created when missing) until it exits; clean up cut-short writes.

    Args:
        folders: the run's output folders, e.g. ``[ckpt_dir, output_dir]`` (duplicates are locked once).
        run: what the run is, for the refusal of a second one ("another training ...").
        options: the options that give a run other folders, for the same message.

    Raises:
        BundleError: if another running process holds the lock of one of them; the locks taken before are
            released.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return
    owner = _owner()
    unique = list(dict.fromkeys(Path(folder).resolve() for folder in folders))
    try:
        for folder in unique:
            _acquire(folder, owner, run, options)
    except BundleError:
        release()
        raise
    for folder in unique:
        _remove_partials(folder)


def release() -> None:
    """Delete the locks this process holds, and the folders made for them that stayed empty (a run refused)."""
    while _held:
        lock, made = _held.pop()
        holder = _read(lock)
        if holder is not None and holder["pid"] == os.getpid():
            lock.unlink(missing_ok=True)
            if made and not any(lock.parent.iterdir()):
                lock.parent.rmdir()


atexit.register(release)
