"""The output-folder lock: refused while its owner runs, taken over from a killed one, cleaned up after."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from unet_med.bundle import lock
from unet_med.bundle.errors import BundleError
from unet_med.bundle.io import PARTIAL_PREFIX


@pytest.fixture(autouse=True)
def release_after():
    yield
    lock.release()


def write_lock(folder, pid, host=None):
    folder.mkdir(parents=True, exist_ok=True)
    owner = {"pid": pid, "host": host or socket.gethostname(), "started": "2026-01-01 00:00:00", "command": "x"}
    (folder / lock.LOCK_NAME).write_text(json.dumps(owner))


def test_a_running_owner_keeps_its_folder(tmp_path):
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as other:
        write_lock(tmp_path / "models", other.pid)
        before = (tmp_path / "models" / lock.LOCK_NAME).read_bytes()
        with pytest.raises(BundleError, match=rf"another training \(pid {other.pid} on .*wait for it to end") as error:
            lock.lock_folders([tmp_path / "runs", tmp_path / "models"])
        other.kill()
    assert "\n" not in str(error.value)
    assert (tmp_path / "models" / lock.LOCK_NAME).read_bytes() == before
    assert not (tmp_path / "runs").exists(), "the lock taken before the refusal is released"


def test_a_killed_owner_is_taken_over_and_its_partial_files_deleted(tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    folder = tmp_path / "models"
    write_lock(folder, int(dead.stdout))
    (folder / f"{PARTIAL_PREFIX}0123-model.pt").write_bytes(b"half")
    (folder / "model.pt").write_bytes(b"kept")
    lock.lock_folders([folder])
    assert json.loads((folder / lock.LOCK_NAME).read_text())["pid"] == os.getpid()
    assert f"taking over the lock of pid {int(dead.stdout)}" in caplog.text
    assert not list(folder.glob(f"{PARTIAL_PREFIX}*")) and (folder / "model.pt").read_bytes() == b"kept"
    lock.release()
    assert not (folder / lock.LOCK_NAME).exists() and (folder / "model.pt").exists()


def test_another_hosts_lock_is_refused_with_the_file_to_delete(tmp_path):
    write_lock(tmp_path, 1, host="elsewhere")
    with pytest.raises(BundleError, match=f"if it is over, delete {tmp_path / lock.LOCK_NAME}"):
        lock.lock_folders([tmp_path])


def test_a_folder_made_for_the_lock_is_removed_if_nothing_was_written(tmp_path):
    lock.lock_folders([tmp_path / "a", tmp_path / "b", tmp_path / "a"])
    (tmp_path / "b" / "model.pt").write_bytes(b"")
    lock.lock_folders([tmp_path / "a"])  # again in the same process: its own lock
    lock.release()
    assert not (tmp_path / "a").exists() and (tmp_path / "b" / "model.pt").exists()
    assert not (tmp_path / "b" / lock.LOCK_NAME).exists()
