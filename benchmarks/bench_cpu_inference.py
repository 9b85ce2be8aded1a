"""CPU inference of one CT-size volume: unet-med against MONAI's DynUNet and nnU-Net's own predictor, in one run.

A synthetic CT (512 x 512 x 300 voxels at 0.7 x 0.7 x 2.5 mm, Hounsfield-like values drawn by this script) is
resampled to a CT plan's spacing, normalised as the plan says, segmented by sliding windows and brought back to
its own grid as a label map, as the 3D bundle's inference does. The plan is the planner's plan of the CT example
(``python -m unet_med.bundle.plan CT_EXAMPLE --device cpu``, written to a temporary folder; ``--plan`` takes an
existing one): 3 mm spacing, 8 classes, patch 96 x 80 x 20, features 16..128. Every network has the plan's
size (same kernels, strides, widths) and random weights, so the times count, not the labels.

Each case runs in its own process; the table gives the wall time of the whole prediction (resampling in, windows,
resampling back and argmax), the time of the windows alone, the rest (the steps outside the windows), and the peak
resident memory of the process (the synthetic volume included, the same in every case), each with its ratio to
the first case. ``ours`` goes back to the scan's grid as the bundles do (``InvertToLabelsd``, slab by slab);
``ours, Invertd + argmax`` as they did before, all classes at the scan's size.

    python benchmarks/bench_cpu_inference.py --ct_example /data/ct_example                 # the full volume
    python benchmarks/bench_cpu_inference.py --ct_example /data/ct_example --quick         # 256 x 256 x 100
    python benchmarks/bench_cpu_inference.py --plan models/plan.yaml --cases ours "nnU-Net, mirroring"

bfloat16 against float32 (training steps and windows) is ``benchmarks/bench_cpu_precision.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from machine import cpu_description

FULL = (512, 512, 300)
QUICK = (256, 256, 100)
SPACING = (0.7, 0.7, 2.5)

# name: (network, window, overlap, sw_batch_size, CPUInferer's options or None, way back to the scan's grid).
# "plan" takes the plan's value. MONAI's settings are the bundles' before this benchmark (and MONAI's DynUNet
# tutorial's): overlap 0.5, 4 windows per pass, gaussian blending, Invertd then argmax. nnU-Net's are its
# defaults: tile step 0.5, gaussian, mirroring on. The way back: "slabs" is the bundles' InvertToLabelsd,
# "Invertd" MONAI's Invertd (bilinear) of all classes at the scan's size, then the argmax.
HALF_STITCHING = {"stitch_dtype": torch.float16}
CASES = {
    "ours": ("unet_med", "plan", "plan", "plan", HALF_STITCHING, "slabs"),
    "ours, Invertd + argmax": ("unet_med", "plan", "plan", "plan", HALF_STITCHING, "Invertd"),
    "ours, float32 stitching": ("unet_med", "plan", "plan", "plan", None, "slabs"),
    "ours, channels-last": ("unet_med", "plan", "plan", "plan", {**HALF_STITCHING, "channels_last": True}, "slabs"),
    "ours, window 128 x 128 x 40": ("unet_med", (128, 128, 40), "plan", 1, HALF_STITCHING, "slabs"),
    "DynUNet, MONAI settings": ("dynunet", "plan", 0.5, 4, None, "Invertd"),
    "nnU-Net, no mirroring": ("nnunet", "plan", 0.5, 1, None, "nnU-Net's"),
    "nnU-Net, mirroring": ("nnunet", "plan", 0.5, 1, None, "nnU-Net's"),
}
# mirroring runs every window 8 times: on 2 cores it takes more than 10 minutes for the full volume
DEFAULT_CASES = [name for name in CASES if name not in ("nnU-Net, mirroring", "ours, channels-last")]



def synthetic_ct(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """A CT-like volume in Hounsfield units: air around an elliptic body of soft tissue, fat, organs and a spine.

    Args:
        shape: voxels along x, y, z (RAS order, as the bundles read NIfTI).
        seed: seed of the noise.

    Returns:
        float32 array of ``shape``.
    """
    rng = np.random.default_rng(seed)
    nx, ny, nz = shape
    x = np.linspace(-1, 1, nx, dtype=np.float32)[:, None]
    y = np.linspace(-1, 1, ny, dtype=np.float32)[None, :]
    body = (x / 0.85) ** 2 + (y / 0.6) ** 2
    plane = np.where(body < 1, 40.0, -1000.0).astype(np.float32)
    plane[(body > 0.8) & (body < 1)] = -100.0  # subcutaneous fat
    plane[(x - 0.3) ** 2 + (y + 0.1) ** 2 < 0.08] = 60.0  # liver-like organ
    plane[(x + 0.4) ** 2 + (y - 0.2) ** 2 < 0.02] = 30.0  # kidney-like organ
    plane[x**2 + (y - 0.45) ** 2 < 0.008] = 700.0  # vertebra
    volume = np.repeat(plane[:, :, None], nz, axis=2)
    volume *= (1 + 0.1 * np.sin(np.linspace(0, 3 * np.pi, nz, dtype=np.float32)))[None, None, :]
    volume += rng.normal(0, 20, size=shape).astype(np.float32)
    return volume


def make_plan(ct_example: Path, folder: Path) -> Path:
    """Plans the CT example for the CPU with the project's planner; returns the plan's path."""
    output = folder / "plan.yaml"
    command = [sys.executable, "-m", "unet_med.bundle.plan", str(ct_example), "--device", "cpu"]
    command += ["--output", str(output)]
    subprocess.run(command, check=True, capture_output=True, text=True)
    return output


def build_network(kind: str, plan: dict) -> torch.nn.Module:
    """The plan's network as unet-med's UNet, MONAI's DynUNet or nnU-Net's PlainConvUNet, random weights, eval."""
    network = plan["network"]
    classes, channels = plan["num_classes"], plan["in_channels"]
    strides = [[s] * 3 if isinstance(s, int) else list(s) for s in network["strides"]]
    kernels = [[k] * 3 if isinstance(k, int) else list(k) for k in network["kernel_size"]]
    torch.manual_seed(0)
    if kind == "unet_med":
        from unet_med.networks import UNet

        net = UNet(3, channels, classes, **network)
    elif kind == "dynunet":
        from monai.networks.nets import DynUNet

        net = DynUNet(
            3, channels, classes, kernel_size=kernels, strides=[[1, 1, 1], *strides], upsample_kernel_size=strides,
            filters=network["features"], norm_name=("instance", {"affine": True}),
            act_name=("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
        )
    else:
        net = nnunet_network(nnunet_plans(plan))
    return net.eval()


def nnunet_plans(plan: dict) -> dict:
    """An nnU-Net v2 plans file for the plan's network, patch, spacing and CT normalisation.

    nnU-Net orders axes as SimpleITK does (z, y, x): every per-axis value of the plan (RAS x, y, z) is reversed.
    """
    network = plan["network"]
    strides = [[s] * 3 if isinstance(s, int) else list(s) for s in network["strides"]]
    kernels = [[k] * 3 if isinstance(k, int) else list(k) for k in network["kernel_size"]]
    norm = plan["normalization"][0]
    levels = len(network["features"])
    return {
        "dataset_name": "Dataset001_SyntheticCT",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(SPACING[::-1]),
        "original_median_shape_after_transp": list(FULL[::-1]),
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {"mean": norm["mean"], "std": norm["std"], "percentile_00_5": norm["clip"][0],
                  "percentile_99_5": norm["clip"][1], "median": norm["mean"], "min": -1024.0, "max": 3000.0}
        },
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": plan["inference"]["sw_batch_size"],
                "patch_size": list(plan["patch_size"])[::-1],
                "median_image_size_in_voxels": [
                    round(n * s / p) for n, s, p in zip(FULL, SPACING, plan["pixdim"])
                ][::-1],
                "spacing": list(plan["pixdim"])[::-1],
                "normalization_schemes": ["CTNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
                "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
                "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                       "force_separate_z": None},
                "architecture": {
                    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                    "arch_kwargs": {
                        "n_stages": levels,
                        "features_per_stage": list(network["features"]),
                        "conv_op": "torch.nn.modules.conv.Conv3d",
                        "kernel_sizes": [k[::-1] for k in kernels],
                        "strides": [[1, 1, 1]] + [s[::-1] for s in strides],
                        "n_conv_per_stage": [2] * levels,
                        "n_conv_per_stage_decoder": [2] * (levels - 1),
                        "conv_bias": True,
                        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                        "dropout_op": None,
                        "dropout_op_kwargs": None,
                        "nonlin": "torch.nn.LeakyReLU",
                        "nonlin_kwargs": {"inplace": True},
                    },
                    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
                },
                "batch_dice": False,
            }
        },
    }


def nnunet_dataset_json(plan: dict) -> dict:
    """nnU-Net's dataset.json for the plan's channels and classes."""
    return {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, **{f"class_{c}": c for c in range(1, plan["num_classes"])}},
        "numTraining": 1,
        "file_ending": ".nii.gz",
    }


def nnunet_network(plans: dict) -> torch.nn.Module:
    """nnU-Net's network for ``plans``, built by nnU-Net's own code."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    architecture = plans["configurations"]["3d_fullres"]["architecture"]
    return get_network_from_plans(
        architecture["network_class_name"], architecture["arch_kwargs"], architecture["_kw_requires_import"],
        1, 8, deep_supervision=False,
    )


