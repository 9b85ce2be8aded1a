"""What the integration tests read off a bundle command line's output."""

from __future__ import annotations

import subprocess


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The run's error line, after checking that it failed with status 1, one line and no traceback."""
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("unet-med: ")]
    assert len(lines) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]
