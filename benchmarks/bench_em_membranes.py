"""The U-Net paper's EM segmentation experiment (ISBI 2012) on a CPU-sized budget.

Trains three 2D networks the same way on 20 of the 25 labelled slices of the ISBI 2012 EM challenge and
evaluates them on the other 5 with overlap-tile inference:

* ``valid``: the paper's configuration (unpadded convolutions, no normalisation, ReLU, 5 levels) at the width
  of ``--features`` (the paper's 64..1024 is too slow on a CPU; default 16..256);
* ``same``: the same network with padded convolutions;
* ``basic``: MONAI's ``BasicUNet`` with the same widths (its defaults otherwise).

Every network trains on square input patches of at most ``--patch`` voxels cut from the mirror-padded slices
(for the valid network the loss covers the patch's centre, ``2 * margin`` smaller), with random flips and
90-degree rotations, plain cross-entropy and Adam. ``--elastic`` and ``--weight-map`` switch to the paper's
elastic deformation and border-weighted loss from ``unet_med.transforms`` and ``unet_med.losses``.

Prints, per network, the pixel error and the foreground-restricted Rand error (as the ISBI 2012 challenge
scores them) of the thresholded cell-interior probability on the held-out slices, and writes a PNG of one
held-out slice with its predictions. The data (``train/images/*.png`` and ``train/labels/*.png``, label 255
for cell interior and 0 for membrane) is not part of this repository.

Example:
    PYTHONPATH=. python benchmarks/bench_em_membranes.py path/to/em_data --elastic --weight-map --out em.png
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNet
from PIL import Image
from scipy import ndimage, sparse

from unet_med import OverlapTileInferer, UNet
from unet_med.inferers.tiling import mirror_pad

TRAIN_SLICES = 20
SAME_MODE_MARGIN = 16


def load_slices(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 1, H, W)`` scaled to [0, 1] and cell-interior masks ``(N, 1, H, W)`` of 0 and 1."""
    image_paths = sorted((root / "train" / "images").glob("*.png"))
    label_paths = sorted((root / "train" / "labels").glob("*.png"))
    if not image_paths or [p.name for p in image_paths] != [p.name for p in label_paths]:
        raise SystemExit(f"expected matching train/images/*.png and train/labels/*.png under {root}")
    images = np.stack([np.asarray(Image.open(p), dtype=np.float32) / 255.0 for p in image_paths])
    labels = np.stack([np.asarray(Image.open(p)) > 127 for p in label_paths]).astype(np.int64)
    return torch.from_numpy(images)[:, None], torch.from_numpy(labels)[:, None]