def run_nnunet(plan: dict, volume: np.ndarray, mirroring: bool) -> tuple[np.ndarray, float]:
    """nnU-Net's predictor on ``volume`` (x, y, z): its preprocessing, windows, resampling back and argmax."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = nnunet_plans(plan)
    plans_manager = PlansManager(plans)
    configuration = plans_manager.get_configuration("3d_fullres")
    network = nnunet_network(plans).eval()
    predictor = nnUNetPredictor(
        tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring, perform_everything_on_device=False,
        device=torch.device("cpu"), allow_tqdm=False,
    )
    predictor.manual_initialization(
        network, plans_manager, configuration, [network.state_dict()], nnunet_dataset_json(plan),
        "nnUNetTrainer", (0, 1, 2),
    )
    window_seconds = []
    logits = predictor.predict_logits_from_preprocessed_data

    def timed_logits(data: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        result = logits(data)
        window_seconds.append(time.perf_counter() - start)
        return result

    predictor.predict_logits_from_preprocessed_data = timed_logits
    image = volume.transpose(2, 1, 0)[None]  # (c, z, y, x), SimpleITK's order
    labels = predictor.predict_single_npy_array(image, {"spacing": list(SPACING[::-1])})
    return np.asarray(labels).transpose(2, 1, 0), window_seconds[0]


def run_monai(kind: str, plan: dict, volume: np.ndarray, case: tuple) -> tuple[np.ndarray, float]:
    """The bundle's inference path with MONAI transforms and ``SlidingWindowInferer``, for UNet or DynUNet."""
    from monai.data import MetaTensor
    from monai.inferers import SlidingWindowInferer
    from monai.transforms import AsDiscrete, Compose, Invertd, Spacingd

    from unet_med.bundle.inversion import InvertToLabelsd
    from unet_med.inferers import CPUInferer

    _, window, overlap, sw_batch_size, fast_paths, way_back = case
    inference = plan["inference"]
    window = plan["patch_size"] if window == "plan" else window
    overlap = inference["overlap"] if overlap == "plan" else overlap
    sw_batch_size = inference["sw_batch_size"] if sw_batch_size == "plan" else sw_batch_size
    network = build_network(kind, plan)
    inferer = SlidingWindowInferer(window, sw_batch_size=sw_batch_size, overlap=overlap, mode="gaussian")
    if fast_paths is not None:
        inferer = CPUInferer(inferer, **fast_paths)
    affine = torch.diag(torch.tensor([*SPACING, 1.0], dtype=torch.float64))
    image = MetaTensor(torch.from_numpy(volume)[None], affine=affine)
    preprocessing = Compose([Spacingd("image", pixdim=plan["pixdim"], mode="bilinear")])
    data = preprocessing({"image": image})
    norm = plan["normalization"][0]
    resampled = (data["image"].clamp(*norm["clip"]) - norm["mean"]) / norm["std"]
    start = time.perf_counter()
    with torch.inference_mode():
        logits = inferer(resampled[None], network)[0]
    window_seconds = time.perf_counter() - start
    data["pred"] = MetaTensor(torch.softmax(logits.float(), dim=0).as_subclass(torch.Tensor), meta=data["image"].meta)
    del logits, resampled, image
    if way_back == "slabs":
        labels = InvertToLabelsd("pred", preprocessing)(data)["pred"]
    else:
        probabilities = Invertd("pred", preprocessing, orig_keys="image", nearest_interp=False)(data)["pred"]
        labels = AsDiscrete(argmax=True)(probabilities).to(torch.uint8)
    return labels[0].numpy(), window_seconds


