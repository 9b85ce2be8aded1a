"""The options of the bundles: the training values checked, options that name nothing refused, all listed.

Values from ``python -m monai.bundle run ... --epochs 3`` arrive as ``fire`` parses them (``3`` an int, ``abc``
a string, ``[32,48,32]`` a list), and a wrong one would otherwise fail deep inside torch or ignite. Each check
raises a :class:`~unet_med.bundle.errors.BundleError` naming the option and what it takes.

MONAI's runner accepts any ``--key value`` and merges it into the config, so a misspelt option (``--epoch 3``)
would add an id nothing reads and the run would go on with the default. :func:`check_overrides`, the second item
of every config's ``initialize``, compares the config MONAI runs (its files, the command line's overrides and
MONAI's own additions merged) with the bundle's files and refuses each id they do not define, suggesting the
closest one. ``python -m unet_med.bundle.options configs/train.yaml`` lists the options with their comments.
"""

from __future__ import annotations

import argparse
import difflib
import math
import re
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS

from unet_med.bundle.errors import BundleError

__all__ = [
    "check_device",
    "check_overrides",
    "check_patch_size",
    "check_training_options",
    "non_negative_int",
    "option_lines",
    "positive_int",
    "positive_number",
    "unknown_ids",
]

# Ids MONAI adds itself: the metadata, and the settings of experiment tracking (``--tracking mlflow``).
MONAI_IDS = frozenset({"_meta_"} | {key for settings in DEFAULT_EXP_MGMT_SETTINGS.values()
                                    for key in settings.get("configs", {})})


def positive_int(value: Any, option: str) -> int:
    """``value`` as an int of at least 1, or a :class:`BundleError` naming ``--option``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BundleError(f"--{option} {value!r}: expected a whole number of at least 1.")
    return value


def non_negative_int(value: Any, option: str) -> int:
    """``value`` as an int of at least 0, or a :class:`BundleError` naming ``--option``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BundleError(f"--{option} {value!r}: expected a whole number of at least 0.")
    return value


