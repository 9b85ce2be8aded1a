"""The training and evaluation reports: class names, plain CSVs, epoch lines and the summary on every exit."""

from __future__ import annotations

import csv
import json
import logging

import pytest
import torch
from ignite.engine import Engine, Events

from unet_med.bundle.report import (
    ScanReport,
    TrainingReport,
    class_names,
    dice_text,
    format_duration,
    summary_lines,
    write_csv,
)

NAMES = ["Anterior", "Posterior"]


def test_class_names_come_from_dataset_json_then_metadata(samples, bundle_dirs, tmp_path):
    metadata = bundle_dirs["3d"] / "configs" / "metadata.json"
    assert class_names(3, samples, metadata) == NAMES
    assert class_names(3, tmp_path, metadata) == ["anterior", "posterior"]  # no dataset.json: the metadata's
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "tumour"}}))
    assert class_names(3, tmp_path) == ["tumour", "class 2"]


def test_formatting():
    assert dice_text({"Anterior": 0.8056, "Posterior": None}, 0.81) == "Anterior 0.806  Posterior -  mean 0.810"
    assert [format_duration(s) for s in (3.21, 125, 3725)] == ["3.2 s", "2m 05s", "1h 02m"]


def test_write_csv_plain_numbers(tmp_path):
    path = tmp_path / "log.csv"
    write_csv(path, [{"epoch": 1, "loss": 0.123456789, "dice": None}, {"epoch": 2, "dice": float("nan")}],
              ["epoch", "loss", "dice"])
    assert path.read_text().splitlines() == ["epoch,loss,dice", "1,0.123457,", "2,,"]


def test_summary_names_the_best_epoch_and_what_to_run_next():
    history = [{"epoch": 1, "loss": 1.0, "dice A": 0.5, "m": 0.5}, {"epoch": 2, "loss": 0.9, "dice A": 0.7, "m": 0.7},
               {"epoch": 3, "loss": 0.8, "dice A": None, "m": None}]
    lines = summary_lines("interrupted", 3, 10, history, ["A"], "m", 65, {"model": "models/model.pt"})
    assert lines[0] == "training interrupted after 3 of 10 epochs (1m 05s); continue it with --resume true"
    assert lines[1] == "best validation Dice (epoch 2): A 0.700  mean 0.700"
    assert lines[2] == "model  models/model.pt" and lines[3].startswith("next: evaluate  python -m monai.bundle")
    lines = summary_lines("finished", 1, 1, history[2:], ["A"], "m", 1, {})
    assert lines == ["training finished: 1 of 1 epochs in 1.0 s", "no validation yet: no model was saved"]


PRECISION = "cpu, bfloat16 autocast (--amp auto: this CPU has native bfloat16 units)"


def run_training(tmp_path, stop_in_epoch: int | None = None, epochs: int = 3, to_beat: float | None = None):
    """Three epochs of two iterations of a trainer validated every epoch, reported by a TrainingReport.

    ``stop_in_epoch`` raises KeyboardInterrupt (what Ctrl-C raises) in the first iteration of that epoch;
    ``to_beat`` is the validator's best metric before the run (the score of a model.pt found, see BestModelGuard).
    """
    def step(engine, batch):
        if engine.state.epoch == stop_in_epoch:
            raise KeyboardInterrupt
        return [{"loss": torch.tensor(1.0 / engine.state.epoch)}]

    trainer, validator = Engine(step), Engine(lambda engine, batch: None)
    validator.state.key_metric_name = "val_mean_dice"
    if to_beat is not None:
        validator.state.best_metric = to_beat

    def validate(engine):
        epoch = trainer.state.epoch
        engine.state.metrics = {"val_mean_dice": 0.1 * epoch, "val_dice_per_class": torch.tensor([0.1, 0.1]) * epoch}

    validator.add_event_handler(Events.EPOCH_COMPLETED, validate)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: validator.run([0]))
    report = TrainingReport(validator, tmp_path / "runs", NAMES, ckpt_dir=tmp_path / "models", progress="lines",
                            precision=PRECISION)
    report.attach(trainer)
    trainer.run([0, 1], max_epochs=epochs)
    return report


