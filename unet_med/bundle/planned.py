"""The bundles' side of the plan: one ``models/plan.yaml`` read by every config, overridden from the command line.

The configs of both bundles call these functions with the bundle's ``spatial_dims``, so that everything that
differs between the 2D and the 3D bundle (the crop, the slice squeezed out of it, the inferer) is decided here,
from the plan, and the two bundles' YAML files are the same but for their ``spatial_dims`` line.

- Training (:func:`training_plan`) plans from the data set when the file is missing (data check, fingerprint,
  decision table, :func:`unet_med.bundle.plan.plan_dataset`), then loads the file with the command line's
  overrides (they win) and validates it; :class:`PlanWriter` writes that effective plan back when the trainer
  starts, and :class:`PlanRecord` puts it into ``model.pt`` and the training state.
- Evaluation and inference (:func:`trained_plan`) load the same file and refuse a ``model.pt`` that records no
  plan or another one, in anything that changes the preprocessing or the network (``MODEL_KEYS``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite import distributed as idist
from ignite.engine import Engine, Events
from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.data.utils import pickle_hashing
from monai.inferers import Inferer, SliceInferer, SlidingWindowInferer
from monai.transforms import Identityd, MapTransform, SqueezeDimd

from unet_med.bundle.datalists import decathlon_datalist, label_names
from unet_med.bundle.dataset_check import check_dataset
from unet_med.bundle.errors import BundleError
from unet_med.bundle.fingerprint import channel_names, compute_fingerprint, file_stamp
from unet_med.bundle.io import load_checkpoint, move_aside
from unet_med.bundle.plan_data import check_plan_fits_data
from unet_med.bundle.plan_file import apply_overrides, load_plan, read_plan_text, validate_plan, write_plan

__all__ = [
    "MODEL_KEYS",
    "PlanRecord",
    "PlanWriter",
    "cached_dataset",
    "check_dataset_against_plan",
    "crop_ratios",
    "crop_size",
    "differences",
    "first_difference",
    "override_reasons",
    "recorded_plan",
    "restore_plan",
    "stamped_hash",
    "to_network_dims",
    "trained_plan",
    "training_plan",
    "window_inferer",
]

# What a trained model depends on: the preprocessing (spacing, normalisation, the patch it was trained on) and
# the network. Batch, epochs, inference windows, cache and the cost estimates may differ without harm.
MODEL_KEYS = ("spatial_dims", "in_channels", "num_classes", "pixdim", "normalization", "patch_size", "network")
OVERRIDE_REASON = "set on the command line"


def _with_overrides(
    plan: dict[str, Any], path: Path, overrides: Mapping[str, Any] | None
) -> tuple[dict[str, Any], str]:
    """The plan with the overrides a user set (``None`` means "from the plan"), validated, and how errors name it."""
    given = {key: value for key, value in (overrides or {}).items() if value is not None}
    if not given:
        return plan, str(path)
    source = f"{path} with --{' --'.join(key.split('.')[-1] for key in given)}"
    effective = apply_overrides(plan, given, path)
    validate_plan(effective, source)
    return effective, source


def _replan_hint(path: Path, dims: int) -> str:
    return (f"delete it to plan again from the data (training does), or run python -m unet_med.bundle.plan "
            f"DATASET_DIR --dims {dims} --output {path}")


def _check_dims(plan: Mapping[str, Any], path: Path, spatial_dims: int) -> None:
    if plan["spatial_dims"] != spatial_dims:
        raise BundleError(f"{path}: spatial_dims = {plan['spatial_dims']}: this is the {spatial_dims}D bundle; "
                          + _replan_hint(path, spatial_dims))


def training_plan(
    plan_file: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    spatial_dims: int,
    device: str | torch.device,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The plan training runs with: the file (planned from the data set first when missing) and the overrides.

    Args:
        plan_file: ``models/plan.yaml``.
        dataset_dir: the Decathlon folder planned from when the file is missing.
        spatial_dims: the bundle's: 3, or 2 for slices.
        device: the device training runs on; a missing plan is planned for it.
        overrides: dotted plan keys to values, ``None`` for "from the plan" (the config's ``plan_overrides``).

    Returns:
        The validated plan, overrides applied.

    Raises:
        BundleError: one line: the data check's problems, a plan that does not fit the bundle, or a value (from
            the file or the command line) the bundles cannot run.
    """
    from unet_med.bundle.plan import PlanSettings, decision_table, plan_dataset

    path = Path(plan_file)
    planned_reasons = None
    if not path.is_file():
        _check_trainable(dataset_dir)
        settings = PlanSettings(device=torch.device(device).type, spatial_dims=spatial_dims)
        planned_reasons = plan_dataset(dataset_dir, path, settings)[1]
    plan = load_plan(path)
    _check_dims(plan, path, spatial_dims)
    effective = _with_overrides(plan, path, overrides)[0]
    if planned_reasons is not None:  # the decisions this run trains with: the command line's values shown
        print(decision_table(effective, {**planned_reasons, **override_reasons(plan, effective)}), flush=True)
        print(f"plan written to {path}", flush=True)
    return effective


