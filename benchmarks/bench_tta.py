"""Test-time augmentation on MSD Task04 Hippocampus: Dice and time of the 3D bundle's evaluation with and without.

Evaluates a trained model of the 3D bundle (``MODEL_DIR/model.pt``, e.g. the ``models/`` folder that
``bench_hippocampus.py --output-dir`` writes) on the held-out cases of the same seeded split, through the
bundle's own ``train.yaml`` + ``evaluate.yaml`` (MONAI's ConfigWorkflow), once with ``tta=false`` and once with
``tta=true`` (the mean logits over the mirror images along the axes evaluate.yaml names). Prints the Dice per
class and their mean, the wall and CPU time of each evaluation (inference, post-processing and metrics; the cases
are loaded and cached beforehand) and their ratios, and the machine: CPU model, the flags that matter for
inference speed, threads.

    python benchmarks/bench_tta.py /runs/hippocampus/models /data/Task04_Hippocampus
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


def parse_args() -> argparse.Namespace:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("model_dir", type=Path, help="folder holding the trained model.pt")
    parser.add_argument("dataset_dir", type=Path, help="Decathlon folder: imagesTr/, labelsTr/, dataset.json")
    parser.add_argument("--num-val", type=int, default=40, help="held-out cases, as in bench_hippocampus.py")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, as in bench_hippocampus.py")
    parser.add_argument(
        "--tta", choices=["both", "false", "true"], default="both", help="evaluate without, with, or both (default)"
    )
    parser.add_argument("--device", default=None, help="default: CUDA when present, else CPU")
    parser.add_argument("--output-dir", type=Path, default=None, help="default: a temporary folder")
    return parser.parse_args()



def evaluate(settings: dict, tta: bool, output_dir: Path) -> tuple[dict, float, float]:
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
        tta=tta,
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
    output_dir = args.output_dir or Path(tempfile.mkdtemp(prefix="bench_tta_"))
    settings = {
        "bundle_root": str(BUNDLE),
        "dataset_dir": str(args.dataset_dir.resolve()),
        "ckpt_dir": str(args.model_dir.resolve()),
        "num_val": args.num_val,
        "split_seed": args.seed,
    }
    if args.device:
        settings["device"] = f"$torch.device('{args.device}')"
    modes = [False, True] if args.tta == "both" else [args.tta == "true"]
    results = {tta: evaluate(settings, tta, output_dir / f"eval_tta_{str(tta).lower()}") for tta in modes}

    names = label_names(args.dataset_dir)
    print(f"\nMSD Task04 Hippocampus, {args.num_val} held-out cases (split seed {args.seed}), {args.model_dir}")
    print(cpu_description())
    print(f"threads: {torch.get_num_threads()}, torch {torch.__version__}, device: {settings.get('device', 'default')}")
    classes = [names.get(label, str(label)) for label in range(1, len(names))]
    print(f"| TTA | {' | '.join(f'Dice {name}' for name in classes)} | mean Dice | wall time | CPU time |")
    print("|---|" + "---|" * (len(classes) + 3))
    for tta, (metrics, seconds, cpu_seconds) in results.items():
        per_class = torch.as_tensor(metrics["val_dice_per_class"]).flatten().tolist()
        dice = " | ".join(f"{value:.4f}" for value in [*per_class, metrics["val_mean_dice"]])
        print(f"| {'mirrored' if tta else 'none'} | {dice} | {seconds:.1f} s | {cpu_seconds:.1f} s |")
    if len(results) == 2:
        gain = results[True][0]["val_mean_dice"] - results[False][0]["val_mean_dice"]
        wall, cpu = (results[True][index] / results[False][index] for index in (1, 2))
        print(f"mean Dice gain: {gain:+.4f}; time factor: {wall:.2f} (wall), {cpu:.2f} (CPU)")
    print(f"outputs: {output_dir}")


if __name__ == "__main__":
    main()
