"""Atomic writes and weights-only checkpoint files."""

from __future__ import annotations

import errno
import os
import re
import stat
import time

import pytest
import torch

from unet_med.bundle.errors import DiskFullError
from unet_med.bundle.io import CheckpointError, atomic_write, load_checkpoint, move_aside, save_checkpoint


class Payload:
    """A class a checkpoint might pickle: loading it would run code of the file's choosing."""


class SystemCall:
    """Pickles as a call of ``os.system(command)``: what a malicious checkpoint holds."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


def test_pickled_objects_are_refused_with_the_file_named(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"model": torch.nn.Linear(2, 2).state_dict(), "extra": Payload()}, path)
    with pytest.raises(CheckpointError, match=re.escape(f"{path} is refused")) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert "test_io.Payload" in message and "refused for safety" in message and "not weights" in message
    assert "\n" not in message and "truncated" not in message and "weights_only" not in message


def test_a_pickled_call_is_refused_and_never_run(tmp_path):
    """A payload that calls os.system when unpickled: refused as unsafe, not called "truncated"."""
    marker = tmp_path / "ran"
    path = tmp_path / "model.pt"
    torch.save({"model": SystemCall(f"touch {marker}")}, path)
    with pytest.raises(CheckpointError, match=re.escape(f"{path} is refused for safety")) as error:
        load_checkpoint(path)
    assert "os.system" in str(error.value) or "posix.system" in str(error.value)
    assert "truncated" not in str(error.value) and "weights_only" not in str(error.value)
    assert not marker.exists()


def test_missing_truncated_and_foreign_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match=f"no checkpoint file at {tmp_path / 'none.pt'}"):
        load_checkpoint(tmp_path / "none.pt")
    good = tmp_path / "good.pt"
    save_checkpoint({"weight": torch.ones(1000)}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:3000])
    foreign = tmp_path / "notes.pt"
    foreign.write_text("not a checkpoint")
    for path in (truncated, foreign):
        with pytest.raises(CheckpointError, match=rf"{path} is not a readable PyTorch checkpoint \(truncated"):
            load_checkpoint(path)
    assert torch.equal(load_checkpoint(good)["weight"], torch.ones(1000))


def test_failed_write_leaves_nothing_and_success_keeps_usual_permissions(tmp_path):
    target = tmp_path / "state.pt"
    with pytest.raises(RuntimeError, match="interrupted"), atomic_write(target) as partial:
        partial.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with atomic_write(target) as partial:
        torch.save({"step": 3}, partial)
    assert list(tmp_path.iterdir()) == [target]
    assert torch.load(target, weights_only=True) == {"step": 3}
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def test_move_aside_keeps_files_under_previous_and_the_time_of_the_last_write(tmp_path):
    log, model = tmp_path / "runs" / "training_log.csv", tmp_path / "models" / "model.pt"
    for path, text in ((log, "epoch\n1\n"), (model, "weights")):
        path.parent.mkdir()
        path.write_text(text)
        os.utime(path, (1_700_000_000, 1_700_000_000))
    moved = move_aside([log, model])
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(1_700_000_000))
    assert moved == [
        tmp_path / "runs" / "previous" / stamp / "training_log.csv",
        tmp_path / "models" / "previous" / stamp / "model.pt",
    ]
    assert moved[0].read_text() == "epoch\n1\n" and not log.exists() and not model.exists()


def test_a_full_device_is_named_with_the_file_and_leaves_it_as_it_was(tmp_path):
    target = tmp_path / "model.pt"
    target.write_bytes(b"the previous model")
    with pytest.raises(DiskFullError) as error, atomic_write(target) as partial:
        partial.write_bytes(b"x" * 2048)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what the next write of a full device raises
    assert str(error.value).startswith(f"no space left on the device for {target}: it needs more than 2.0 kB, and ")
    assert f" is free in {tmp_path}; free some space" in str(error.value)
    assert target.read_bytes() == b"the previous model" and os.listdir(tmp_path) == ["model.pt"]


def test_other_write_errors_stay_as_they_are(tmp_path):
    with pytest.raises(OSError, match="Permission denied") as error, atomic_write(tmp_path / "x") as partial:
        partial.write_bytes(b"x")
        raise OSError(errno.EACCES, os.strerror(errno.EACCES))
    assert not isinstance(error.value, DiskFullError) and not os.listdir(tmp_path)
