"""Draws what RandPaperElasticd does to a 2D image and its label, for the README.

Usage: ``PYTHONPATH=. python benchmarks/elastic_figure.py [--out docs/images/elastic_2d.png]`` with a
synthetic checkerboard and disc, or ``--image scan.nii.gz --label label.nii.gz`` for the middle slice (last
axis) of a volume. Each panel shows the image, the label's outline and the 3 x 3 control grid: arrows go from
where the content of each control point came from to where it lands.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import torch

from unet_med.transforms import RandPaperElasticd, dense_displacement

SIGMAS = (0.0, 10.0, 25.0)


def synthetic(size: int = 256, square: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """A checkerboard image and a disc label, both ``(1, size, size)``."""
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    image = (((rows // square) + (cols // square)) % 2).float() * 0.6 + 0.2
    label = (((rows - 0.55 * size) ** 2 + (cols - 0.45 * size) ** 2) < (0.2 * size) ** 2).to(torch.uint8)
    return image[None], label[None]


def middle_slice(image_path: str, label_path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The middle slice along the last axis of a NIfTI image and its label, as ``(1, H, W)`` tensors."""
    image = np.asarray(nib.load(image_path).dataobj, dtype=np.float32)
    label = np.asarray(nib.load(label_path).dataobj).astype(np.uint8)
    middle = image.shape[-1] // 2
    image = image[..., middle]
    image = (image - image.min()) / max(float(np.ptp(image)), 1e-6)
    return torch.from_numpy(image)[None], torch.from_numpy(label[..., middle])[None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="docs/images/elastic_2d.png")
    parser.add_argument("--image", help="NIfTI image; default: a synthetic checkerboard")
    parser.add_argument("--label", help="NIfTI label of --image")
    parser.add_argument("--seed", type=int, default=4)
    args = parser.parse_args()
    image, label = middle_slice(args.image, args.label) if args.image else synthetic()
    size = image.shape[1:]
    figure, axes = plt.subplots(1, len(SIGMAS), figsize=(4 * len(SIGMAS), 4.3))
    for ax, sigma in zip(axes, SIGMAS, strict=True):
        transform = RandPaperElasticd(["image", "label"], prob=1.0, sigma=sigma, mode=["bicubic", "nearest"])
        transform.set_random_state(args.seed)
        out = transform({"image": image, "label": label})
        control = transform.elastic.control if sigma > 0 else np.zeros((3, 3, 2))
        points = np.stack(np.meshgrid(*[np.linspace(0, s - 1, 3) for s in size], indexing="ij"), -1)
        field = dense_displacement(torch.as_tensor(control, dtype=torch.float32)[None], size)[0]
        ax.imshow(out["image"][0], cmap="gray", vmin=0, vmax=1)
        ax.contour(out["label"][0], levels=[0.5], colors="tab:red", linewidths=1.5)
        ax.quiver(
            points[..., 1] + control[..., 1], points[..., 0] + control[..., 0],
            -control[..., 1], -control[..., 0],
            angles="xy", scale_units="xy", scale=1, color="tab:cyan", width=0.006,
        )  # fmt: skip
        ax.plot(points[..., 1].ravel(), points[..., 0].ravel(), "o", color="tab:cyan", markersize=5)
        shown = float(field.norm(dim=-1).max())
        ax.set_title(f"sigma = {sigma:g} px (max shift {shown:.0f} px)" if sigma else "input, control grid")
        ax.set_xlim(-8, size[1] + 7)
        ax.set_ylim(size[0] + 7, -8)
        ax.set_axis_off()
    figure.suptitle("RandPaperElasticd: control displacements ~ N(0, sigma), bicubic in between")
    figure.tight_layout(rect=(0, 0, 1, 0.94))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
