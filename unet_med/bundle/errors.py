"""User errors of the bundles, and how they reach the terminal: one line, exit status 1.

Every mistake the bundles detect in what the user gave them (data set, option, checkpoint, output folder) raises
a :class:`BundleError` (a ``ValueError``) whose message names the file or the option and says what is wrong.

The bundles run inside MONAI's ``python -m monai.bundle run``: its ``ConfigWorkflow`` evaluates each config item
and wraps any exception in a ``RuntimeError("Failed to evaluate ...")`` (raised ``from`` the original), and
``fire`` lets it propagate, so Python's default hook prints every nested traceback. The first item of each
bundle's ``initialize`` calls :func:`install_excepthook`, which replaces ``sys.excepthook``: for an uncaught
exception whose chain of causes (``__cause__``, else ``__context__``) holds a :class:`BundleError`, it prints
``unet-med: <message>`` (one line per line of the message: several broken files give one line each) to stderr;
Python then exits with status 1, as for any uncaught exception. Ctrl-C (a ``KeyboardInterrupt``) prints
nothing more: the training report has printed its summary, and Python ends the process by SIGINT, exit status 130
in a shell. Any other exception goes to the hook that was installed before, so errors that are not ours keep
MONAI's and Python's full report. With ``--debug true`` or the environment variable ``UNET_MED_DEBUG=1`` the full
traceback follows the line (or is the report of a Ctrl-C).

A full disk is reported the same way: an ``OSError`` of a full device or quota (``ENOSPC``, ``EDQUOT``) anywhere
in the chain is turned into a :class:`DiskFullError` by :func:`bundle_error_in`, and the line says so, with the
file and the space left where the error names a file. The bundles' own writes go through
:func:`unet_med.bundle.io.atomic_write`, which raises a :class:`DiskFullError` naming its file itself.

An error raised while an engine runs is also logged on its way out (ignite logs "Engine run is terminating due
to exception", MONAI's ``StatsHandler`` logs the traceback). The same call adds a filter that drops error records
logged while a :class:`BundleError` is being handled, so that the terminal shows the one line only (all of it
with ``--debug true``): on the logging handlers that write to the terminal, and, since the engines' handlers make
their loggers only when the config builds them, on every logger made afterwards (through the logger class).

The hook changes nothing for code that calls the bundles in-process (MONAI Label runs them with
``monai.bundle.run`` in its server and catches their exceptions itself): a hook only sees exceptions that end a
process.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

__all__ = [
    "DEBUG_ENV",
    "BundleError",
    "DiskFullError",
    "bundle_error_in",
    "disk_full_error",
    "install_excepthook",
    "is_disk_full",
    "report_lines",
]

DEBUG_ENV = "UNET_MED_DEBUG"
PREFIX = "unet-med: "
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class BundleError(ValueError):
    """A mistake in what the user gave a bundle; the message names the file or option and the problem."""


class DiskFullError(BundleError):
    """A write failed for want of space on its device (or of quota); the message names the file and the space."""


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` is an ``OSError`` of a full device or an exhausted quota."""
    return isinstance(error, OSError) and error.errno in DISK_FULL


def _size(size: int) -> str:
    """``512 bytes``, ``1.2 MB``, ``3.4 GB``."""
    value, unit = float(size), "bytes"
    for larger in ("kB", "MB", "GB", "TB"):
        if value < 1000:
            break
        value, unit = value / 1000, larger
    return f"{size} bytes" if unit == "bytes" else f"{value:.1f} {unit}"


def disk_full_error(path: str | os.PathLike | None, needed: int | None = None) -> DiskFullError:
    """The error of a write of ``path`` that found its device full.

    Args:
        path: the file being written, or ``None`` when the failed write did not say.
        needed: a lower bound on the bytes the file needs (what had been written when the device filled up).

    Returns:
        A :class:`DiskFullError` such as ``no space left on the device for runs/model.pt: it needs more than
        1.9 MB, and 1.9 MB is free in runs; free some space (or write elsewhere) and run again.``
    """
    advice = "free some space (or write elsewhere) and run again."
    if path is None:
        return DiskFullError(f"no space left on the device (a write failed); {advice}")
    folder = next((parent for parent in Path(path).parents if parent.is_dir()), Path.cwd())
    free = f"{_size(shutil.disk_usage(folder).free)} is free in {folder}"
    needs = f"it needs more than {_size(needed)}, and {free}" if needed else free
    return DiskFullError(f"no space left on the device for {path}: {needs}; {advice}")


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error``, then its causes: each explicit ``__cause__``, else the implicit ``__context__``."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def bundle_error_in(error: BaseException) -> BundleError | None:
    """The first :class:`BundleError` in ``error``'s chain of causes (a full disk is one), or ``None``."""
    for link in _chain(error):
        if isinstance(link, BundleError):
            return link
        if is_disk_full(link):
            return disk_full_error(link.filename)
    return None