def positive_number(value: Any, option: str) -> float:
    """``value`` as a finite float above 0, or a :class:`BundleError` naming ``--option``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise BundleError(f"--{option} {value!r}: expected a number above 0, such as 0.002.")
    return float(value)


def check_device(device: Any) -> torch.device:
    """The device ``--device`` names, if this machine has it.

    Args:
        device: a ``torch.device`` or a string such as ``"cpu"``, ``"cuda"``, ``"cuda:1"``.

    Raises:
        BundleError: for a string that names no device, or a CUDA device this machine lacks.
    """
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise BundleError(f"--device {device!r}: expected cpu, cuda or cuda:<index>.") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise BundleError(
                f"--device {device}: this machine has no usable CUDA GPU (torch {torch.__version__}, {build}); "
                "use --device cpu."
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise BundleError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s).")
    return resolved


def check_patch_size(patch_size: Any, spatial_dims: int) -> list[int]:
    """``--patch_size`` as a list of ``spatial_dims`` sizes of at least 1.

    Whether the network can take it (multiples of its strides) is the plan's check
    (:func:`unet_med.bundle.plan_file.validate_plan`), which knows the planned strides.

    Raises:
        BundleError: for a wrong length or a size below 1.
    """
    if (
        not isinstance(patch_size, Sequence)
        or isinstance(patch_size, str)
        or len(patch_size) != spatial_dims
        or not all(isinstance(size, int) and not isinstance(size, bool) and size >= 1 for size in patch_size)
    ):
        example = "[32,48,32]" if spatial_dims == 3 else "[48,64]"
        raise BundleError(
            f"--patch_size {patch_size!r}: expected {spatial_dims} whole numbers of at least 1 (one per axis of "
            f"the {spatial_dims}D network), such as {example}."
        )
    return list(patch_size)


def check_training_options(
    epochs: Any,
    val_interval: Any,
    batch_size: Any,
    learning_rate: Any,
    patch_size: Any,
    device: Any,
    spatial_dims: int,
    num_workers: Any = 0,
) -> None:
    """Check the training options of a bundle's ``train.yaml``; see the ``check_*`` functions.

    ``epochs``, ``batch_size`` and ``patch_size`` may be ``None``: the plan's (``models/plan.yaml``) then; the
    plan file is validated when it is read.

    Raises:
        BundleError: naming the first wrong option and what it takes.
    """
    if epochs is not None:
        positive_int(epochs, "epochs")
    positive_int(val_interval, "val_interval")
    if batch_size is not None:
        positive_int(batch_size, "batch_size")
    positive_number(learning_rate, "learning_rate")
    non_negative_int(num_workers, "num_workers")
    check_device(device)
    if patch_size is not None:
        check_patch_size(patch_size, spatial_dims)


def unknown_ids(given: Mapping[str, Any], known: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str | None]]:
    """The ids of ``given`` that ``known`` does not define, each with the closest id it defines (or ``None``).

    Sections (mappings) found in both are compared key by key (``train#trainer#max_epoch``); a list or a value
    is one id, whatever it holds (``train#handlers`` replaced by a list of other handlers is known).

    Args:
        given: the config that runs.
        known: the bundle's files merged.
        prefix: the id of the section being compared, ``""`` at the top.
    """
    found: list[tuple[str, str | None]] = []
    for key, value in given.items():
        if not prefix and key in MONAI_IDS:
            continue
        if key not in known:
            close = difflib.get_close_matches(str(key), [str(k) for k in known], n=1, cutoff=0.6)
            found.append((prefix + str(key), prefix + close[0] if close else None))
        elif isinstance(value, Mapping) and isinstance(known[key], Mapping):
            found += unknown_ids(value, known[key], f"{prefix}{key}#")
    return found


def _running_parser() -> ConfigParser | None:
    """The MONAI config parser evaluating the caller's config expression, found up the call stack."""
    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, ConfigParser):
            return candidate
        frame = frame.f_back
    return None


def _run_config_files() -> list[str]:
    """The config files ``monai.bundle run`` merges for this run (``--config_file``, or its ``--args_file``'s).

    Read from the frame of MONAI's ``create_workflow``, which initialises the workflow it makes; empty when the
    config is evaluated otherwise (MONAI Label builds its parsers itself).
    """
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "create_workflow" and frame.f_locals.get("config_file") is not None:
            files = frame.f_locals["config_file"]
            return [str(files)] if isinstance(files, (str, Path)) else [str(file) for file in files]
        frame = frame.f_back
    return []


def check_overrides(bundle_root: str | Path, config_names: Sequence[str]) -> None:
    """Refuse every id of the running config that the bundle's files do not define (a misspelt option).

    Called from a config's ``initialize`` (MONAI's parser evaluating it is found up the call stack; called
    otherwise, it checks nothing). The ids of any other config file the run merges (the user's own) count as
    defined. The overrides of MONAI Label name ids the files define, and pass.

    Args:
        bundle_root: the bundle folder (``--bundle_root``, ``.`` when run from it).
        config_names: the files in its ``configs/`` this config is merged from, in order
            (``["train.yaml", "evaluate.yaml"]``).

    Raises:
        BundleError: one line per unknown id (``--epoch: configs/train.yaml defines no such option; did you mean
            --epochs? ...``), or a ``bundle_root`` without these files.
    """
    parser = _running_parser()
    if parser is None:
        return
    files = [f"configs/{name}" for name in config_names]
    missing = [file for file in files if not (Path(bundle_root) / file).is_file()]
    if missing:
        raise BundleError(f"--bundle_root {bundle_root}: no {missing[0]} there; run from the bundle folder or "
                          "pass --bundle_root <bundle folder>")
    # a config file of the user's merged into the run (--config_file "[..., 'mine.yaml']") defines options too
    ours = [Path(bundle_root) / file for file in files]
    theirs = [file for file in _run_config_files() if not any(Path(file).resolve() == path.resolve() for path in ours)]
    known = ConfigParser()
    known.read_config([*map(str, ours), *theirs])
    unknown = unknown_ids(parser.get(), known.get())
    if unknown:
        listing = f"python -m unet_med.bundle.options {' '.join(files)} lists them"
        raise BundleError("\n".join(
            f"--{key}: {' + '.join(files)} defines no such option; "
            + (f"did you mean --{close}? " if close else "") + listing
            for key, close in unknown
        ))


TOP_LEVEL_ID = re.compile(r"^([A-Za-z_][\w#]*):")


def _comments(config_file: Path) -> dict[str, str]:
    """The comment lines right above each top-level id of a YAML config, joined."""
    comments: dict[str, str] = {}
    above: list[str] = []
    for line in config_file.read_text().splitlines():
        if line.startswith("#"):
            above.append(line.lstrip("#").strip())
            continue
        match = TOP_LEVEL_ID.match(line)
        if match and above:
            comments[match.group(1)] = " ".join(above)
        if line.strip():
            above = []
    return comments


def option_lines(config_files: Sequence[str | Path], width: int = 100) -> list[str]:
    """The options of a merged config: each top-level id that holds a value, with the value and its comment.

    One line ``--id value`` per option (a long value cut with ``...``), then the comment above the id in the
    files, wrapped to ``width`` and indented. Sections (``train``, ``network_def``, ...) and lists
    (``initialize``) are left out; their ids can be set too (``--train#trainer#max_epochs``).
    """
    paths = [Path(file) for file in config_files]
    parser = ConfigParser()
    parser.read_config([str(path) for path in paths])
    comments: dict[str, str] = {}
    for path in paths:
        comments.update(_comments(path))
    lines = []
    for key, value in parser.get().items():
        if isinstance(value, (Mapping, list)):
            continue
        shown = "null" if value is None else str(value)
        shown = shown if len(shown) <= width - len(key) - 3 else shown[: width - len(key) - 6] + "..."
        lines.append(f"--{key} {shown}")
        lines += textwrap.wrap(comments.get(key, ""), width, initial_indent="    ", subsequent_indent="    ")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """List a bundle config's options on stdout; return 0."""
    parser = argparse.ArgumentParser(
        prog="python -m unet_med.bundle.options",
        description="List the options of a bundle config: --id, default value, comment.",
    )
    parser.add_argument("config_file", nargs="+", help="configs/train.yaml, or the files of a merged run in order")
    args = parser.parse_args(argv)
    missing = [file for file in args.config_file if not Path(file).is_file()]
    if missing:
        parser.error(f"no such config file: {', '.join(missing)}")
    files = " ".join(args.config_file)
    print(f"Options of {files}: set one with python -m monai.bundle run --config_file <files> --<option> <value>")
    print("\n".join(option_lines(args.config_file)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
