"""Fine-tuning: start a network from the weights of another trained model, as far as they fit.

:func:`load_pretrained` copies every tensor of a checkpoint whose name and shape match the network's. The
network's input and output layers (its first and its last convolution) may differ in shape, as they do between
models of another number of input channels or classes: they keep their fresh initialisation, and the
:class:`PretrainedReport` says so. Any other difference (another depth, width, normalisation or architecture)
means the weights are not this network's, and is refused with a :class:`~unet_med.bundle.io.CheckpointError`
naming the file. Files are read with ``torch.load(..., weights_only=True)``
(:func:`~unet_med.bundle.io.load_checkpoint`).

:func:`check_pretrained` checks a file against a network without loading it (the bundles call it before they
build anything), and :class:`PretrainedLoader` is the trainer handler that loads the weights when a fresh
training starts.

Example:
    >>> net = UNet(3, 1, 2, features=(16, 32, 64, 128))
    >>> print(load_pretrained(net, "models/model.pt").line())  # a 3-class model
    pretrained: 48 of 50 tensors from models/model.pt; re-initialised (other shape): head.weight [3,16,1,1,1] -> ...
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from ignite.engine import Events

from unet_med.bundle.flags import as_bool
from unet_med.bundle.io import CheckpointError, load_checkpoint

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["PretrainedLoader", "PretrainedReport", "check_pretrained", "load_pretrained", "pretrained_weights"]

MODEL_FILE = Path("models") / "model.pt"


@dataclass(frozen=True)
class PretrainedReport:
    """What :func:`load_pretrained` loaded into a network.

    Attributes:
        path: the checkpoint file.
        loaded: names of the tensors copied from it.
        reinitialised: ``(name, shape in the file, shape in the network)`` of the tensors left as they were.
    """

    path: Path
    loaded: tuple[str, ...]
    reinitialised: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]

    def line(self) -> str:
        """One log line: how many tensors came from the file, and which did not and why."""
        total = len(self.loaded) + len(self.reinitialised)
        text = f"pretrained: {len(self.loaded)} of {total} tensors from {self.path}"
        if self.reinitialised:
            shapes = ", ".join(f"{name} {_shape(old)} -> {_shape(new)}" for name, old, new in self.reinitialised)
            text += f"; re-initialised (other shape): {shapes}"
        return text


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(map(str, shape)) + "]"


def pretrained_weights(path: str | os.PathLike) -> tuple[Path, dict[str, torch.Tensor]]:
    """Read the network weights of a trained model.

    Args:
        path: a checkpoint file, or a bundle folder (its ``models/model.pt``). The file holds a plain
            ``state_dict``, or a dict with the ``state_dict`` under ``"model"`` beside other entries (a training
            state, a plan), which are not read.

    Returns:
        The file read, and its weights by name (on the CPU).

    Raises:
        CheckpointError: if there is no such file, it is unreadable or holds code, or it holds no weights.
    """
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    checkpoint = load_checkpoint(path, map_location="cpu")
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("model"), Mapping):
        checkpoint = checkpoint["model"]
    if not (isinstance(checkpoint, Mapping) and checkpoint and all(map(torch.is_tensor, checkpoint.values()))):
        raise CheckpointError(f"{path} holds no network weights: expected a state_dict, or one under the key 'model'.")
    return path, dict(checkpoint)


def _edge_convolutions(network: torch.nn.Module) -> set[str]:
    """The names of the tensors of the network's first and last convolution (its input and output layers).

    First and last in the order the network registers its modules: for :class:`~unet_med.networks.UNet` the
    first convolution of the encoder and the 1x1 head.
    """
    convolutions = [
        name for name, module in network.named_modules() if isinstance(module, torch.nn.modules.conv._ConvNd)
    ]
    edges = {convolutions[0], convolutions[-1]} if convolutions else set()
    return {
        f"{module}.{name}" if module else name
        for module in edges
        for name, _ in network.get_submodule(module).named_parameters(recurse=False)
    }


def _match(network: torch.nn.Module, path: str | os.PathLike) -> tuple[PretrainedReport, dict[str, torch.Tensor]]:
    """What :func:`load_pretrained` would load, and the file's weights; raises as it does."""
    path, weights = pretrained_weights(path)
    own = network.state_dict()
    missing, unexpected = sorted(own.keys() - weights.keys()), sorted(weights.keys() - own.keys())
    if missing or unexpected:
        parts = [
            f"{len(names)} {what} (first {names[0]})"
            for what, names in (
                ("of the network's tensors are not in it", missing),
                ("of its tensors are not the network's", unexpected),
            )
            if names
        ]
        raise CheckpointError(
            f"{path} holds the weights of another network (another depth or architecture): {'; '.join(parts)}."
        )
    other_shape = [name for name in own if weights[name].shape != own[name].shape]
    edges = _edge_convolutions(network)
    for name in other_shape:
        if name not in edges:
            raise CheckpointError(
                f"{path} holds the weights of another network (another width): {name} is "
                f"{_shape(tuple(weights[name].shape))} there, {_shape(tuple(own[name].shape))} in the network."
            )
    report = PretrainedReport(
        path=path,
        loaded=tuple(name for name in own if name not in other_shape),
        reinitialised=tuple((name, tuple(weights[name].shape), tuple(own[name].shape)) for name in other_shape),
    )
    return report, weights