def _check_trainable(dataset_dir: str | os.PathLike) -> None:
    """Refuse, before planning, a data set of fewer than two cases: one to train on, one to validate on."""
    cases = decathlon_datalist(dataset_dir, check_files=False)
    if len(cases) < 2:
        raise BundleError(f"{Path(dataset_dir) / 'dataset.json'} lists {len(cases)} training case(s): training needs "
                          "at least 2, cases to train on and one to validate on")


def override_reasons(on_disk: Mapping[str, Any], effective: Mapping[str, Any]) -> dict[str, str]:
    """The reason of each dotted key at which the command line changed the plan on disk."""
    return {key: f"{OVERRIDE_REASON} (the file had {json.dumps(_lookup(on_disk, key))})"
            for key in differences(on_disk, effective)}


def check_dataset_against_plan(
    dataset_dir: str | os.PathLike, plan: Mapping[str, Any], plan_file: str | os.PathLike, training: bool = True
) -> list[dict[str, str]]:
    """The data check of training, for the plan's channels and classes, and the data compared with the plan's.

    ``dataset.json``'s channel names and labels must match the plan's ``in_channels`` and ``num_classes`` (a
    plan made for another data set), then every case is checked
    (:func:`unet_med.bundle.dataset_check.check_dataset`), and, for a training, the cases' fingerprint (cached
    beside the plan file) must match the one the plan was made from
    (:func:`unet_med.bundle.plan_data.check_plan_fits_data`). An evaluation (``training=False``) may score the
    model on other data, an external test set; its scan check flags the cases unlike the training scans.

    Returns:
        The checked training cases.

    Raises:
        BundleError: one line naming the plan file and the key that does not fit the data set, the data
            check's error, or the first way the data differ from the plan's.
    """
    path = Path(plan_file)
    names = channel_names(dataset_dir)
    if names is not None and len(names) != plan["in_channels"]:
        raise BundleError(f"{path}: in_channels = {plan['in_channels']}: {dataset_dir} has {len(names)} channels "
                          f"({', '.join(names)}); " + _replan_hint(path, plan["spatial_dims"]))
    classes = len(label_names(dataset_dir))
    if classes != plan["num_classes"]:
        raise BundleError(f"{path}: num_classes = {plan['num_classes']}: {dataset_dir} has {classes} labels, "
                          "background included; " + _replan_hint(path, plan["spatial_dims"]))
    cases = check_dataset(dataset_dir, plan["spatial_dims"], plan["in_channels"], plan["num_classes"])
    if training:
        fingerprint = compute_fingerprint(dataset_dir, path.with_name("fingerprint.json"), datalist=cases)
        check_plan_fits_data(plan, path, fingerprint, dataset_dir)
    return cases


def differences(recorded: Any, current: Any, prefix: str = "") -> list[str]:
    """The dotted keys at which two plans (or parts of them) differ, in the order of ``recorded``'s keys.

    Sections and lists of sections (``normalization.0.nonzero``) are followed down; other lists (a patch, the
    strides) differ as a whole.
    """
    if isinstance(recorded, Mapping) and isinstance(current, Mapping):
        keys = list(recorded) + [key for key in current if key not in recorded]
        return [found for key in keys for found in differences(recorded.get(key), current.get(key), f"{prefix}{key}.")]
    if (isinstance(recorded, list) and isinstance(current, list) and len(recorded) == len(current)
            and all(isinstance(item, Mapping) for item in recorded + current)):  # e.g. one entry per channel
        return [found for index, (a, b) in enumerate(zip(recorded, current))
                for found in differences(a, b, f"{prefix}{index}.")]
    return [] if recorded == current else [prefix.rstrip(".")]


