"""The U-Net paper's weight map (eq. 2), which makes the thin background between touching objects count more.

w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2)) on background voxels, with d1 and d2 the distances
to the nearest and the second-nearest object and w_c a weight that balances the foreground and background
frequencies; object voxels get w_c(x) alone, as in the paper's figure 3d.

Cost: one Euclidean distance transform (``scipy.ndimage.distance_transform_edt``) per object, each restricted
to the object's bounding box grown by ``TRUNCATION * sigma`` (about 4.3 sigma) per side. Farther away the
border term is below ``1e-4 * w0`` and is set to 0, so the time grows with the number of objects times the
size of their grown boxes, not with the number of objects times the image size. The transform runs on CPU,
with NumPy, as a preprocessing step.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import ensure_tuple_rep
from scipy import ndimage

from unet_med.transforms.elastic import SIGMA_UNITS, voxel_spacing

__all__ = ["BorderWeightMapd", "border_weight_map"]

# The border term is dropped beyond this many sigmas from an object: there it is below 1e-4 * w0.
TRUNCATION = math.sqrt(2.0 * math.log(1e4))


def border_weight_map(
    instances: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_balance: bool = True,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """The paper's weight map of an instance label map.

    Args:
        instances: ``(*S)`` integer array, 0 for background and one positive value per object (any values,
            not necessarily consecutive).
        w0: weight of the border term (the paper: 10).
        sigma: width of the border term, in the units of ``spacing`` (the paper: 5 pixels).
        class_balance: add ``w_c = N / (2 N_k)`` for a voxel of class k (background or foreground, ``N_k``
            voxels of ``N``), which is 1 for balanced classes and averages to 1 over the image; otherwise
            ``w_c = 1``. With one class only, ``w_c = 1``.
        spacing: voxel size per axis (e.g. mm), the units of distances and ``sigma``; ``None``: voxels.

    Returns:
        ``(*S)`` float32 weights (an empty map for a label with no voxels).
    """
    instances = np.asarray(instances)
    if instances.size and instances.min() < 0:
        raise ValueError("instance labels must be non-negative, 0 for background.")
    if not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be a finite number above 0, got {sigma}.")
    if instances.size == 0:
        return np.ones(instances.shape, dtype=np.float32)
    spacing = np.ones(instances.ndim) if spacing is None else np.asarray(spacing, dtype=float)
    foreground = instances > 0
    weight = np.ones(instances.shape, dtype=np.float64)
    n_foreground = int(foreground.sum())
    if class_balance and 0 < n_foreground < instances.size:
        weight[foreground] = instances.size / (2.0 * n_foreground)
        weight[~foreground] = instances.size / (2.0 * (instances.size - n_foreground))
    ids, consecutive = np.unique(instances, return_inverse=True)
    consecutive = consecutive.reshape(instances.shape) + (1 if ids[0] > 0 else 0)
    if w0 != 0 and np.count_nonzero(ids) >= 2:
        nearest, second = _two_nearest_distances(consecutive, TRUNCATION * sigma, spacing)
        weight += ~foreground * w0 * np.exp(-((nearest + second) ** 2) / (2.0 * sigma**2))
    return weight.astype(np.float32)


def _two_nearest_distances(
    consecutive: np.ndarray, reach: float, spacing: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Distances to the nearest and second-nearest object, exact within ``reach`` of them, else infinite."""
    nearest = np.full(consecutive.shape, np.inf)
    second = np.full(consecutive.shape, np.inf)
    margin = [math.ceil(reach / s) for s in spacing]
    for index, box in enumerate(ndimage.find_objects(consecutive), start=1):
        if box is None:
            continue
        grown = tuple(
            slice(max(b.start - m, 0), min(b.stop + m, size))
            for b, m, size in zip(box, margin, consecutive.shape, strict=True)
        )
        distance = ndimage.distance_transform_edt(consecutive[grown] != index, sampling=spacing)
        near, sec = nearest[grown], second[grown]
        second[grown] = np.minimum(sec, np.maximum(near, distance))
        nearest[grown] = np.minimum(near, distance)
    return nearest, second