def test_training_report_writes_named_columns_and_summary(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    run_training(tmp_path)
    rows = list(csv.reader((tmp_path / "runs" / "training_log.csv").open()))
    assert rows[0] == ["epoch", "loss", "learning_rate", "dice Anterior", "dice Posterior", "val_mean_dice"]
    assert rows[3] == ["3", "0.333333", "", "0.3", "0.3", "0.3"]
    assert "epoch 3/3  loss 0.3333  Dice  Anterior 0.300  Posterior 0.300  mean 0.300  (best)" in caplog.text
    assert "training finished: 3 of 3 epochs" in caplog.text
    assert "best validation Dice (epoch 3): Anterior 0.300  Posterior 0.300  mean 0.300" in caplog.text
    log = (tmp_path / "runs" / "training.log").read_text()
    assert "Epoch: 2/3, Iter: 1/2 -- train_loss: 0.5000" in log and "training finished" in log
    assert log.splitlines()[0].endswith(f"training on {PRECISION}")  # the first line, on the console too
    assert f"training on {PRECISION}" in caplog.text
    summary = caplog.text[caplog.text.index("training finished"):]
    assert summary.splitlines()[1] == f"trained on {PRECISION}"
    assert (tmp_path / "runs" / "learning_curves.png").is_file()
    files = [getattr(handler, "baseFilename", "") for handler in logging.getLogger().handlers]
    assert not any(name.endswith("training.log") for name in files)  # the log is closed


def test_a_model_on_disk_that_no_epoch_beats_is_reported_kept(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    run_training(tmp_path, to_beat=0.25)
    epochs = [line for line in caplog.text.splitlines() if " loss " in line and "Dice" in line]
    assert ["(best)" in line for line in epochs] == [False, False, True]  # 0.1 and 0.2 do not beat 0.25
    assert "model.pt kept" not in caplog.text
    caplog.clear()
    run_training(tmp_path / "again", to_beat=0.4)
    assert "(best)" not in caplog.text
    assert "model.pt kept: it scored 0.400 on the validation cases before this run, and no epoch beat it" in caplog.text


def test_ctrl_c_ends_with_the_summary_and_the_interrupt(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    with pytest.raises(KeyboardInterrupt):
        run_training(tmp_path, stop_in_epoch=3)
    assert caplog.text.count("training interrupted after 2 of 3 epochs") == 1
    assert "best validation Dice (epoch 2): Anterior 0.200" in caplog.text


def test_a_run_found_finished_says_so(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    report = run_training(tmp_path, epochs=2)
    trainer = Engine(lambda engine, batch: None)
    trainer.add_event_handler(Events.STARTED, lambda engine: setattr(engine.state, "epoch", 2))  # as a resume does
    caplog.clear()
    TrainingReport(report.validator, tmp_path / "runs", NAMES, progress="lines").attach(trainer)
    trainer.run([0, 1], max_epochs=2)
    summary = caplog.text[caplog.text.index("nothing to train"):]
    assert summary.splitlines()[0] == ("nothing to train: the saved training state has finished all 2 of 2 epochs; "
                                       "to train longer, run again with --resume true --epochs <more than 2>")
    assert "best validation" not in summary and "next:" not in summary  # that line alone


def test_a_fresh_run_is_not_logged_as_resumed(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    trainer = Engine(lambda engine, batch: [{"loss": torch.tensor(1.0)}])
    validator = Engine(lambda engine, batch: None)
    validator.state.key_metric_name = "val_mean_dice"
    TrainingReport(validator, tmp_path / "runs", NAMES, progress="lines").attach(trainer)
    trainer.state.max_epochs, trainer.state.epoch_length = 2, 2  # as MONAI's trainers set up their state
    trainer.run([0, 1])
    assert "training finished: 2 of 2 epochs" in caplog.text
    assert "Engine run resuming" not in caplog.text and "Engine run finished" not in caplog.text
    trainer.run([0, 1], max_epochs=3)  # a real resume keeps ignite's line
    assert "Engine run resuming from iteration 4, epoch 2 until 3 epochs" in caplog.text


def test_an_inference_run_sums_up_however_it_ends(tmp_path, caplog):
    from monai.data import MetaTensor

    scans = [[{"image": MetaTensor(torch.zeros(1, 2, 2), meta={"filename_or_obj": f"/in/case_{i}.nii.gz"})}]
             for i in range(3)]

    def run(stop_at: int) -> None:
        def segment(engine, batch):
            if engine.state.iteration == stop_at:
                raise KeyboardInterrupt
            return batch

        engine = Engine(segment)
        ScanReport("lines", output_dir=tmp_path, dicom_seg="true").attach(engine)
        engine.run(scans)

    with caplog.at_level(logging.INFO), pytest.raises(KeyboardInterrupt):
        run(stop_at=3)
    lines = [record.getMessage() for record in caplog.records if record.name.startswith("unet_med")]
    assert [line.split("  ")[:2] for line in lines[:2]] == [["scan 1/3", "case_0"], ["scan 2/3", "case_1"]]
    assert lines[2].startswith("inference interrupted after 2 of 3 scans (")
    assert lines[2].endswith(f"): their NIfTI and DICOM SEG predictions in {tmp_path} are complete, the others not "
                             "written")
    with caplog.at_level(logging.INFO):
        run(stop_at=0)
    last = [record.getMessage() for record in caplog.records if record.name.startswith("unet_med")][-1]
    assert last.startswith("segmented 3 scans in ")
    assert last.endswith(f": NIfTI and DICOM SEG predictions in {tmp_path}")