def first_difference(recorded: Any, current: Any) -> str | None:
    """The first dotted key at which two plans differ (see :func:`differences`), or ``None`` if they are equal."""
    return next(iter(differences(recorded, current)), None)


def _model_difference(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    return first_difference({key: recorded.get(key) for key in MODEL_KEYS}, {key: current[key] for key in MODEL_KEYS})


def _lookup(plan: Mapping[str, Any], dotted: str) -> Any:
    value: Any = plan
    for part in dotted.split("."):
        if isinstance(value, Mapping):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def _write_back_hint(model_file: Path, plan_file: Path) -> str:
    return f"python -m unet_med.bundle.plan --from_model {model_file} --output {plan_file} writes it back"


def _mismatch(
    model_file: Path, recorded: Mapping[str, Any], plan: Mapping[str, Any], source: str, key: str, plan_file: Path
) -> str:
    return (f"{model_file}: trained with another plan than {source}: {key} = "
            f"{json.dumps(_lookup(recorded, key))} in the model, {json.dumps(_lookup(plan, key))} in the plan; "
            f"use the plan this model was trained with ({_write_back_hint(model_file, plan_file)}), or train again")


def _plan_in(model_file: str | os.PathLike) -> Mapping[str, Any] | None:
    """The plan ``model_file`` records beside its weights, or ``None`` when it records none."""
    checkpoint = load_checkpoint(model_file, map_location="cpu")
    recorded = checkpoint.get("plan") if isinstance(checkpoint, Mapping) else None
    return recorded if isinstance(recorded, Mapping) else None


def recorded_plan(model_file: str | os.PathLike) -> dict[str, Any]:
    """The plan a ``model.pt`` saved by the bundles' training records beside its weights.

    Raises:
        BundleError: one line: a missing or refused file, or a model that records no plan.
    """
    recorded = _plan_in(model_file)
    if recorded is None:
        raise BundleError(f"{model_file}: records no plan (saved before plans, or not by the bundles' training): "
                          "train it again, or save it as {'model': state_dict, 'plan': the plan it was trained with}")
    return dict(recorded)


def restore_plan(model_file: str | os.PathLike, plan_file: str | os.PathLike) -> Path:
    """Write the plan ``model_file`` was trained with to ``plan_file``: the way back to a lost or replaced plan file.

    The values are the model's; their reasons stayed in the file its training wrote, so the header says where
    the values come from. A file already at ``plan_file`` is kept in ``previous/<time>/`` beside it.

    Returns:
        ``plan_file``.

    Raises:
        BundleError: one line: no model, a model that records no plan, or a recorded plan the bundles cannot run.
    """
    plan, path = recorded_plan(model_file), Path(plan_file)
    if path.is_file():
        move_aside([path], copy=True)
    header = (f"Written by python -m unet_med.bundle.plan --from_model: the plan {model_file} was trained with.\n"
              "The reasons of its values are in the plan file its training wrote.")
    return write_plan(path, plan, {}, header)


def trained_plan(
    plan_file: str | os.PathLike,
    model_file: str | os.PathLike,
    spatial_dims: int,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The plan evaluation and inference run with: the file, checked against the plan ``model_file`` records.

    Args:
        plan_file: ``models/plan.yaml``.
        model_file: ``models/model.pt``, as training saves it: ``{"model": state_dict, "plan": plan}``.
        spatial_dims: the bundle's.
        overrides: dotted plan keys to values, ``None`` for "from the plan" (e.g. the sliding-window batch).

    Returns:
        The validated plan, overrides applied.

    Raises:
        BundleError: one line, before anything is built: no model, no plan file, a model that records no plan,
            or a plan (with the overrides) that differs from the model's in a key of ``MODEL_KEYS``.
    """
    path, model_file = Path(plan_file), Path(model_file)
    recorded = recorded_plan(model_file)
    if not path.is_file():
        raise BundleError(f"{path}: no plan file: evaluation and inference read the plan that training wrote beside "
                          f"{model_file.name}; copy it there with the model, or {_write_back_hint(model_file, path)}")
    plan = load_plan(path)
    _check_dims(plan, path, spatial_dims)
    plan, source = _with_overrides(plan, path, overrides)
    differs = _model_difference(recorded, plan)
    if differs:
        raise BundleError(_mismatch(model_file, recorded, plan, source, differs, path))
    return plan


class PlanRecord:
    """The plan as a checkpoint entry: saved into ``model.pt`` and the training state beside the weights.

    Its :meth:`state_dict` is the plan (plain values, so ``torch.load(weights_only=True)`` reads it); loading a
    training state (resuming) whose plan differs from this one in a key of ``MODEL_KEYS`` is refused.

    Args:
        plan: the effective plan.
        plan_file: its file, named in errors.
    """

    def __init__(self, plan: Mapping[str, Any], plan_file: str | os.PathLike) -> None:
        self.plan = dict(plan)
        self.plan_file = Path(plan_file)

    def state_dict(self) -> dict[str, Any]:
        """The plan."""
        return dict(self.plan)

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Check that a saved plan is this one, for the model; a resumed run keeps its own batch and epochs.

        Raises:
            BundleError: if they differ in a key of ``MODEL_KEYS``.
        """
        differs = _model_difference(state_dict, self.plan)
        if differs:
            raise BundleError(
                f"the training state was saved with another plan than {self.plan_file}: {differs} = "
                f"{json.dumps(_lookup(state_dict, differs))} there, {json.dumps(_lookup(self.plan, differs))} now; "
                "resume with the plan it was trained with, or pass --overwrite true to train anew"
            )


class PlanWriter:
    """Trainer handler: writes the effective plan (the file with the command line's overrides), in step with the model.

    Attached after :class:`~unet_med.bundle.handlers.BestModelGuard`, so that a training it refuses changes no
    file; evaluation and inference then read exactly training's values. Values set on the command line get the
    reason ``"set on the command line"``; the other values keep the file's reasons. Written on rank 0 only.

    ``plan.yaml`` and ``model.pt`` stay in step: when the trainer starts beside a ``model_path`` trained with
    another plan (in a key of ``MODEL_KEYS``: a fine-tune with another patch, say), the file keeps that model's
    plan until this run saves a better model (checked when each epoch starts and when training ends); if no epoch
    beats the model, the file is left as it was. A file replaced by a plan that differs in such a key is kept in
    ``previous/<time>/`` beside it.

    Args:
        plan: the effective plan.
        plan_file: ``models/plan.yaml``.
        model_path: ``models/model.pt``; ``None`` writes when the trainer starts whatever model is there.
    """

    def __init__(
        self, plan: Mapping[str, Any], plan_file: str | os.PathLike, model_path: str | os.PathLike | None = None
    ) -> None:
        self.plan = dict(plan)
        self.plan_file = Path(plan_file)
        self.model_path = None if model_path is None else Path(model_path)
        self._waiting_for: tuple[int, int, int] | None = None  # the stamp of the model whose plan the file keeps

    def attach(self, engine: Engine) -> None:
        """Write when ``engine`` starts, or once it has saved a model trained with this plan."""
        engine.add_event_handler(Events.STARTED, self)
        engine.add_event_handler(Events.EPOCH_STARTED, self._write_once_the_model_is_saved)
        engine.add_event_handler(Events.COMPLETED, self._write_once_the_model_is_saved)

    def _model_stamp(self) -> tuple[int, int, int] | None:
        if self.model_path is None or not self.model_path.is_file():
            return None
        stat = self.model_path.stat()
        return stat.st_ino, stat.st_size, stat.st_mtime_ns

    def _model_has_another_plan(self) -> bool:
        recorded = _plan_in(self.model_path)
        return recorded is None or _model_difference(recorded, self.plan) is not None

    def __call__(self, engine: Engine) -> None:
        """Write the plan if it differs from the file, unless the file belongs to a model of another plan."""
        if idist.get_rank() != 0:
            return
        stamp = self._model_stamp()
        if stamp is not None and self._model_has_another_plan():
            self._waiting_for = stamp
            engine.logger.info(f"{self.plan_file} keeps the plan of {self.model_path} until this run saves a "
                               "better model")
            return
        self._write(engine)

    def _write_once_the_model_is_saved(self, engine: Engine) -> None:
        if self._waiting_for is not None and idist.get_rank() == 0 and self._model_stamp() != self._waiting_for:
            self._waiting_for = None
            self._write(engine)

    def _write(self, engine: Engine) -> None:
        on_disk, reasons, header = read_plan_text(self.plan_file)
        if on_disk == self.plan:
            return
        if _model_difference(on_disk, self.plan) is not None:
            kept = move_aside([self.plan_file], copy=True)[0]
            engine.logger.info(f"Kept the earlier plan: {kept}")
        reasons.update(override_reasons(on_disk, self.plan))
        write_plan(self.plan_file, self.plan, reasons, header)
        engine.logger.info(f"Wrote the plan with the command line's values to {self.plan_file}")


def crop_size(plan: Mapping[str, Any]) -> list[int]:
    """What the training patches are cropped to from a volume: the patch; for 2D one slice more, ``patch + [1]``."""
    patch = list(plan["patch_size"])
    return [*patch, 1] if plan["spatial_dims"] == 2 else patch


def to_network_dims(keys: Sequence[Hashable], plan: Mapping[str, Any]) -> MapTransform:
    """The transform that turns a cropped patch into the network's input: 2D squeezes the slice axis out."""
    return SqueezeDimd(keys=keys, dim=-1) if plan["spatial_dims"] == 2 else Identityd(keys=keys)


def crop_ratios(plan: Mapping[str, Any]) -> list[int]:
    """How often a training patch is centred on each class, background first.

    3D: every class alike. 2D: background twice as often, since a slice centred on a class holds little else.
    """
    background = 2 if plan["spatial_dims"] == 2 else 1
    return [background] + [1] * (plan["num_classes"] - 1)


def window_inferer(plan: Mapping[str, Any], mode: str = "gaussian") -> Inferer:
    """The plan's sliding-window inferer: windows of the patch, the plan's window batch and overlap.

    3D: :class:`monai.inferers.SlidingWindowInferer`; 2D: :class:`monai.inferers.SliceInferer` over the
    volume's last axis (the 2D network sees one slice at a time).
    """
    common = {"roi_size": list(plan["patch_size"]), "sw_batch_size": plan["inference"]["sw_batch_size"],
              "overlap": plan["inference"]["overlap"], "mode": mode}
    if plan["spatial_dims"] == 2:
        return SliceInferer(spatial_dim=2, **common)
    return SlidingWindowInferer(**common)


def preprocessing_key(plan: Mapping[str, Any]) -> str:
    """A short hash of what the cached preprocessing depends on, naming its cache folder."""
    relevant = {key: plan[key] for key in ("spatial_dims", "in_channels", "pixdim", "normalization", "patch_size")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:12]


def stamped_hash(item: Mapping[str, Any]) -> bytes:
    """The disk cache's key of a data item: MONAI's hash of the item and of its files' size and modification time.

    MONAI's default key is the item alone (its paths), so a label edited in place kept its stale cached copy;
    with the files' stamps (:func:`unet_med.bundle.fingerprint.file_stamp`, as the fingerprint's cache is keyed)
    an edited or replaced file is prepared again.
    """
    stamps = [file_stamp(value) for value in item.values() if isinstance(value, str) and os.path.isfile(value)]
    return pickle_hashing({"item": dict(item), "files": stamps})


def cached_dataset(
    data: Sequence[Mapping[str, Any]],
    transform: Any,
    plan: Mapping[str, Any],
    cache_dir: str | os.PathLike,
    cache_rate: float = 1.0,
    num_workers: int = 0,
) -> Dataset:
    """The plan's cache: ``ram``: a ``CacheDataset``; ``disk``: a ``PersistentDataset`` (MONAI's).

    On disk the deterministic steps are kept in ``cache_dir/<hash of the plan's preprocessing>/``: a new plan
    gets a new folder instead of reading cases prepared another way; each case's file is named by
    :func:`stamped_hash`, so an edited image or label is prepared again.
    """
    if plan["cache"]["policy"] == "ram":
        return CacheDataset(data=data, transform=transform, cache_rate=cache_rate, num_workers=num_workers)
    return PersistentDataset(data=data, transform=transform, cache_dir=Path(cache_dir) / preprocessing_key(plan),
                             hash_func=stamped_hash)