class BorderWeightMapd(MapTransform):
    """Adds the U-Net paper's weight map (eq. 2) of an instance label, for :class:`unet_med.WeightedCELoss`.

    Args:
        keys: keys of ``(1, *S)`` instance labels (2D or 3D): 0 for background, one value per object; or
            binary masks, whose face-connected components become the objects.
        w0: weight of the border term (the paper: 10).
        sigma: width of the border term (the paper: 5 pixels), in voxels or, with ``sigma_units="mm"``, in
            millimetres measured with the spacing in the label's affine (a ``MetaTensor`` is then required).
        class_balance: add a term that balances the foreground and background frequencies (``w_c``, 1 on
            average); ``False``: ``w_c = 1``.
        weight_key: key of the weight map to add, one per key in ``keys``.
        sigma_units: ``"voxel"`` or ``"mm"``.
        binary: ``True``: the label is a mask to split into connected components; ``False``: it already holds
            instances; ``None`` (default): a mask when its values are only 0 and 1.
        allow_missing_keys: skip keys absent from the data instead of raising ``KeyError``.

    The weight map is a float32 ``(1, *S)`` tensor (a ``MetaTensor`` with the label's metadata when the label
    is one), so later spatial transforms (crops, flips) can take it among their keys. See the module
    docstring for the cost: one distance transform per object, on a box around it.
    """

    def __init__(
        self,
        keys: KeysCollection,
        w0: float = 10.0,
        sigma: float = 5.0,
        class_balance: bool = True,
        weight_key: str | Sequence[str] = "weight",
        sigma_units: str = "voxel",
        binary: bool | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not math.isfinite(sigma) or sigma <= 0:
            raise ValueError(f"sigma must be a finite number above 0, got {sigma}.")
        if sigma_units not in SIGMA_UNITS:
            raise ValueError(f"sigma_units must be one of {SIGMA_UNITS}, got {sigma_units!r}.")
        self.weight_keys = ensure_tuple_rep(weight_key, len(self.keys))
        if len(set(self.weight_keys)) != len(self.weight_keys):
            raise ValueError(f"give one weight_key per key, got {weight_key!r} for keys {self.keys}.")
        self.w0 = w0
        self.sigma = sigma
        self.class_balance = class_balance
        self.sigma_units = sigma_units
        self.binary = binary

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        """Adds ``weight_key`` for each key of ``data``.

        Args:
            data: sample dictionary whose keys hold ``(1, *S)`` labels.

        Returns:
            A shallow copy of ``data`` with the weight maps added.
        """
        d = dict(data)
        for key, weight_key in self.key_iterator(d, self.weight_keys):
            label = d[key]
            if label.ndim not in (3, 4) or label.shape[0] != 1:
                raise ValueError(
                    f"{key!r} must be a (1, *S) label with 2 or 3 spatial axes, got {tuple(label.shape)}."
                )
            values = np.asarray(label.detach().cpu() if isinstance(label, torch.Tensor) else label)[0]
            if values.dtype.kind == "f":
                values = np.rint(values)
            values = values.astype(np.int64)
            binary = np.isin(values, (0, 1)).all() if self.binary is None else self.binary
            if binary:
                values, _ = ndimage.label(values > 0)
            spacing = np.asarray(voxel_spacing(label)) if self.sigma_units == "mm" else None
            weight = torch.from_numpy(
                border_weight_map(values, self.w0, self.sigma, self.class_balance, spacing)
            ).unsqueeze(0)
            if isinstance(label, torch.Tensor):
                weight = weight.to(label.device)
            if isinstance(label, MetaTensor):
                weight = MetaTensor(weight, meta=label.meta, applied_operations=label.applied_operations)
            d[weight_key] = weight
        return d