def report_lines(error: BundleError) -> list[str]:
    """What the terminal shows for ``error``: ``unet-med: <line>`` for each non-empty line of its message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return [PREFIX + line for line in lines or [type(error).__name__]]


def _debug_requested(debug: bool | str) -> bool:
    from unet_med.bundle.flags import as_bool

    return as_bool(debug, "debug") or os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes")


class _BundleErrorRecords(logging.Filter):
    """Drops error records logged while a :class:`BundleError` is raised or handled (the hook reports it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        error = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
        return error is None or bundle_error_in(error) is None


def _terminal_handlers() -> list[logging.Handler]:
    """The logging handlers, of the root logger and of every logger made so far, that write to the terminal."""
    loggers = [logging.getLogger(), *(logger for logger in logging.root.manager.loggerDict.values())]
    handlers = [handler for logger in loggers if isinstance(logger, logging.Logger) for handler in logger.handlers]
    terminal = (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)
    return [h for h in dict.fromkeys(handlers) if isinstance(h, logging.StreamHandler) and h.stream in terminal]


class _QuietLogger(logging.getLoggerClass()):  # type: ignore[misc]
    """A logger that drops error records of a :class:`BundleError` (see :class:`_BundleErrorRecords`)."""

    def __init__(self, name: str, level: int = logging.NOTSET) -> None:
        super().__init__(name, level)
        self.addFilter(_BundleErrorRecords())


def install_excepthook(debug: bool | str = False) -> None:
    """Report uncaught :class:`BundleError` s as one line each; leave every other exception to the previous hook.

    Also filters the terminal's logging handlers (see the module's description), and reports a thread that dies
    of such an error (TensorBoard's event writer on a full disk) the same way; a line already printed is not
    printed again when the main thread ends with the same error. Installing it twice keeps one hook (the configs
    of a merged run may each call it).

    Args:
        debug: also print the full traceback (``--debug true``); the environment variable ``UNET_MED_DEBUG=1``
            does the same.
    """
    show_traceback = _debug_requested(debug)
    previous: Callable = getattr(sys.excepthook, "previous_hook", sys.excepthook)
    previous_thread: Callable = getattr(threading.excepthook, "previous_hook", threading.excepthook)
    printed: set[str] = set()

    def report(kind: type[BaseException], error: BaseException, trace: TracebackType | None) -> bool:
        """Print ``error``'s line(s) if it is ours (once); whether it was."""
        ours = bundle_error_in(error)
        if ours is None:
            return False
        if show_traceback:
            traceback.print_exception(kind, error, trace, file=sys.stderr)
        text = "\n".join(report_lines(ours))
        if text not in printed:
            printed.add(text)
            print(text, file=sys.stderr, flush=True)
        return True

    def hook(kind: type[BaseException], error: BaseException, trace: TracebackType | None) -> None:
        if isinstance(error, KeyboardInterrupt) and not show_traceback:
            return
        if not report(kind, error, trace):
            previous(kind, error, trace)

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is None or not report(args.exc_type, args.exc_value, args.exc_traceback):
            previous_thread(args)

    hook.previous_hook = previous  # type: ignore[attr-defined]
    thread_hook.previous_hook = previous_thread  # type: ignore[attr-defined]
    sys.excepthook = hook
    threading.excepthook = thread_hook
    if not show_traceback:
        for handler in _terminal_handlers():
            if not any(isinstance(f, _BundleErrorRecords) for f in handler.filters):
                handler.addFilter(_BundleErrorRecords())
        logging.setLoggerClass(_QuietLogger)