def run_case(name: str, shape: tuple[int, int, int], plan_path: Path) -> dict:
    """Runs one case in this process and returns its numbers."""
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    plan = yaml.safe_load(plan_path.read_text())
    volume = synthetic_ct(shape)
    case = CASES[name]
    start = time.perf_counter()
    if case[0] == "nnunet":
        labels, window_seconds = run_nnunet(plan, volume, mirroring=name.endswith(", mirroring"))
    else:
        labels, window_seconds = run_monai(case[0], plan, volume, case)
    seconds = time.perf_counter() - start
    if labels.shape != volume.shape:
        raise RuntimeError(f"{name}: a label map of {labels.shape} for a volume of {volume.shape}")
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB
    return {"case": name, "seconds": seconds, "window_seconds": window_seconds, "peak_gib": peak_gib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ct_example", type=Path, help="the CT example's Decathlon folder, planned for the CPU")
    parser.add_argument("--plan", type=Path, help="a CT plan to use instead of planning --ct_example")
    parser.add_argument("--quick", action="store_true", help=f"a {' x '.join(map(str, QUICK))} volume")
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES, choices=list(CASES), metavar="CASE")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = parser.parse_args()
    shape = QUICK if args.quick else FULL
    if args.case:
        print(json.dumps(run_case(args.case, shape, args.plan)))
        return
    if args.plan is None and args.ct_example is None:
        parser.error("give --ct_example (a Decathlon folder to plan) or --plan (a plan file)")

    print(cpu_description())
    print(f"torch {torch.__version__}, {len(os.sched_getaffinity(0))} threads, load average "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as folder:
        plan_path = args.plan or make_plan(args.ct_example, Path(folder))
        plan = yaml.safe_load(plan_path.read_text())
        source = plan_path if args.plan else f"the planner on {args.ct_example}"
        print(f"plan: {source}: spacing {plan['pixdim']} mm, "
              f"patch {plan['patch_size']}, features {plan['network']['features']}, {plan['num_classes']} classes, "
              f"overlap {plan['inference']['overlap']}, sw_batch_size {plan['inference']['sw_batch_size']}")
        print(f"volume: {' x '.join(map(str, shape))} voxels at {' x '.join(map(str, SPACING))} mm")
        # the children import this checkout's unet_med, whatever is installed
        root = str(Path(__file__).resolve().parents[1])
        child_env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        results = []
        for name in args.cases:
            command = [sys.executable, __file__, "--case", name, "--plan", str(plan_path)]
            command += ["--quick"] if args.quick else []
            completed = subprocess.run(command, capture_output=True, text=True, env=child_env)
            if completed.returncode != 0:
                sys.exit(f"{name} failed:\n{completed.stderr[-3000:]}")
            results.append(json.loads(completed.stdout.strip().splitlines()[-1]))
            print(f"  done: {name} ({results[-1]['seconds']:.0f} s)", file=sys.stderr)
    reference = results[0]
    ours = reference["case"]
    print(f"| case | total s | x {ours} | windows s | x {ours} | outside windows s | x {ours} | peak GiB | x {ours} |")
    print("|---|---|---|---|---|---|---|---|---|")
    outside = {r["case"]: r["seconds"] - r["window_seconds"] for r in results}
    for r in results:
        print(
            f"| {r['case']} | {r['seconds']:.1f} | {r['seconds'] / reference['seconds']:.2f} "
            f"| {r['window_seconds']:.1f} | {r['window_seconds'] / reference['window_seconds']:.2f} "
            f"| {outside[r['case']]:.1f} | {outside[r['case']] / outside[ours]:.2f} "
            f"| {r['peak_gib']:.2f} | {r['peak_gib'] / reference['peak_gib']:.2f} |"
        )
    print(f"load average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
