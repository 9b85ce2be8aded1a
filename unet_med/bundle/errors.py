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

import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from types import TracebackType

__all__ = ["DEBUG_ENV", "BundleError", "bundle_error_in", "install_excepthook", "report_lines"]

DEBUG_ENV = "UNET_MED_DEBUG"
PREFIX = "unet-med: "


class BundleError(ValueError):
    """A mistake in what the user gave a bundle; the message names the file or option and the problem."""


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error``, then its causes: each explicit ``__cause__``, else the implicit ``__context__``."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def bundle_error_in(error: BaseException) -> BundleError | None:
    """The first :class:`BundleError` in ``error``'s chain of causes, or ``None``."""
    return next((link for link in _chain(error) if isinstance(link, BundleError)), None)


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

    Also filters the terminal's logging handlers (see the module's description). Installing it twice keeps one
    hook (the configs of a merged run may each call it).

    Args:
        debug: also print the full traceback (``--debug true``); the environment variable ``UNET_MED_DEBUG=1``
            does the same.
    """
    show_traceback = _debug_requested(debug)
    previous: Callable = getattr(sys.excepthook, "previous_hook", sys.excepthook)

    def hook(kind: type[BaseException], error: BaseException, trace: TracebackType | None) -> None:
        if isinstance(error, KeyboardInterrupt) and not show_traceback:
            return
        ours = bundle_error_in(error)
        if ours is None:
            previous(kind, error, trace)
            return
        if show_traceback:
            traceback.print_exception(kind, error, trace, file=sys.stderr)
        print("\n".join(report_lines(ours)), file=sys.stderr, flush=True)

    hook.previous_hook = previous  # type: ignore[attr-defined]
    sys.excepthook = hook
    if not show_traceback:
        for handler in _terminal_handlers():
            if not any(isinstance(f, _BundleErrorRecords) for f in handler.filters):
                handler.addFilter(_BundleErrorRecords())
        logging.setLoggerClass(_QuietLogger)