def load_pretrained(network: torch.nn.Module, path: str | os.PathLike) -> PretrainedReport:
    """Copy into ``network`` every tensor of a trained model's checkpoint whose name and shape match.

    Args:
        network: the network to start from the weights (possibly wrapped in ``.module`` for data parallelism).
        path: the checkpoint, or a bundle folder, as for :func:`pretrained_weights`.

    Returns:
        What was loaded and what kept its initialisation.

    Raises:
        CheckpointError: if the file cannot be read (see :func:`pretrained_weights`), or its weights are not
            those of this network's architecture: other tensor names (another depth, normalisation, network),
            or other shapes anywhere but in the first and last convolution (another width). The network is
            unchanged then.
    """
    network = getattr(network, "module", network)
    report, weights = _match(network, path)
    own = network.state_dict()
    with torch.no_grad():
        for name in report.loaded:
            own[name].copy_(weights[name])
    return report


def check_pretrained(path: str | os.PathLike | None, network: torch.nn.Module, resume: bool | str = False) -> None:
    """Refuse, before anything is built, a ``--pretrained`` checkpoint that cannot load into ``network``.

    Args:
        path: the ``--pretrained`` value; ``None``: nothing to check.
        network: a network of the architecture to train (its weights are not changed).
        resume: with ``--resume true`` the weights are not loaded, hence not checked.

    Raises:
        CheckpointError: as :func:`load_pretrained`.
    """
    if path is not None and not as_bool(resume, "resume"):
        _match(getattr(network, "module", network), path)


class PretrainedLoader:
    """Trainer handler: a fresh training starts from the weights of a trained model (fine-tuning).

    When the trainer starts it loads the checkpoint into the network with :func:`load_pretrained` and logs its
    one-line report. A resumed training (``resume``) ignores the weights, with a log line: its training state
    already continues from them, so resuming a fine-tuning run is its first command plus ``--resume true``.

    Args:
        load_path: the trained model's checkpoint, or its bundle folder.
        network: the network to train.
        resume: the run continues a saved training state (``--resume``).
    """

    def __init__(self, load_path: str | os.PathLike, network: torch.nn.Module, resume: bool | str = False) -> None:
        self.load_path = Path(load_path)
        self.network = network
        self.resume = as_bool(resume, "resume")

    def attach(self, engine: Engine) -> None:
        """Load when ``engine`` starts (list it after a resuming loader, before the best-model guard)."""
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        """Load the weights, or say why not."""
        if self.resume:
            engine.logger.info(
                f"pretrained: {self.load_path} not loaded: --resume true continues the saved training state."
            )
            return
        engine.logger.info(load_pretrained(self.network, self.load_path).line())
