"""Files written atomically: a process killed in the middle of a write leaves the previous file whole."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from unet_med.bundle.io import PARTIAL_PREFIX

pytestmark = pytest.mark.faults

# Run in a child process: kill_at(name, nth) makes the process SIGKILL itself when it enters the nth call of a
# function called `name` (a Python function, or a C one such as torch's zip writer), i.e. in the middle of a write.
KILL_AT = """
import os, signal, sys

def kill_at(name, nth=1):
    calls = 0
    def profile(frame, event, arg):
        nonlocal calls
        called = arg.__name__ if event == "c_call" else frame.f_code.co_name if event == "call" else None
        if called == name:
            calls += 1
            if calls == nth:
                os.kill(os.getpid(), signal.SIGKILL)
    sys.setprofile(profile)
"""


def run_until_killed(script: str, folder: Path, env: dict[str, str]) -> None:
    """Run ``script`` (which calls ``kill_at``) in a child process; check that the kill happened mid-write."""
    code = KILL_AT + textwrap.dedent(script)
    result = subprocess.run([sys.executable, "-c", code], cwd=folder, env=env, capture_output=True, text=True)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    partials = list(folder.glob(f"{PARTIAL_PREFIX}*"))
    assert len(partials) == 1, "the kill did not interrupt a write"


def test_killed_best_model_save_keeps_previous_model(tmp_path, child_env):
    """MONAI's CheckpointSaver deletes model.pt, then writes the new one in place; ours replaces it whole."""
    run_until_killed(
        """
        import torch
        from ignite.engine import Engine
        from unet_med.bundle.handlers import AtomicCheckpointSaver

        torch.manual_seed(0)
        net, engine = torch.nn.Linear(4, 3), Engine(lambda engine, batch: None)
        saver = AtomicCheckpointSaver(".", {"model": net}, save_key_metric=True, key_metric_name="dice",
                                      key_metric_filename="model.pt")
        engine.state.metrics = {"dice": 0.5}
        saver.metrics_completed(engine)
        with torch.no_grad():
            net.weight.fill_(7.0)
        engine.state.metrics = {"dice": 0.9}
        kill_at("write_record", nth=3)  # the pickle is written, the tensors are not
        saver.metrics_completed(engine)
        """,
        tmp_path,
        child_env,
    )
    torch.manual_seed(0)
    first = torch.nn.Linear(4, 3).state_dict()
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert saved.keys() == first.keys()
    assert all(torch.equal(saved[key], first[key]) for key in first)


def test_killed_nifti_write_keeps_previous_file(tmp_path, child_env):
    run_until_killed(
        """
        import numpy as np
        from unet_med.bundle.io import AtomicNibabelWriter

        def write(value):
            writer = AtomicNibabelWriter(output_dtype=np.uint8)
            writer.set_data_array(np.full((1, 6, 7, 8), value), channel_dim=0)
            writer.set_metadata({"affine": np.eye(4)}, resample=False)
            writer.write("case_seg.nii.gz")

        write(1)
        kill_at("_write_data")  # the header is written, the voxels are not
        write(2)
        """,
        tmp_path,
        child_env,
    )
    kept = nib.load(tmp_path / "case_seg.nii.gz")
    assert kept.shape == (6, 7, 8) and (np.asarray(kept.dataobj) == 1).all()
