"""Predictions brought back to the scan's grid as a label map, one slab of the scan at a time.

The inference configs used to run ``Invertd`` on the class probabilities and then ``AsDiscreted(argmax=True)``:
the whole float32 probability volume at the scan's resolution existed at once (2.5 GB for 8 classes on a
512 x 512 x 300 CT). :class:`InvertToLabelsd` computes the same label map with the same interpolation, but
a slab at a time along the last spatial axis, keeping only each slab's argmax, as ``uint8``. With the bundles'
bilinear resampling it interpolates only where it must: a voxel whose source neighbours all have the same argmax
has that label (:func:`labels_by_cells`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Hashable, Mapping
from copy import deepcopy
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.utils import AFFINE_TOL
from monai.transforms import Compose, InvertibleTransform, MapTransform, Spacingd, SpatialResample
from monai.transforms.utils import allow_missing_keys_mode
from monai.utils import TraceKeys
from monai.utils.type_conversion import get_torch_dtype_from_string

from unet_med.bundle.errors import BundleError

__all__ = ["InvertToLabelsd", "cell_labels", "labels_by_cells", "source_range"]

# Float32 probabilities of one slab at the scan's resolution. Its buffers (the interpolated values, the gathered
# neighbours, indices; with MONAI's resampler also its float32 copy and sampling grid) peak at a few times this;
# thinner slabs did not cost time (MONAI's resampler, 8 classes at 320 x 320 x 160: 13 s for 4, 16 and 64 MiB).
SLAB_BYTES = 16 * 2**20
# Interpolations whose value at a point depends on its neighbours only, and paddings that a slab reproduces.
LOCAL_MODES = ("bilinear", "nearest")
SLAB_PADDINGS = ("border", "zeros")
# Off-diagonal terms of the voxel-to-voxel map below which the grid counts as axis-aligned (voxel per voxel).
AXIS_ALIGNED_TOL = 1e-9
# Source coordinates this close to a voxel are on it (float32 grids, as MONAI's, are off by about 1e-6 voxel).
SNAP = 1e-6


def _shifted(affine: torch.Tensor, start: int) -> torch.Tensor:
    """``affine`` of the sub-volume that starts at voxel ``start`` of the last spatial axis."""
    shift = torch.eye(affine.shape[0], dtype=affine.dtype)
    shift[-2, -1] = start
    return affine @ shift


def source_range(source_affine: torch.Tensor, target_affine: torch.Tensor, target_size: tuple[int, ...],
                 source_length: int) -> tuple[int, int]:
    """The slices of the source's last axis that interpolation at every voxel of a target grid reads.

    Args:
        source_affine: voxel-to-world affine of the source.
        target_affine: voxel-to-world affine of the target grid (a slab).
        target_size: the target's spatial size.
        source_length: the source's size along its last spatial axis.

    Returns:
        ``(start, stop)`` of the source's last axis: every sampled point with its neighbours on each side and
        one voxel more for rounding, within the source; at least one slice (the border a point outside samples).
    """
    to_source = torch.linalg.solve(source_affine, target_affine)
    corners = torch.cartesian_prod(*[torch.tensor([0.0, n - 1.0], dtype=torch.float64) for n in target_size])
    corners = corners.reshape(-1, len(target_size))
    along = corners @ to_source[-2, :-1] + to_source[-2, -1]
    start = min(max(math.floor(along.min().item()) - 1, 0), source_length - 1)
    stop = min(max(math.ceil(along.max().item()) + 2, start + 1), source_length)
    return start, stop


def _source_axis(scale: torch.Tensor, offset: torch.Tensor, length: int, source_length: int) -> torch.Tensor:
    """Source voxel coordinates of a target axis, ``scale * index + offset``, within the source (``border``).

    Coordinates within ``SNAP`` of a whole number are that number: a target voxel on a source voxel takes its
    value exactly, as in exact arithmetic (the crop's zeros stay zeros, not a rounding error's share of a class).
    """
    coordinates = scale * torch.arange(length, dtype=torch.float64) + offset
    nearest = coordinates.round()
    coordinates = torch.where((coordinates - nearest).abs() < SNAP, nearest, coordinates)
    return coordinates.clamp(0, source_length - 1)


def cell_labels(labels: torch.Tensor) -> torch.Tensor:
    """The label shared by each voxel's cell: the voxel and its next neighbours, ``2 ** d`` voxels.

    Past the far border along an axis, the last voxel stands in for its missing neighbour (``border`` padding).

    Args:
        labels: the source's argmax, ``spatial``.

    Returns:
        int16 of ``labels``' shape: the cell's label where all its voxels have it, else -1.
    """
    low = high = labels.to(torch.int16)
    for axis in range(labels.ndim):
        last = labels.shape[axis] - 1
        low = torch.cat([low, low.narrow(axis, last, 1)], dim=axis)
        high = torch.cat([high, high.narrow(axis, last, 1)], dim=axis)
        low = torch.minimum(low.narrow(axis, 0, last + 1), low.narrow(axis, 1, last + 1))
        high = torch.maximum(high.narrow(axis, 0, last + 1), high.narrow(axis, 1, last + 1))
    return torch.where(low == high, low, -1)


def labels_by_cells(voxels: torch.Tensor, cells: torch.Tensor, coordinates: list[torch.Tensor]) -> torch.Tensor:
    """The argmax of a source's probabilities, interpolated (bilinear, ``border``) on a grid of source coordinates.

    A point in a cell whose voxels share their argmax takes it without interpolation: bilinear interpolation is
    a convex combination of the cell's voxels, so the class above every other at each voxel stays above it (ties
    go to the lower class index, as ``argmax`` breaks them). The other points are interpolated, all classes.

    Args:
        voxels: the source's probabilities, one row per voxel (``spatial`` flattened) and one column per class.
        cells: :func:`cell_labels` of the source's argmax, ``spatial``.
        coordinates: per axis, the grid's source voxel coordinates along that axis, within ``[0, size - 1]``.

    Returns:
        int16 labels of the grid's shape.
    """
    rank = len(coordinates)
    lower = [position.floor().long() for position in coordinates]
    labels = cells[tuple(index.reshape([-1 if a == d else 1 for a in range(rank)]) for d, index in enumerate(lower))]
    points = (labels < 0).nonzero(as_tuple=True)
    if points[0].numel() == 0:
        return labels
    strides = [math.prod(cells.shape[d + 1 :]) for d in range(rank)]
    low = [lower[d][points[d]] for d in range(rank)]
    fraction = [(coordinates[d][points[d]] - low[d]).to(voxels.dtype) for d in range(rank)]
    # per axis, (row offset, weight) of the lower and the upper neighbour
    sides = [((low[d] * strides[d], 1 - fraction[d]),
              ((low[d] + 1).clamp(max=cells.shape[d] - 1) * strides[d], fraction[d])) for d in range(rank)]
    values = torch.zeros(points[0].numel(), voxels.shape[1], dtype=voxels.dtype, device=voxels.device)
    for corner in itertools.product(*sides):
        rows, weight = corner[0]
        for offset, factor in corner[1:]:
            rows, weight = rows + offset, weight * factor
        values.addcmul_(voxels[rows], weight[:, None])
    labels[points] = values.argmax(dim=1).to(labels.dtype)
    return labels


class InvertToLabelsd(MapTransform):
    """Undo the preprocessing's grid changes on class probabilities and keep their argmax as a ``uint8`` label map.

    The result is ``Invertd(nearest_interp=False)`` followed by ``AsDiscreted(argmax=True)`` on the same
    probabilities: the preprocessing's transforms after its ``Spacingd`` (a crop) are undone on the
    probabilities, which are then resampled back to the scan's grid as ``Spacingd``'s own inverse does (its
    interpolation, padding and ``align_corners``), slab by slab along the last spatial axis, each slab's source
    holding the neighbours its interpolation reads (for the bundles' bilinear ``border`` resampling of an
    axis-aligned grid, by :func:`labels_by_cells`: interpolated only where neighbouring source voxels' argmax
    differ); the transforms before ``Spacingd`` (the orientation) are
    undone on the label map. Labels match the two-step path's wherever the two highest probabilities are not
    tied to rounding; the metadata (affine, ``filename_or_obj``, ...) is the scan's, as ``Invertd`` leaves it.

    The preprocessing must hold one ``Spacingd`` with ``bilinear`` or ``nearest`` interpolation and ``border``
    or ``zeros`` padding, which read a point's neighbours only: a slab reproduces them exactly (splines filter
    the whole volume, reflection reads beyond the slab).

    Args:
        keys: the class probabilities, ``C x spatial`` on the preprocessed grid.
        transform: the preprocessing that made the image (a ``Compose``).
        orig_keys: the preprocessed image, whose ``applied_operations`` say what to undo.
        slab_bytes: the float32 probabilities resampled at once; sets the slab's thickness.
        allow_missing_keys: skip absent keys.

    Raises:
        BundleError: if ``transform`` holds no ``Spacingd`` or more than one, or one that slabs do not reproduce
            (a config's mistake, named before any scan is read).
    """

    def __init__(self, keys: KeysCollection, transform: Compose, orig_keys: str = "image",
                 slab_bytes: int = SLAB_BYTES, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        invertible = [t for t in transform.flatten().transforms if isinstance(t, InvertibleTransform)]
        spacings = [index for index, t in enumerate(invertible) if isinstance(t, Spacingd)]
        if len(spacings) != 1:
            raise BundleError(f"InvertToLabelsd: the preprocessing must hold one Spacingd, it holds {len(spacings)}.")
        self.spacing: Spacingd = invertible[spacings[0]]
        for mode, padding in zip(self.spacing.mode, self.spacing.padding_mode):
            mode, padding = getattr(mode, "value", mode), getattr(padding, "value", padding)
            if mode not in LOCAL_MODES or padding not in SLAB_PADDINGS:
                raise BundleError(
                    f"InvertToLabelsd: the preprocessing's Spacingd has mode {mode!r} and padding_mode {padding!r}; "
                    f"a slab at a time gives Invertd's labels for modes {', '.join(LOCAL_MODES)} with padding_mode "
                    f"{', '.join(SLAB_PADDINGS)} only."
                )
        self.transform = transform
        self.before_spacing = invertible[: spacings[0]]
        self.after_spacing = invertible[spacings[0] + 1 :]
        self.orig_keys = orig_keys
        self.slab_bytes = slab_bytes

    def _undo(self, transforms: list[InvertibleTransform], image: MetaTensor) -> MetaTensor:
        """``image`` with ``transforms`` undone, last first, as ``Compose.inverse`` does."""
        data: dict[Hashable, Any] = {self.orig_keys: image}
        with allow_missing_keys_mode(self.transform):
            for transform in reversed(transforms):
                data = transform.inverse(data)
        return data[self.orig_keys]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Replace each key's probabilities by the label map on the scan's grid, ``(1, *spatial)`` ``uint8``."""
        result = dict(data)
        image = result[self.orig_keys]
        for key in self.key_iterator(result):
            probabilities = torch.as_tensor(result[key]).detach()
            if probabilities.shape[0] > 256:
                raise BundleError(f"InvertToLabelsd: {probabilities.shape[0]} classes do not fit a uint8 label map.")
            probabilities = MetaTensor(probabilities, meta=deepcopy(image.meta),
                                       applied_operations=deepcopy(image.applied_operations))
            probabilities = self._undo(self.after_spacing, probabilities)
            labels = self._resample_to_labels(probabilities)
            result[key] = self._undo(self.before_spacing, labels)
        return result

    def _resample_to_labels(self, probabilities: MetaTensor) -> MetaTensor:
        """Undo ``Spacingd`` on ``probabilities`` slab by slab, keeping each slab's argmax."""
        resampler = self.spacing.spacing_transform.sp_resample
        record = resampler.pop_transform(probabilities)
        info = record[TraceKeys.EXTRA_INFO]
        align_corners = False if info["align_corners"] == TraceKeys.NONE else info["align_corners"]
        resample = SpatialResample(mode=info["mode"], padding_mode=info["padding_mode"], align_corners=align_corners,
                                   dtype=get_torch_dtype_from_string(info["dtype"]))
        target_affine = torch.as_tensor(info["src_affine"], dtype=torch.float64)
        target_size = tuple(int(n) for n in record[TraceKeys.ORIG_SIZE])
        source_affine = torch.as_tensor(probabilities.affine, dtype=torch.float64)
        source = probabilities.as_tensor()
        to_source = torch.linalg.solve(source_affine, target_affine)
        unchanged = source.shape[1:] == target_size and np.allclose(
            to_source.numpy(), np.eye(len(target_affine)), atol=AFFINE_TOL)
        # Bilinear, border, axis-aligned (Orientationd then Spacingd): per-axis coordinates, argmax by cells.
        rotation = to_source[:-1, :-1]
        by_cells = (info["mode"], info["padding_mode"], align_corners) == ("bilinear", "border", False) and bool(
            torch.allclose(rotation, torch.diag(torch.diagonal(rotation)), rtol=0.0, atol=AXIS_ALIGNED_TOL))
        if by_cells:
            cells = cell_labels(source.argmax(dim=0))
            voxels = source.reshape(source.shape[0], -1).T.contiguous()
            axes = [_source_axis(to_source[d, d], to_source[d, -1], n, source.shape[d + 1]).to(source.device)
                    for d, n in enumerate(target_size)]
        labels = torch.empty((1, *target_size), dtype=torch.uint8, device=source.device)
        plane = math.prod(target_size[:-1]) * source.shape[0] * 4
        thickness = max(1, self.slab_bytes // plane)
        for start in range(0, target_size[-1], thickness):
            stop = min(start + thickness, target_size[-1])
            if unchanged:  # Spacingd did not resample, so its inverse does not either
                slab_labels = source[..., start:stop].argmax(dim=0)
            elif by_cells:
                slab_labels = labels_by_cells(voxels, cells, [*axes[:-1], axes[-1][start:stop]])
            else:
                slab_affine, slab_size = _shifted(target_affine, start), (*target_size[:-1], stop - start)
                low, high = source_range(source_affine, slab_affine, slab_size, source.shape[-1])
                slab_source = MetaTensor(source[..., low:high], affine=_shifted(source_affine, low))
                with resample.trace_transform(False):
                    slab = resample(slab_source, dst_affine=slab_affine, spatial_size=slab_size).as_tensor()
                slab_labels = slab.argmax(dim=0)
            labels[0, ..., start:stop] = slab_labels
        meta = {**probabilities.meta, "affine": target_affine}
        return MetaTensor(labels, meta=meta, applied_operations=probabilities.applied_operations)
