"""The 3D bundle's predictions brought back to their scans' grid two ways, compared voxel for voxel.

For each scan, the bundle's inference (``configs/inference.yaml``: its preprocessing, windows and softmax) runs
once; its class probabilities then go back to the scan's grid by MONAI's ``Invertd`` (bilinear) followed by
``AsDiscreted(argmax=True)``, as the bundles did before, and by ``unet_med.bundle.inversion.InvertToLabelsd``,
slab by slab, as they do now. The table gives, per scan, the voxels whose labels differ and, of those, how many
are ties (top two probabilities within 1e-5 in ``Invertd``'s probabilities).

    export OMP_NUM_THREADS=1 PYTHONPATH=.
    python benchmarks/bench_inversion.py runs/models /data/Task04_Hippocampus --skip data_samples/imagesTr
    # the hippocampus scans are at the plan's 1 mm: resampled to another spacing, both paths interpolate
    python benchmarks/bench_inversion.py runs/models /data/Task04_Hippocampus --pixdim 1.3 0.8 1.7
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import AsDiscreted, Invertd

from unet_med.bundle.inversion import InvertToLabelsd

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "unet_med_3d_segmentation"
TIE = 1e-5


def compare(parser: ConfigParser, scan: Path) -> tuple[int, int, int]:
    """``(voxels, differing labels, differing labels at ties)`` of one scan."""
    preprocessing, network, inferer = (parser.get_parsed_content(name) for name in ("preprocessing", "network",
                                                                                   "inferer"))
    data = preprocessing({"image": str(scan)})
    with torch.no_grad():
        logits = inferer(data["image"][None], network)[0]
    data["pred"] = MetaTensor(torch.softmax(logits.float(), dim=0).as_subclass(torch.Tensor), meta=data["image"].meta)
    inverted = Invertd("pred", preprocessing, orig_keys="image", nearest_interp=False)(dict(data))["pred"]
    reference = AsDiscreted("pred", argmax=True)({"pred": inverted})["pred"].to(torch.uint8)
    labels = InvertToLabelsd("pred", preprocessing)(dict(data))["pred"]
    if labels.shape != reference.shape or not torch.allclose(labels.affine, reference.affine):
        raise RuntimeError(f"{scan}: another grid: {labels.shape} against {reference.shape}")
    top = inverted.topk(2, dim=0).values
    ties = (top[0] - top[1] <= TIE)[None]
    differ = labels != reference
    return labels.numel(), int(differ.sum()), int((differ & ties).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path, help="a trained model's folder (model.pt, plan.yaml)")
    parser.add_argument("dataset", type=Path, help="a Decathlon folder whose imagesTr holds the scans")
    parser.add_argument("--skip", type=Path, help="a folder of scans to leave out (the ones the model trained on)")
    parser.add_argument("--cases", type=int, default=20, help="how many scans, the first by name")
    parser.add_argument("--pixdim", type=float, nargs=3, help="resample to this spacing, not the plan's (scans at "
                        "the plan's spacing are not interpolated by either path)")
    args = parser.parse_args()
    skip = {path.name for path in args.skip.iterdir()} if args.skip else set()
    scans = [p for p in sorted((args.dataset / "imagesTr").glob("*.nii.gz")) if p.name not in skip][: args.cases]

    config = ConfigParser()
    config.read_config(str(BUNDLE / "configs" / "inference.yaml"))
    config["bundle_root"] = str(BUNDLE)
    config["ckpt_dir"] = str(args.models)
    if args.pixdim:
        config.get_parsed_content("plan")["pixdim"] = args.pixdim  # before the preprocessing is built from it
    weights = torch.load(args.models / "model.pt", map_location="cpu", weights_only=True)["model"]
    config.get_parsed_content("network").load_state_dict(weights)
    config.get_parsed_content("network").eval()

    print("| scan | voxels | labels differing | of them at ties |")
    print("|---|---|---|---|")
    totals = [0, 0, 0]
    for scan in scans:
        counts = compare(config, scan)
        totals = [t + c for t, c in zip(totals, counts)]
        print(f"| {scan.name} | {counts[0]} | {counts[1]} | {counts[2]} |")
    print(f"| all {len(scans)} | {totals[0]} | {totals[1]} | {totals[2]} |")


if __name__ == "__main__":
    main()
