"""Evaluation options on MSD Task04 Hippocampus: Dice and time of the 3D bundle's evaluation, case against case.

Evaluates a trained model of the 3D bundle (``MODEL_DIR/model.pt``, e.g. the ``models/`` folder that
``bench_hippocampus.py --output-dir`` writes) on the held-out cases of the same seeded split, through the
bundle's own ``train.yaml`` + ``evaluate.yaml`` (MONAI's ConfigWorkflow), once per case:

- ``float32``: the default on this CPU (``--tta false --amp false``);
- ``tta``: test-time augmentation, the mean logits over the scan and its left-right mirror image (``--tta true``);
- ``bfloat16``: the network under bfloat16 autocast (``--amp true``), what ``--amp auto`` picks on a CPU with
  native bfloat16 units; elsewhere PyTorch emulates it, with the same rounding, many times slower.

Prints the Dice per class and their mean, the wall and CPU time of each evaluation (inference, post-processing
and metrics; the cases are loaded and cached beforehand), each case's difference to the first and its time
factor, and the machine: CPU model, the flags that matter for inference speed, threads.

    python benchmarks/bench_evaluation.py /runs/hippocampus/models /data/Task04_Hippocampus
    python benchmarks/bench_evaluation.py /runs/hippocampus/models /data/Task04_Hippocampus --cases float32 bfloat16
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from machine import cpu_description
from monai.bundle import ConfigWorkflow

from unet_med.bundle.datalists import label_names

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "unet_med_3d_segmentation"
# case: (the bundle options it sets, what the table calls it)
CASES = {
    "float32": ({"tta": False, "amp": False}, "float32"),
    "tta": ({"tta": True, "amp": False}, "float32, left-right mirror image (2 predictions)"),
    "bfloat16": ({"tta": False, "amp": True}, "bfloat16 autocast"),
}


def parse_args() -> argparse.Namespace:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("model_dir", type=Path, help="folder holding the trained model.pt")
    parser.add_argument("dataset_dir", type=Path, help="Decathlon folder: imagesTr/, labelsTr/, dataset.json")
    parser.add_argument("--num-val", type=int, default=40, help="held-out cases, as in bench_hippocampus.py")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, as in bench_hippocampus.py")
    parser.add_argument(
        "--cases", nargs="+", choices=list(CASES), default=["float32", "tta"], help="default: float32 tta"
    )
    parser.add_argument("--device", default=None, help="default: CUDA when present, else CPU")
    parser.add_argument("--output-dir", type=Path, default=None, help="default: a temporary folder")
    return parser.parse_args()


def evaluate(settings: dict, options: dict, output_dir: Path) -> tuple[dict, float, float]:
    """The evaluation's metrics, its wall time and its process CPU time in seconds (after the cases are cached).

    The CPU time (all threads) is the steadier measure on a machine that other processes share.
    """
    config_dir = BUNDLE / "configs"
    flow = ConfigWorkflow(
        config_file=[str(config_dir / "train.yaml"), str(config_dir / "evaluate.yaml")],
        meta_file=str(config_dir / "metadata.json"),
        logging_file=str(config_dir / "logging.conf"),
        workflow_type="train",
        **settings,
        **options,
        output_dir=str(output_dir),
    )
    flow.initialize()
    evaluator = flow.parser.get_parsed_content("validate#evaluator")  # builds the data set cache
    start, cpu_start = time.perf_counter(), time.process_time()
    evaluator.run()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    flow.finalize()
    return evaluator.state.metrics, seconds, cpu_seconds


def main() -> None:
    args = parse_args()
    output_dir = args.output_dir or Path(tempfile.mkdtemp(prefix="bench_evaluation_"))
    settings = {
        "bundle_root": str(BUNDLE),
        "dataset_dir": str(args.dataset_dir.resolve()),
        "ckpt_dir": str(args.model_dir.resolve()),
        "num_val": args.num_val,
        "split_seed": args.seed,
    }
    if args.device:
        settings["device"] = f"$torch.device('{args.device}')"
    results = {case: evaluate(settings, CASES[case][0], output_dir / f"eval_{case}") for case in args.cases}

    names = label_names(args.dataset_dir)
    print(f"\nMSD Task04 Hippocampus, {args.num_val} held-out cases (split seed {args.seed}), {args.model_dir}")
    print(cpu_description())
    print(f"threads: {torch.get_num_threads()}, torch {torch.__version__}, device: {settings.get('device', 'default')}")
    classes = [names.get(label, str(label)) for label in range(1, len(names))]
    print(f"| case | {' | '.join(f'Dice {name}' for name in classes)} | mean Dice | wall time | CPU time |")
    print("|---|" + "---|" * (len(classes) + 3))
    for case, (metrics, seconds, cpu_seconds) in results.items():
        per_class = torch.as_tensor(metrics["val_dice_per_class"]).flatten().tolist()
        dice = " | ".join(f"{value:.4f}" for value in [*per_class, metrics["val_mean_dice"]])
        print(f"| {CASES[case][1]} | {dice} | {seconds:.1f} s | {cpu_seconds:.1f} s |")
    first, (base, base_seconds, base_cpu) = next(iter(results.items()))
    for case, (metrics, seconds, cpu_seconds) in list(results.items())[1:]:
        gain = metrics["val_mean_dice"] - base["val_mean_dice"]
        print(f"{case} against {first}: mean Dice {gain:+.4f}; time factor {seconds / base_seconds:.2f} (wall), "
              f"{cpu_seconds / base_cpu:.2f} (CPU)")
    print(f"outputs: {output_dir}")


if __name__ == "__main__":
    main()
