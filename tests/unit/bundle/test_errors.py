"""One-line errors: what the hook prints for a user mistake inside MONAI's wrapping, and what it leaves alone."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap

from unet_med.bundle.errors import BundleError, DiskFullError, bundle_error_in, report_lines

# A user mistake raised where MONAI's ConfigWorkflow would raise it: inside an item's evaluation, re-raised as
# RuntimeError("Failed to evaluate ...") from it, while an engine logs it on the way out.
SCRIPT = """
import logging, sys
logging.basicConfig(stream=sys.stdout, level=logging.INFO)
from unet_med.bundle.errors import BundleError, install_excepthook
install_excepthook({debug!r})
error = {error}
try:
    try:
        raise error
    except Exception as err:
        logging.getLogger("ignite.engine").error(f"Engine run is terminating due to exception: {{err}}")
        logging.getLogger("later").exception(f"Exception: {{err}}")
        raise
except Exception as err:
    raise RuntimeError("Failed to evaluate ConfigExpression: $@train#trainer.run()") from err
"""


def run(error: str, debug: bool = False, env: dict | None = None) -> subprocess.CompletedProcess:
    code = textwrap.dedent(SCRIPT.format(error=error, debug=debug))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_a_bundle_error_is_one_line_with_exit_status_1(child_env):
    result = run('BundleError("--epochs 0: expected a whole number of at least 1.")', env=child_env)
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["unet-med: --epochs 0: expected a whole number of at least 1."]
    assert "Traceback" not in result.stdout + result.stderr and "terminating" not in result.stdout


def test_ctrl_c_ends_by_sigint_without_a_traceback(child_env):
    result = run("KeyboardInterrupt()", env=child_env)
    assert result.returncode == -signal.SIGINT  # 130 in a shell
    assert result.stderr == ""
    debug = run("KeyboardInterrupt()", debug=True, env=child_env)
    assert debug.returncode == -signal.SIGINT and "Traceback" in debug.stderr


def test_debug_shows_the_traceback_after_the_line(child_env):
    result = run('BundleError("x.nii.gz: truncated")', debug=True, env=child_env)
    assert result.returncode == 1 and "Traceback" in result.stderr
    assert result.stderr.splitlines()[-1] == "unet-med: x.nii.gz: truncated"
    result = run('BundleError("x.nii.gz: truncated")', env={**child_env, "UNET_MED_DEBUG": "1"})
    assert "Traceback" in result.stderr and result.stderr.splitlines()[-1] == "unet-med: x.nii.gz: truncated"


def test_other_errors_keep_the_full_report(child_env):
    result = run('KeyError("not ours")', env=child_env)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "RuntimeError: Failed to evaluate" in result.stderr
    assert "unet-med:" not in result.stderr


def test_the_error_is_found_in_the_chain_of_causes():
    ours = BundleError("a: b\nc: d")
    try:
        try:
            raise ours
        except BundleError as err:
            raise RuntimeError("Failed to evaluate") from err
    except RuntimeError as wrapped:
        assert bundle_error_in(wrapped) is ours
    assert bundle_error_in(RuntimeError("other")) is None
    assert report_lines(ours) == ["unet-med: a: b", "unet-med: c: d"]


def test_a_full_device_anywhere_in_the_chain_is_a_bundle_error(tmp_path):
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "cache" / "x.pt"))
    try:
        try:
            raise full
        except OSError as err:
            raise RuntimeError("Failed to evaluate ...") from err
    except RuntimeError as wrapped:
        found = bundle_error_in(wrapped)
    assert isinstance(found, DiskFullError)
    assert str(found).startswith(f"no space left on the device for {tmp_path / 'cache' / 'x.pt'}: ")
    assert f" is free in {tmp_path};" in str(found)
    unnamed = bundle_error_in(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert str(unnamed) == ("no space left on the device (a write failed); free some space (or write elsewhere) and "
                            "run again.")
    assert bundle_error_in(OSError(errno.EACCES, os.strerror(errno.EACCES))) is None


def test_a_thread_dying_of_a_full_disk_and_the_run_it_stops_give_one_line(child_env):
    code = textwrap.dedent("""
        import errno, os, threading
        from unet_med.bundle.errors import install_excepthook
        install_excepthook(False)
        full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        def write():  # a background writer, as TensorBoard's, whose error the main thread raises again
            raise full
        thread = threading.Thread(target=write)
        thread.start()
        thread.join()
        raise RuntimeError("Failed to evaluate ...") from full
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env, timeout=120)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "unet-med: no space left on the device (a write failed); free some space (or write elsewhere) and run again."
    ]
