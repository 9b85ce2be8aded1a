"""What a run shows while it runs: a progress bar, or plain lines, and its log file.

:class:`EpochProgress` draws one tqdm bar per training epoch (iterations, running mean loss, seconds per
iteration, time left) or, in ``lines`` mode, logs one line per iteration as MONAI's ``StatsHandler`` does.
:class:`ScanProgress` does the same for the scans of an inference or evaluation run: one bar over all of them
(the case last done, time left), or one line per scan.
:class:`RunLog` copies every log record of the run into a file and keeps the console to what a person reads:
the engines' routine messages and the per-iteration lines (when a bar shows them) go to the file only.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, TextIO

__all__ = ["ITERATION_LOGGER", "PROGRESS_MODES", "EpochProgress", "RunLog", "ScanProgress", "progress_mode"]

PROGRESS_MODES = ("auto", "bar", "lines")
ITERATION_LOGGER = "unet_med.bundle.iterations"
"""The logger of the per-iteration lines."""
FILE_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"


def progress_mode(progress: str, stream: TextIO | None = None) -> str:
    """Resolve the ``progress`` option: ``bar``, ``lines``, or ``auto`` (a bar on a terminal, else lines).

    Args:
        progress: one of :data:`PROGRESS_MODES`.
        stream: the console stream checked by ``auto``; ``sys.stdout`` by default.

    Raises:
        ValueError: for any other value.
    """
    if progress not in PROGRESS_MODES:
        raise ValueError(f"--progress is {progress!r}: expected one of {', '.join(PROGRESS_MODES)}.")
    if progress != "auto":
        return progress
    stream = sys.stdout if stream is None else stream
    return "bar" if getattr(stream, "isatty", lambda: False)() else "lines"


def _bar(total: int, desc: str, unit: str, stream: TextIO | None) -> Any:
    """A tqdm bar of ``total`` steps on ``stream`` (``sys.stdout``, the console log's stream, by default)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=True, file=stream or sys.stdout, dynamic_ncols=True)


class _Progress:
    """A tqdm bar, or log lines: what the epoch and the scan progress share.

    Args:
        mode: ``bar`` or ``lines`` (see :func:`progress_mode`).
        stream: where the bar is drawn; ``sys.stdout`` (the console log's stream) by default.
    """

    def __init__(self, mode: str, stream: TextIO | None = None) -> None:
        self.mode = mode
        self.stream = stream
        self.logger = logging.getLogger(ITERATION_LOGGER)
        self._bar: Any = None

    def close(self) -> None:
        """Finish the current bar, if one is drawn."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class EpochProgress(_Progress):
    """A tqdm bar per epoch, or one log line per iteration.

    Args:
        mode: ``bar`` or ``lines`` (see :func:`progress_mode`).
        stream: where the bar is drawn; ``sys.stdout`` (the console log's stream) by default.
    """

    def __init__(self, mode: str, stream: TextIO | None = None) -> None:
        super().__init__(mode, stream)
        self._losses: list[float] = []

    def start(self, epoch: int, max_epochs: int, iterations: int) -> None:
        """Begin the bar of ``epoch`` (1-based) of ``max_epochs``, which has ``iterations`` iterations."""
        self.close()
        self._losses = []
        self._epoch = (epoch, max_epochs, iterations)
        if self.mode == "bar":
            self._bar = _bar(iterations, f"epoch {epoch}/{max_epochs}", "it", self.stream)

    def update(self, iteration: int, loss: float) -> None:
        """Record iteration ``iteration`` (1-based, within the epoch) and its loss."""
        self._losses.append(loss)
        epoch, max_epochs, iterations = self._epoch
        self.logger.info(f"Epoch: {epoch}/{max_epochs}, Iter: {iteration}/{iterations} -- train_loss: {loss:.4f}")
        if self._bar is not None:
            self._bar.set_postfix_str(f"loss {sum(self._losses) / len(self._losses):.4f}", refresh=False)
            self._bar.update(1)


class ScanProgress(_Progress):
    """A tqdm bar over the scans of an inference or evaluation run, or one log line per scan.

    Args:
        mode: ``bar`` or ``lines`` (see :func:`progress_mode`).
        stream: where the bar is drawn; ``sys.stdout`` (the console log's stream) by default.
    """

    def __init__(self, mode: str, stream: TextIO | None = None) -> None:
        super().__init__(mode, stream)
        self.done = 0
        self.total = 0

    def start(self, scans: int, desc: str) -> None:
        """Begin a run of ``scans`` scans, the bar labelled ``desc`` (``segmenting``, ``evaluating``)."""
        self.close()
        self.done, self.total = 0, scans
        if self.mode == "bar":
            self._bar = _bar(scans, desc, "scan", self.stream)

    def update(self, case: str, seconds: float) -> None:
        """Record that the scan ``case`` is done, after ``seconds``."""
        self.done += 1
        self.logger.info(f"scan {self.done}/{self.total}  {case}  {seconds:.1f} s")
        if self._bar is not None:
            self._bar.set_postfix_str(case, refresh=False)
            self._bar.update(1)


class _QuietConsole(logging.Filter):
    """Passes warnings and errors, and the INFO lines a person reads; not the engines' routine messages.

    Ctrl-C makes every running ignite engine log ``... terminating due to exception: `` with the empty text of
    the ``KeyboardInterrupt``: those errors say nothing and stay off the console too.
    """

    def __init__(self, hide_iterations: bool) -> None:
        super().__init__()
        self.hidden = ("ignite.", ITERATION_LOGGER) if hide_iterations else ("ignite.",)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("ignite.") and record.getMessage().endswith("due to exception: "):
            return False
        return record.levelno >= logging.WARNING or not record.name.startswith(self.hidden)


class RunLog:
    """Copies every log record into ``path`` (if given) and quiets the console handlers of the root logger.

    The console (the root logger's stream handlers, as the bundles' ``logging.conf`` sets them up) keeps
    warnings, errors and the report's lines; the ignite engines' routine INFO messages ("Epoch[1] Complete",
    "Saved the training state ...") and, with ``hide_iterations``, the per-iteration lines are written to the
    file alone (dropped without a file). :meth:`close` restores the console and closes the file.

    Args:
        path: the log file, appended to, so that a resumed run continues it; ``None`` for none.
        hide_iterations: keep the per-iteration lines off the console (a progress bar shows them).
    """

    def __init__(self, path: str | Path | None, hide_iterations: bool) -> None:
        self.path = None if path is None else Path(path)
        root = logging.getLogger()
        self._file: logging.Handler | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = logging.FileHandler(self.path, encoding="utf-8")
            self._file.setFormatter(logging.Formatter(FILE_FORMAT))
            self._file.setLevel(logging.INFO)
            root.addHandler(self._file)
        self._filter = _QuietConsole(hide_iterations)
        self._consoles = [
            handler for handler in root.handlers
            if type(handler) is logging.StreamHandler and handler.stream in (sys.stdout, sys.stderr)
        ]
        for handler in self._consoles:
            handler.addFilter(self._filter)
        self._level = root.level
        if root.getEffectiveLevel() > logging.INFO:
            root.setLevel(logging.INFO)
        logging.getLogger(ITERATION_LOGGER).setLevel(logging.INFO)

    def close(self) -> None:
        """Stop copying records to the file and give the console back its usual messages."""
        root = logging.getLogger()
        root.setLevel(self._level)
        if self._file is not None:
            root.removeHandler(self._file)
            self._file.close()
        for handler in self._consoles:
            handler.removeFilter(self._filter)
