"""The 3D bundle planned for a real CT, then its inference on it: the plan, time, peak memory, output grid.

Plans a Decathlon folder holding CT scans (``modality`` ``CT`` in ``dataset.json``) for the CPU, builds the
planned network with fresh weights (no training: one case cannot make a training/validation split), and runs
the bundle's own ``configs/inference.yaml`` on every image through ``python -m monai.bundle run`` in a child
process. Prints the plan's decision table, the wall time and the child's peak resident memory, and checks that
every prediction lies on its input's voxel grid with its affine.

    python benchmarks/bench_ct_example.py /data/ct_example
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from machine import cpu_description
from monai.bundle import ConfigParser

from unet_med.bundle.datalists import decathlon_datalist
from unet_med.bundle.plan import PlanSettings, decision_table, plan_dataset

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "unet_med_3d_segmentation"



def planned_model(dataset_dir: Path, models: Path) -> dict:
    """Plans ``dataset_dir`` into ``models/plan.yaml`` and saves the planned network's fresh weights beside it."""
    plan, reasons = plan_dataset(dataset_dir, models / "plan.yaml", PlanSettings(device="cpu", spatial_dims=3))
    print(decision_table(plan, reasons))
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.yaml"))
    parser["plan"] = plan
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def")
    torch.save({"model": network.state_dict(), "plan": plan}, models / "model.pt")
    return plan


def run_inference(images: list[str], models: Path, output_dir: Path) -> tuple[float, float]:
    """Runs the bundle's inference in a child process: (wall seconds, peak resident memory of the child in GiB)."""
    command = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.yaml",
        "--ckpt_dir", str(models), "--output_dir", str(output_dir), "--datalist", repr(images),
        "--overwrite", "true",  # a rerun into the same --output-dir sets the earlier predictions aside
    ]
    start = time.perf_counter()
    subprocess.run(command, cwd=BUNDLE, check=True)
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, peak_kib / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset_dir", type=Path, help="Decathlon folder of CT scans: imagesTr/, dataset.json")
    parser.add_argument("--output-dir", type=Path, default=None, help="default: a temporary folder")
    args = parser.parse_args()
    work = args.output_dir or Path(tempfile.mkdtemp(prefix="bench_ct_example_"))
    models = work / "models"
    models.mkdir(parents=True, exist_ok=True)

    plan = planned_model(args.dataset_dir, models)
    images = [case["image"] for case in decathlon_datalist(args.dataset_dir)]
    seconds, peak_gib = run_inference(images, models, work / "predictions")

    print(f"\n{cpu_description()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"plan: spacing {plan['pixdim']} mm, patch {plan['patch_size']}, features {plan['network']['features']}, "
          f"strides {plan['network']['strides']}, overlap {plan['inference']['overlap']}")
    print("| scan | voxels | prediction on the scan's grid | same affine |\n|---|---|---|---|")
    for image in images:
        scan = nib.load(image)
        stem = Path(image).name.removesuffix(".nii.gz").removesuffix(".nii")
        prediction = nib.load(work / "predictions" / f"{stem}_seg.nii.gz")
        grid = prediction.shape == scan.shape[:3]
        affine = np.allclose(prediction.affine, scan.affine, atol=1e-4)
        print(f"| {stem} | {' x '.join(map(str, scan.shape[:3]))} | {grid} | {affine} |")
    print(f"inference of {len(images)} scan(s), planned network with fresh weights: {seconds:.1f} s wall "
          f"(the child process, imports included), peak resident memory {peak_gib:.2f} GiB")
    print(f"outputs: {work}")


if __name__ == "__main__":
    main()
