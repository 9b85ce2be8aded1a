"""The U-Net paper's elastic deformation: random displacements on a coarse grid, cubic interpolation between.

Ronneberger et al. (2015) drew "random displacement vectors on a coarse 3 by 3 grid" from a Gaussian with a
10-pixel standard deviation and interpolated them bicubically to every pixel. This module does the same in
2D and 3D. The dense field comes from the control grid by one small matrix product per axis (cubic
interpolation is separable), so it costs a few multiply-adds per voxel; the images are then resampled once
per key with :func:`torch.nn.functional.grid_sample`, on the input's device.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import ensure_tuple_rep
from torch.nn.functional import grid_sample

__all__ = [
    "RandPaperElastic",
    "RandPaperElasticd",
    "cubic_interpolation_matrix",
    "dense_displacement",
    "sampling_grid",
    "warp",
]

MODES = ("bilinear", "nearest", "bicubic")
PADDING_MODES = ("reflection", "zeros", "border")
SIGMA_UNITS = ("voxel", "mm")
# Below this many voxels a volume is resampled in one call: splitting it costs more than it saves.
MIN_VOXELS_TO_SPLIT = 1 << 16


def cubic_interpolation_matrix(
    n_control: int, size: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """Matrix that interpolates ``n_control`` evenly spaced samples to ``size`` points with a cubic kernel.

    The control points sit at voxels ``0, (size - 1) / (n_control - 1), ..., size - 1``: the first and the
    last on the border voxels' centres. The kernel is the Catmull-Rom cubic convolution (Keys' kernel with
    ``a = -0.5``), which passes through the samples. Beyond the ends the samples are extended linearly, so
    that linear functions are reproduced exactly everywhere (and quadratics away from the ends).

    Args:
        n_control: number of control points along the axis, at least 2.
        size: number of voxels along the axis, at least 1.
        dtype: dtype of the matrix.
        device: device of the matrix.

    Returns:
        ``(size, n_control)`` tensor whose rows sum to 1; ``matrix @ samples`` interpolates.
    """
    if n_control < 2 or size < 1:
        raise ValueError(f"need at least 2 control points and 1 voxel, got {n_control} and {size}.")
    position = torch.arange(size, dtype=torch.float64) * ((n_control - 1) / max(size - 1, 1))
    left = position.floor().clamp(max=n_control - 2)
    t = (position - left).unsqueeze(1)
    # Catmull-Rom weights of the samples at left - 1, left, left + 1 and left + 2.
    weights = torch.cat(
        [
            0.5 * (-(t**3) + 2 * t**2 - t),
            0.5 * (3 * t**3 - 5 * t**2 + 2),
            0.5 * (-3 * t**3 + 4 * t**2 + t),
            0.5 * (t**3 - t**2),
        ],
        dim=1,
    )
    # Columns over the samples extended by one on each side: sample -1 is at column 0.
    columns = left.long().unsqueeze(1) + torch.arange(4)
    extended = torch.zeros(size, n_control + 2, dtype=torch.float64).scatter_add_(1, columns, weights)
    # Sample -1 is 2 * sample 0 - sample 1, sample n is 2 * sample n-1 - sample n-2.
    extension = torch.zeros(n_control + 2, n_control, dtype=torch.float64)
    extension[1:-1] = torch.eye(n_control, dtype=torch.float64)
    extension[0, :2] = torch.tensor([2.0, -1.0], dtype=torch.float64)
    extension[-1, -2:] = torch.tensor([-1.0, 2.0], dtype=torch.float64)
    return (extended @ extension).to(dtype=dtype, device=device)


def dense_displacement(control: torch.Tensor, spatial_size: Sequence[int]) -> torch.Tensor:
    """Interpolates control-point values to every voxel, one separable cubic pass per axis.

    The last spatial axis is interpolated first and the first one last, so the largest step is a single
    matrix product that writes the contiguous output.

    Args:
        control: ``(B, *N, K)`` values on a grid of ``N`` control points per axis (``len(N)`` spatial axes);
            the last axis holds ``K`` components (e.g. the displacement along each axis), interpolated
            independently.
        spatial_size: ``S``, the number of voxels per axis.

    Returns:
        ``(B, *S, K)`` tensor on ``control``'s device and dtype.
    """
    dims = len(spatial_size)
    if control.ndim != dims + 2:
        raise ValueError(
            f"control must be (B, *N, K) with {dims} spatial axes, got shape {tuple(control.shape)}."
        )
    field = control
    for axis in reversed(range(dims)):
        lead, n, trail = field.shape[: axis + 1], field.shape[axis + 1], field.shape[axis + 2 :]
        matrix = cubic_interpolation_matrix(n, spatial_size[axis], control.dtype, control.device)
        field = (matrix @ field.reshape(*lead, n, -1)).reshape(*lead, spatial_size[axis], *trail)
    return field


def sampling_grid(control: torch.Tensor, spatial_size: Sequence[int]) -> torch.Tensor:
    """``grid_sample`` grid (``align_corners=True``) that moves each voxel by the interpolated displacement.

    Args:
        control: ``(B, *N, D)`` displacements in voxels of the control points, component ``i`` along spatial
            axis ``i``; ``D = len(spatial_size)``.
        spatial_size: ``S``, the number of voxels per axis.

    Returns:
        ``(B, *S, D)`` normalised sampling positions in ``[-1, 1]`` (outside where the displacement leaves
        the volume), components in ``grid_sample``'s order (last spatial axis first): the output voxel ``p``
        takes the input's value at ``p + displacement(p)``.
    """
    dims = len(spatial_size)
    if control.shape[-1] != dims:
        raise ValueError(f"control needs {dims} displacement components, got {control.shape[-1]}.")
    # Voxels to normalised units is linear and the interpolation reproduces linear functions, so the
    # scaling and the identity (each control point's own position) go on the few control values.
    scale = torch.tensor(
        [2.0 / max(s - 1, 1) for s in spatial_size], dtype=control.dtype, device=control.device
    )
    axes = [
        torch.linspace(-1.0, 1.0, n, dtype=control.dtype, device=control.device) for n in control.shape[1:-1]
    ]
    identity = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
    return dense_displacement((control * scale + identity).flip(-1), spatial_size)


def warp(
    img: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear", padding_mode: str = "reflection"
) -> torch.Tensor:
    """Resamples ``img`` at ``grid`` with ``grid_sample`` (``align_corners=True``), keeping its dtype.

    On CPU, PyTorch's ``grid_sample`` runs the samples of a batch in parallel but one sample on one thread,
    so a single volume is cut into slabs along its first spatial axis, one per thread, given to
    ``grid_sample`` as a batch that shares the (not copied) input: the same output, on every core.

    Args:
        img: ``(B, C, *S)`` image, floating or integer (integer labels want ``mode="nearest"``: the output
            then holds only input values).
        grid: ``(B, *S_out, D)`` from :func:`sampling_grid`.
        mode: ``"bilinear"`` (trilinear in 3D), ``"nearest"`` or ``"bicubic"`` (2D only).
        padding_mode: value outside the volume: ``"reflection"``, ``"zeros"`` or ``"border"``.

    Returns:
        ``(B, C, *S_out)`` tensor of ``img``'s dtype.
    """
    _check_mode(mode, padding_mode, img.ndim - 2)
    values = img if img.is_floating_point() else img.float()
    grid = grid.to(values.dtype)
    threads = torch.get_num_threads() if values.device.type == "cpu" else 1
    slabs = min(math.ceil(threads / img.shape[0]), grid.shape[1])
    if slabs > 1 and grid[0, ..., 0].numel() >= MIN_VOXELS_TO_SPLIT:
        outs = [_warp_in_slabs(v, g, mode, padding_mode, slabs) for v, g in zip(values, grid, strict=True)]
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
    else:
        out = grid_sample(values, grid, mode=mode, padding_mode=padding_mode, align_corners=True)
    if img.is_floating_point():
        return out
    return out.round().to(img.dtype)


def _warp_in_slabs(
    img: torch.Tensor, grid: torch.Tensor, mode: str, padding_mode: str, slabs: int
) -> torch.Tensor:
    """Resamples one ``(C, *S)`` image at one ``(*S_out, D)`` grid, the first output axis cut into slabs."""
    length = grid.shape[0]
    slab = math.ceil(length / slabs)
    pad = slab * slabs - length
    if pad:  # repeat the last plane so that the slabs are equal; its outputs are dropped below
        grid = torch.cat([grid, grid[-1:].expand(pad, *grid.shape[1:])])
    batch = img.unsqueeze(0).expand(slabs, *img.shape)
    out = grid_sample(
        batch,
        grid.reshape(slabs, slab, *grid.shape[1:]),
        mode=mode,
        padding_mode=padding_mode,
        align_corners=True,
    )
    out = out.transpose(0, 1).reshape(img.shape[0], slab * slabs, *out.shape[3:])
    return out[:, :length].unsqueeze(0)


def _check_mode(mode: str, padding_mode: str, spatial_dims: int) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}.")
    if mode == "bicubic" and spatial_dims != 2:
        raise ValueError("mode 'bicubic' works on 2D images only (grid_sample has no tricubic mode).")


class RandPaperElastic(RandomizableTransform):
    """Random elastic deformation of a channel-first image, as in the U-Net paper.

    Displacements of a coarse grid of control points (``grid_size`` per axis, spanning the image from border
    voxel to border voxel) are drawn from a zero-mean Gaussian with standard deviation ``sigma``,
    independently per control point and axis, and interpolated to every voxel with a cubic kernel: bicubic in
    2D and tricubic in 3D, the tensor product of the 1D Catmull-Rom kernel. An interpolating kernel (rather
    than a cubic B-spline, which smooths the control values) keeps the paper's meaning of ``sigma``: each
    control point moves by exactly its drawn vector, so the displacement has standard deviation ``sigma`` at
    the control points and the field is smooth (C1) between them. Each output voxel ``p`` takes the input's
    value at ``p + u(p)``. The affine and other metadata are kept: the image moves within its voxel grid.

    Args:
        prob: probability of deforming; otherwise the input is returned unchanged.
        sigma: standard deviation of the control-point displacements, in voxels (the paper: 10 pixels), or in
            millimetres with ``sigma_units="mm"``. 0 gives the identity.
        grid_size: control points per axis (the paper: 3), an int or one per spatial axis, each at least 2.
        sigma_units: ``"voxel"``, or ``"mm"`` to draw displacements in physical space from the spacing in the
            input's affine (a ``MetaTensor`` is then required), so that a volume with anisotropic voxels
            deforms evenly in millimetres.
        max_displacement: if given, each control displacement component is clipped to
            ``[-max_displacement, max_displacement]``, in the units of ``sigma``.
        mode: interpolation of the image: ``"bilinear"`` (trilinear in 3D), ``"bicubic"`` (2D only) or
            ``"nearest"`` (for labels: the output holds only the input's values).
        padding_mode: values taken from outside the image: ``"reflection"``, ``"zeros"`` or ``"border"``.

    Shapes:
        ``(C, *S)`` with 2 or 3 spatial axes, on any device, to the same shape, dtype and device.
    """

    backend = [torch.Tensor]

    def __init__(
        self,
        prob: float = 0.1,
        sigma: float = 10.0,
        grid_size: int | Sequence[int] = 3,
        sigma_units: str = "voxel",
        max_displacement: float | None = None,
        mode: str = "bilinear",
        padding_mode: str = "reflection",
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        if not math.isfinite(sigma) or sigma < 0:
            raise ValueError(f"sigma must be a finite number of at least 0, got {sigma}.")
        if sigma_units not in SIGMA_UNITS:
            raise ValueError(f"sigma_units must be one of {SIGMA_UNITS}, got {sigma_units!r}.")
        if max_displacement is not None and not (math.isfinite(max_displacement) and max_displacement >= 0):
            raise ValueError(f"max_displacement must be a finite number of at least 0, got {max_displacement}.")
        sizes = (grid_size,) if isinstance(grid_size, int) else tuple(grid_size)
        if len(sizes) not in (1, 2, 3) or any(int(n) < 2 for n in sizes):
            raise ValueError(f"grid_size must be an int or one per axis, each at least 2, got {grid_size}.")
        _check_mode(mode, padding_mode, 2)
        self.sigma = float(sigma)
        self.grid_size = tuple(int(n) for n in sizes)
        self.sigma_units = sigma_units
        self.max_displacement = max_displacement
        self.mode = mode
        self.padding_mode = padding_mode
        self.control: np.ndarray | None = None

    def randomize(self, spatial_dims: int) -> None:
        """Decides whether to deform and draws the control displacements in ``sigma``'s units.

        Args:
            spatial_dims: 2 or 3; sets ``self.control`` to a ``(*grid_size, spatial_dims)`` array.
        """
        super().randomize(None)
        if not self._do_transform:
            return
        grid = self.grid_size * spatial_dims if len(self.grid_size) == 1 else self.grid_size
        if len(grid) != spatial_dims:
            raise ValueError(f"grid_size {self.grid_size} does not match {spatial_dims} spatial axes.")
        control = self.R.normal(0.0, self.sigma, size=(*grid, spatial_dims)) if self.sigma > 0 else None
        if control is not None and self.max_displacement is not None:
            control = np.clip(control, -self.max_displacement, self.max_displacement)
        self.control = control

    def grid(self, img: torch.Tensor) -> torch.Tensor | None:
        """Sampling grid of the last drawn displacements for images shaped and spaced like ``img``.

        Args:
            img: ``(C, *S)`` reference image (its spacing is read for ``sigma_units="mm"``).

        Returns:
            ``(1, *S, D)`` grid for :func:`warp` on ``img``'s device, or ``None`` when nothing moves.
        """
        if not self._do_transform or self.control is None or not np.any(self.control):
            return None
        spatial_dims = img.ndim - 1
        control = torch.as_tensor(self.control, dtype=torch.float32, device=img.device)
        if self.sigma_units == "mm":
            control = control / torch.as_tensor(voxel_spacing(img), dtype=torch.float32, device=img.device)
        return sampling_grid(control.unsqueeze(0), img.shape[1 : 1 + spatial_dims])

    def __call__(
        self,
        img: torch.Tensor,
        randomize: bool = True,
        mode: str | None = None,
        padding_mode: str | None = None,
    ) -> torch.Tensor:
        """Deforms ``img`` with probability ``prob``.

        Args:
            img: ``(C, *S)`` tensor or ``MetaTensor``, 2 or 3 spatial axes.
            randomize: draw a new deformation; ``False`` reuses the last one.
            mode: overrides the constructor's ``mode`` for this call.
            padding_mode: overrides the constructor's ``padding_mode`` for this call.

        Returns:
            The deformed image, same type, shape, dtype, device and metadata.
        """
        _check_spatial_dims(img)
        if randomize:
            self.randomize(img.ndim - 1)
        grid = self.grid(img)
        if grid is None:
            return img
        return _resample(img, grid, mode or self.mode, padding_mode or self.padding_mode)


class RandPaperElasticd(MapTransform, RandomizableTransform):
    """Dictionary version of :class:`RandPaperElastic`: one deformation per sample, applied to every key.

    Args:
        keys: keys of the images to deform, all with the same spatial shape.
        prob: probability of deforming the sample.
        sigma: standard deviation of the control-point displacements, in voxels or, with
            ``sigma_units="mm"``, millimetres (read from the affine of the first key holding a
            ``MetaTensor``).
        grid_size: control points per axis, an int or one per spatial axis.
        sigma_units: ``"voxel"`` or ``"mm"``.
        max_displacement: optional clipping of each control displacement component, in ``sigma``'s units.
        mode: interpolation, one for all keys or one per key, e.g. ``["bilinear", "nearest"]`` for an image
            and its label: ``"bilinear"``, ``"bicubic"`` (2D) or ``"nearest"``.
        padding_mode: ``"reflection"``, ``"zeros"`` or ``"border"``, one for all keys or one per key.
        allow_missing_keys: skip keys absent from the data instead of raising ``KeyError``.
    """

    backend = RandPaperElastic.backend

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.1,
        sigma: float = 10.0,
        grid_size: int | Sequence[int] = 3,
        sigma_units: str = "voxel",
        max_displacement: float | None = None,
        mode: str | Sequence[str] = "bilinear",
        padding_mode: str | Sequence[str] = "reflection",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        self.padding_mode = ensure_tuple_rep(padding_mode, len(self.keys))
        for m, p in zip(self.mode, self.padding_mode, strict=True):
            _check_mode(m, p, 2)
        self.elastic = RandPaperElastic(1.0, sigma, grid_size, sigma_units, max_displacement)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        """Seeds this transform and the array transform it draws displacements with."""
        super().set_random_state(seed, state)
        self.elastic.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        """Deforms every key of ``data`` with the same random displacement field (with probability ``prob``).

        Args:
            data: sample dictionary; the keys hold ``(C, *S)`` tensors of one spatial shape.

        Returns:
            A shallow copy of ``data`` with the keys deformed.
        """
        d = dict(data)
        present = list(self.key_iterator(d, self.mode, self.padding_mode))
        self.randomize(None)
        if not self._do_transform or not present:
            return d
        reference = _reference(d, [key for key, _, _ in present], self.elastic.sigma_units)
        self.elastic.randomize(reference.ndim - 1)
        grid = self.elastic.grid(reference)
        if grid is None:
            return d
        for key, mode, padding_mode in present:
            if d[key].shape[1:] != reference.shape[1:]:
                raise ValueError(
                    f"all keys need one spatial shape, {key!r} has {tuple(d[key].shape[1:])}, "
                    f"expected {tuple(reference.shape[1:])}."
                )
            d[key] = _resample(d[key], grid.to(d[key].device), mode, padding_mode)
        return d


def _resample(img: torch.Tensor, grid: torch.Tensor, mode: str, padding_mode: str) -> torch.Tensor:
    """Warps one ``(C, *S)`` image and gives back the input's type with its metadata (affine unchanged)."""
    tensor = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)
    out = warp(tensor.unsqueeze(0), grid, mode, padding_mode)[0]
    if isinstance(img, MetaTensor):
        return MetaTensor(out, meta=img.meta, applied_operations=img.applied_operations)
    return out


def _check_spatial_dims(img: torch.Tensor) -> None:
    if img.ndim not in (3, 4):
        raise ValueError(
            f"expected a channel-first (C, *S) image with 2 or 3 spatial axes, got {tuple(img.shape)}."
        )


def _reference(data: Mapping[Hashable, torch.Tensor], keys: list[Hashable], sigma_units: str) -> torch.Tensor:
    """The image that sets shape and spacing: with ``mm``, the first ``MetaTensor``; else the first key."""
    for key in keys:
        _check_spatial_dims(data[key])
    if sigma_units == "mm":
        for key in keys:
            if isinstance(data[key], MetaTensor):
                return data[key]
    return data[keys[0]]


def voxel_spacing(img: torch.Tensor) -> torch.Tensor:
    """Voxel spacing in mm per spatial axis, from a ``MetaTensor``'s affine."""
    if not isinstance(img, MetaTensor):
        raise ValueError("sigma_units='mm' needs a MetaTensor input whose affine gives the voxel spacing.")
    spatial_dims = img.ndim - 1
    spacing = affine_to_spacing(img.affine.float(), r=spatial_dims, suppress_zeros=True)
    return torch.as_tensor(spacing, dtype=torch.float32)