def build_networks(features: list[int], patch: int) -> dict[str, tuple[torch.nn.Module, int, int]]:
    """Per name: the network, its training input patch size and the margin its output loses per side."""
    paper = {"features": features, "norm": None, "act": "relu"}
    valid = UNet(2, 1, 2, conv_mode="valid", **paper)
    valid_sizes = valid.geometry.valid_input_sizes(0, patch)
    if not valid_sizes:
        raise SystemExit(f"--patch {patch} is smaller than the smallest valid input of the valid network")
    same = UNet(2, 1, 2, conv_mode="same", **paper)
    step = same.geometry.divisor[0]
    basic_features = (*features[:5], features[0]) if len(features) >= 5 else None
    if basic_features is None:
        raise SystemExit("--features needs at least 5 levels for MONAI's BasicUNet")
    return {
        "valid": (valid, valid_sizes[-1], valid.geometry.margin[0]),
        "same": (same, patch // step * step, 0),
        "basic": (
            BasicUNet(spatial_dims=2, in_channels=1, out_channels=2, features=basic_features),
            patch // 16 * 16,
            0,
        ),
    }


def flip_rotate(pair: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Random flips and a random multiple of 90 degrees, alike for every channel of ``pair`` ``(C, H, W)``."""
    if rng.random() < 0.5:
        pair = pair.flip(-1)
    return torch.rot90(pair, int(rng.integers(4)), dims=(-2, -1))


def paper_pieces(elastic: bool, weight_map: bool) -> tuple[Callable | None, Callable | None, Callable | None]:
    """The paper's elastic deformation, weight map and weighted loss, imported only when asked for."""
    try:
        deform = weigh = loss = None
        if elastic:
            from unet_med.transforms import RandPaperElasticd

            deform = RandPaperElasticd(keys=["image", "label"], mode=["bilinear", "nearest"], prob=1.0)
        if weight_map:
            from unet_med.losses import WeightedCELoss
            from unet_med.transforms import BorderWeightMapd

            weigh, loss = BorderWeightMapd(keys="label"), WeightedCELoss()
    except ImportError as error:
        raise SystemExit(
            f"--elastic/--weight-map need unet_med.transforms and unet_med.losses: {error}"
        ) from None
    return deform, weigh, loss


def sample(
    images: torch.Tensor,
    labels: torch.Tensor,
    size: int,
    margin: int,
    rng: np.random.Generator,
    deform: Callable | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """An augmented training pair: input patch ``(1, size, size)``, target ``(size - 2 margin)`` squared."""
    k = int(rng.integers(len(images)))
    out = size - 2 * margin
    top, left = (int(rng.integers(max(1, n - out + 1))) for n in images.shape[2:])
    pad = [(margin, margin + max(0, out - n)) for n in images.shape[2:]]
    window = (slice(None), slice(top, top + size), slice(left, left + size))
    image = mirror_pad(images[k : k + 1], pad)[0][window]
    label = mirror_pad(labels[k : k + 1], pad)[0][window]
    pair = flip_rotate(torch.cat([image, label.float()]), rng)
    image, label = pair[:1], pair[1:]
    if deform is not None:
        deformed = deform({"image": image, "label": label})
        image, label = torch.as_tensor(deformed["image"]), torch.as_tensor(deformed["label"])
    return image, label[0, margin : margin + out, margin : margin + out].round().long()


def train(
    network: torch.nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    size: int,
    margin: int,
    args: argparse.Namespace,
) -> float:
    """Trains ``network`` for ``args.steps`` steps; returns the seconds it took."""
    deform, weigh, weighted_loss = paper_pieces(args.elastic, args.weight_map)
    rng = np.random.default_rng(args.seed)
    optimiser = torch.optim.Adam(network.parameters(), lr=args.lr)
    network.train()
    start = time.perf_counter()
    for step in range(args.steps):
        image, target = sample(*data, size, margin, rng, deform)
        logits = network(image[None])
        if weigh is not None:
            instances = torch.from_numpy(ndimage.label(target.numpy())[0])[None]
            weight = torch.as_tensor(weigh({"label": instances})["weight"])
            loss = weighted_loss(logits, target[None, None], weight[None])
        else:
            loss = F.cross_entropy(logits, target[None])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % max(1, args.steps // 10) == 0 or step == args.steps - 1:
            print(f"  step {step + 1}/{args.steps}: loss {loss.item():.4f}", flush=True)
    return time.perf_counter() - start


def predict(network: torch.nn.Module, images: torch.Tensor, margin: int | None, tile: int) -> np.ndarray:
    """Cell-interior masks ``(N, H, W)``: softmax probability above 0.5, by overlap-tile inference."""
    inferer = OverlapTileInferer(max_input_tile=tile, sw_batch_size=2, margin=margin)
    network.eval()
    with torch.no_grad():
        return (torch.softmax(inferer(images, network), dim=1)[:, 1] > 0.5).numpy()


def pixel_error(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of pixels whose class (cell interior or membrane) is wrong."""
    return float(np.mean(predicted != truth))


def rand_error(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Foreground-restricted Rand error of two cell-interior masks ``(H, W)``, as scored in ISBI 2012.

    Cells are the 4-connected components of each mask. Only pixels inside a true cell count; a pixel that
    the prediction calls membrane counts as a segment of its own. With ``n_ij`` the pixels of true cell ``i``
    and predicted cell ``j``, the error is ``1 - 2 sum n_ij^2 / (sum_i t_i^2 + sum_j p_j^2)`` for the true
    and predicted cell sizes ``t_i`` and ``p_j``: 1 minus the F-score of Rand split and merge scores.
    """
    true_cells = ndimage.label(truth)[0]
    predicted_cells = ndimage.label(predicted)[0]
    inside = true_cells > 0
    count = int(inside.sum())
    if count == 0:
        return 0.0
    joint = sparse.coo_matrix((np.ones(count), (true_cells[inside], predicted_cells[inside]))).tocsr()
    in_cells = joint[:, 1:]
    singletons = count - in_cells.sum()
    agree = in_cells.multiply(in_cells).sum() + singletons
    true_sizes = np.square(np.asarray(joint.sum(axis=1))).sum()
    predicted_sizes = np.square(np.asarray(in_cells.sum(axis=0))).sum() + singletons
    return float(1.0 - 2.0 * agree / (true_sizes + predicted_sizes))


def save_figure(
    path: Path, image: torch.Tensor, truth: np.ndarray, predictions: dict[str, np.ndarray]
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {
        "image": image.numpy(),
        "ground truth": truth,
        **{f"{k} prediction": v for k, v in predictions.items()},
    }
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4))
    for axis, (title, panel) in zip(np.atleast_1d(axes), panels.items(), strict=True):
        axis.imshow(panel, cmap="gray")
        axis.set_title(title)
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="folder with train/images/*.png and train/labels/*.png")
    parser.add_argument("--steps", type=int, default=1000, help="training steps (one patch each) per network")
    parser.add_argument("--tile", type=int, default=572, help="largest inference input tile, voxels per axis")
    parser.add_argument(
        "--patch", type=int, default=572, help="largest training input patch, voxels per axis"
    )
    parser.add_argument(
        "--features", type=int, nargs="+", default=[16, 32, 64, 128, 256], help="widths per level"
    )
    parser.add_argument(
        "--models", nargs="+", choices=["valid", "same", "basic"], default=["valid", "same", "basic"]
    )
    parser.add_argument("--lr", type=float, default=5e-4, help="Adam learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--elastic", action="store_true", help="the paper's elastic deformation (unet_med.transforms)"
    )
    parser.add_argument(
        "--weight-map", action="store_true", help="the paper's border-weighted loss (unet_med.losses)"
    )
    parser.add_argument(
        "--out", type=Path, help="PNG of the first held-out slice with every network's prediction"
    )
    args = parser.parse_args()

    images, labels = load_slices(args.data)
    train_data = (images[:TRAIN_SLICES], labels[:TRAIN_SLICES])
    test_images, truth = images[TRAIN_SLICES:], labels[TRAIN_SLICES:, 0].numpy().astype(bool)
    print(
        f"{len(images)} slices of {tuple(images.shape[2:])}: training on {TRAIN_SLICES}, testing on the rest"
    )
    torch.manual_seed(args.seed)
    networks = build_networks(args.features, args.patch)
    results, predictions = [], {}
    for name in args.models:
        network, size, margin = networks[name]
        print(
            f"{name}: {sum(p.numel() for p in network.parameters()):,} parameters, patches of {size} voxels"
        )
        seconds = train(network, train_data, size, margin, args)
        predicted = predict(network, test_images, None if name == "valid" else SAME_MODE_MARGIN, args.tile)
        predictions[name] = predicted[0]
        pixel = np.mean([pixel_error(p, t) for p, t in zip(predicted, truth, strict=True)])
        rand = np.mean([rand_error(p, t) for p, t in zip(predicted, truth, strict=True)])
        results.append((name, seconds, pixel, rand))
        print(f"{name}: pixel error {pixel:.4f}, Rand error {rand:.4f}, trained in {seconds:.0f} s", flush=True)
    print(f"\n{'network':8} {'train s':>8} {'pixel error':>12} {'Rand error':>11}")
    for name, seconds, pixel, rand in results:
        print(f"{name:8} {seconds:8.0f} {pixel:12.4f} {rand:11.4f}")
    if args.out is not None:
        save_figure(args.out, test_images[0, 0], truth[0], predictions)


if __name__ == "__main__":
    main()
