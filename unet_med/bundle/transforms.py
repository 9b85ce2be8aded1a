"""Transforms the bundles' configs use: the plan's normalisation, and MONAI's where they meet MONAI Label."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, NormalizeIntensity, Spacingd

__all__ = ["IsolatedSpacingd", "PlanNormalized", "is_nonzero", "normalize_channels"]


def is_nonzero(image: torch.Tensor) -> torch.Tensor:
    """Where ``image`` is not 0: the foreground that ``CropForegroundd`` keeps (``select_fn``), before normalising.

    MONAI's default keeps positive values, which after a z-score drops every voxel below the mean.
    """
    return image != 0


def normalize_channels(image: torch.Tensor, normalization: Sequence[Mapping[str, Any]]) -> torch.Tensor:
    """Normalise each channel of ``image`` (``C x spatial``) by its entry of the plan's ``normalization``.

    - ``{"scheme": "ct", "clip": [low, high], "mean": m, "std": s}``: clip to ``[low, high]`` (the data set's
      foreground 0.5 / 99.5 percentiles, in HU), then ``(x - m) / s`` with the data set's foreground mean and std.
    - ``{"scheme": "zscore", "nonzero": flag}``: ``(x - mean) / std`` of this image's channel; with ``nonzero``
      over the nonzero voxels only, which stay 0.

    Returns:
        A float32 copy (a ``MetaTensor`` stays one, with its metadata).

    Raises:
        ValueError: if the channel count differs from the entries'.
    """
    if image.shape[0] != len(normalization):
        raise ValueError(f"the image has {image.shape[0]} channels, the plan normalises {len(normalization)}")
    result = image.to(torch.float32).clone()
    for channel, entry in enumerate(normalization):
        if entry["scheme"] == "ct":
            low, high = entry["clip"]
            result[channel] = (result[channel].clamp(low, high) - entry["mean"]) / entry["std"]
        else:
            result[channel] = NormalizeIntensity(nonzero=entry["nonzero"])(result[channel])
    return result


class PlanNormalized(MapTransform):
    """Normalise images per channel as the plan says (see :func:`normalize_channels`).

    Args:
        keys: the images.
        normalization: the plan's ``normalization``, one entry per channel.
        allow_missing_keys: skip absent keys.
    """

    def __init__(
        self, keys: KeysCollection, normalization: Sequence[Mapping[str, Any]], allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normalization = [dict(entry) for entry in normalization]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Normalise every key's image."""
        result = dict(data)
        for key in self.key_iterator(result):
            result[key] = normalize_channels(result[key], self.normalization)
        return result


class IsolatedSpacingd(Spacingd):
    """:class:`monai.transforms.Spacingd` that changes its keys' items only, as MONAI up to 1.5 did.

    MONAI 1.6 ``Spacingd`` also copies the resampled image's metadata into every ``<key>_*`` item of the data
    (``image_meta_dict``, but also whatever else starts with ``image_``). MONAI Label 0.8.5 puts the string
    ``image_path`` there, which cannot take it (``'str' object has no attribute 'update'``), and writes its
    answer with the affine of ``image_meta_dict``, which must stay the scan's, not the resampled grid's. This
    transform hands ``Spacingd`` the data without those items and puts them back unchanged afterwards. Arguments,
    resampling and inversion are ``Spacingd``'s.
    """

    def _companions(self, data: Mapping[Hashable, Any]) -> set[Hashable]:
        """The ``<key>_*`` items of ``data`` for this transform's keys."""
        prefixes = tuple(f"{key}_" for key in self.keys)
        return {name for name in data if isinstance(name, str) and name.startswith(prefixes)}

    def __call__(self, data: Mapping[Hashable, Any], lazy: bool | None = None) -> dict[Hashable, Any]:
        """Resample the keys' images; every other item, ``<key>_*`` ones included, comes back as it was."""
        companions = self._companions(data)
        resampled = super().__call__({name: value for name, value in data.items() if name not in companions}, lazy)
        return {**resampled, **{name: data[name] for name in companions}}
