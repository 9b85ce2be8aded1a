"""Transforms the bundles' configs use where MONAI's own meet the programs that run the bundles."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from monai.transforms import Spacingd

__all__ = ["IsolatedSpacingd"]


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
