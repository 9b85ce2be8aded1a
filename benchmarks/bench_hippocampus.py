"""Accuracy of the 3D bundle on MSD Task04 Hippocampus: train on 160 cases, report Dice on 40 held out.

Runs the bundle's own train.yaml and evaluate.yaml (MONAI's ConfigWorkflow, the engine behind
``python -m monai.bundle run``) with a fixed, seeded 160/40 split of a Decathlon folder, then prints the
per-class Dice of the best checkpoint on the 40 validation cases, the wall time and the settings. Training
plans the data set first (``models/plan.yaml`` in the output folder); the options given here win over the plan.

    python benchmarks/bench_hippocampus.py /data/Task04_Hippocampus --epochs 32 --val-interval 8

Reference: nnU-Net reports Dice of about 0.90 (anterior) and 0.89 (posterior) on this task.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from machine import cpu_description
from monai.bundle import ConfigWorkflow

from unet_med.bundle.datalists import decathlon_datalist, label_names

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "unet_med_3d_segmentation"


def parse_args() -> argparse.Namespace:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("dataset_dir", type=Path, help="Decathlon folder: imagesTr/, labelsTr/, dataset.json")
    parser.add_argument("--num-val", type=int, default=40, help="held-out cases (the rest train)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split")
    parser.add_argument("--epochs", type=int, default=32)
    parser.add_argument(
        "--max-minutes", type=float, default=55.0, help="stop training after the epoch that passes this time"
    )
    parser.add_argument("--val-interval", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=None, help="cases per step (default: the plan's)")
    parser.add_argument("--num-samples", type=int, default=None, help="patches per case (default: the plan's)")
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--device", default=None, help="default: CUDA when present, else CPU")
    parser.add_argument("--output-dir", type=Path, default=None, help="default: a temporary folder")
    return parser.parse_args()


def workflow(configs: list[str], overrides: dict) -> ConfigWorkflow:
    """A train-type workflow of the bundle's configs with ``overrides`` applied, initialised."""
    config_dir = BUNDLE / "configs"
    flow = ConfigWorkflow(
        config_file=[str(config_dir / name) for name in configs],
        meta_file=str(config_dir / "metadata.json"),
        logging_file=str(config_dir / "logging.conf"),
        workflow_type="train",
        **overrides,
    )
    flow.initialize()
    return flow


def finish_by(deadline: float, validator: Engine, val_interval: int):
    """An epoch handler that stops training after the epoch that passes ``deadline`` (perf_counter seconds).

    It also validates the last epoch (the checkpoint saver keeps the best model) when the validation interval
    skipped it.
    """

    def check(engine: Engine) -> None:
        late = time.perf_counter() > deadline
        if (late or engine.state.epoch == engine.state.max_epochs) and engine.state.epoch % val_interval:
            validator.run(engine.state.epoch)
        if late:
            engine.terminate()

    return check


def main() -> None:
    args = parse_args()
    output_dir = args.output_dir or Path(tempfile.mkdtemp(prefix="bench_hippocampus_"))
    cases = len(decathlon_datalist(args.dataset_dir))
    settings = {
        "bundle_root": str(BUNDLE),
        "dataset_dir": str(args.dataset_dir.resolve()),
        "num_val": args.num_val,
        "split_seed": args.seed,
        "epochs": args.epochs,
        "val_interval": args.val_interval,
        "batch_size": args.batch_size,
        "num_samples": args.num_samples,
        "learning_rate": args.learning_rate,
        "ckpt_dir": str(output_dir / "models"),
    }
    if args.device:
        settings["device"] = f"$torch.device('{args.device}')"

    start = time.perf_counter()
    train = workflow(["train.yaml"], {**settings, "output_dir": str(output_dir / "runs")})
    trainer = train.parser.get_parsed_content("train#trainer")
    validator = train.parser.get_parsed_content("validate#evaluator")
    finish = finish_by(start + 60 * args.max_minutes, validator, args.val_interval)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, finish)
    train.run()
    train.finalize()
    train_time = time.perf_counter() - start

    evaluate = workflow(["train.yaml", "evaluate.yaml"], {**settings, "output_dir": str(output_dir / "eval")})
    evaluate.run()
    metrics = evaluate.parser.get_parsed_content("validate#evaluator").state.metrics
    evaluate.finalize()
    total_time = time.perf_counter() - start

    names = label_names(args.dataset_dir)
    per_class = torch.as_tensor(metrics["val_dice_per_class"]).flatten().tolist()
    print(f"\nMSD Task04 Hippocampus: {cases - args.num_val} training / {args.num_val} validation cases")
    print("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items() if k != "bundle_root"))
    print(cpu_description())
    print(f"threads: {torch.get_num_threads()}, device: {train.parser.get_parsed_content('device')}")
    print("| class | Dice |\n|---|---|")
    for label, dice in enumerate(per_class, start=1):
        print(f"| {names.get(label, label)} | {dice:.4f} |")
    print(f"| mean | {metrics['val_mean_dice']:.4f} |")
    print(f"epochs run: {trainer.state.epoch} of {args.epochs} (time limit {args.max_minutes} min)")
    print(f"training wall time: {train_time / 60:.1f} min; with evaluation: {total_time / 60:.1f} min")
    print(f"outputs: {output_dir}")


if __name__ == "__main__":
    main()
