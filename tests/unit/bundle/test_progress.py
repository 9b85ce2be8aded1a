"""The progress display: a bar on a terminal, plain lines otherwise, a log file with everything."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from unet_med.bundle.progress import ITERATION_LOGGER, EpochProgress, RunLog, ScanProgress, progress_mode


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_means_a_bar_on_a_terminal_and_lines_elsewhere():
    assert progress_mode("auto", Terminal()) == "bar"
    assert progress_mode("auto", io.StringIO()) == "lines"
    assert progress_mode("lines", Terminal()) == "lines" and progress_mode("bar", io.StringIO()) == "bar"
    with pytest.raises(ValueError, match="--progress is 'quiet': expected one of auto, bar, lines"):
        progress_mode("quiet")


def test_bar_shows_iterations_loss_and_time_left():
    stream = Terminal()
    progress = EpochProgress("bar", stream)
    progress.start(epoch=3, max_epochs=16, iterations=4)
    for iteration, loss in enumerate([1.0, 0.5], start=1):
        progress.update(iteration, loss)
    progress.close()
    shown = stream.getvalue().split("\r")[-1]
    assert shown.startswith("epoch 3/16:  50%") and "2/4" in shown and "loss 0.7500" in shown and "it/s" in shown


def test_run_log_keeps_engine_messages_and_iterations_off_the_console(tmp_path):
    console = logging.StreamHandler(sys.stdout)  # the console as the bundles' logging.conf sets it up
    root, level = logging.getLogger(), logging.getLogger().level
    root.addHandler(console)
    root.setLevel(logging.INFO)
    seen = []
    console.emit = seen.append  # what the console would print
    engine = logging.getLogger("ignite.engine.engine.SupervisedTrainer")
    try:
        log = RunLog(tmp_path / "training.log", hide_iterations=True)
        engine.info("Epoch[1] Complete.")
        engine.warning("a warning")
        engine.error("Engine run is terminating due to exception: ")  # what Ctrl-C makes ignite log
        logging.getLogger(ITERATION_LOGGER).info("Epoch: 1/2, Iter: 1/5 -- train_loss: 1.0")
        logging.getLogger("unet_med.bundle.report").info("epoch 1/2  loss 1.0000")
        log.close()
        engine.info("after the run")
    finally:
        root.removeHandler(console)
        root.setLevel(level)
    assert [record.getMessage() for record in seen] == ["a warning", "epoch 1/2  loss 1.0000", "after the run"]
    text = (tmp_path / "training.log").read_text()
    assert all(line in text for line in ("Epoch[1] Complete.", "a warning", "train_loss: 1.0", "epoch 1/2"))
    assert "after the run" not in text


def test_scan_bar_counts_the_scans_and_names_the_last(caplog):
    stream = Terminal()
    progress = ScanProgress("bar", stream)
    progress.start(scans=3, desc="segmenting")
    with caplog.at_level(logging.INFO, logger=ITERATION_LOGGER):
        progress.update("case_001", 1.25)
        progress.update("case_002", 0.5)
    progress.close()
    shown = stream.getvalue().split("\r")[-1]
    assert shown.startswith("segmenting:  67%") and "2/3" in shown and "case_002" in shown and "scan/s" in shown
    assert [record.getMessage() for record in caplog.records] == ["scan 1/3  case_001  1.2 s",
                                                                  "scan 2/3  case_002  0.5 s"]
    assert (progress.done, progress.total) == (2, 3)


def test_run_log_without_a_file_only_quiets_the_console():
    console = logging.StreamHandler(sys.stdout)
    root, level = logging.getLogger(), logging.getLogger().level
    root.addHandler(console)
    seen = []
    console.emit = seen.append
    try:
        log = RunLog(None, hide_iterations=False)
        logging.getLogger("ignite.engine.engine.SupervisedEvaluator").info("Got new best metric of val_mean_dice: 0.8")
        logging.getLogger(ITERATION_LOGGER).info("scan 1/1  case_001  0.3 s")
        log.close()
    finally:
        root.removeHandler(console)
        root.setLevel(level)
    assert [record.getMessage() for record in seen] == ["scan 1/1  case_001  0.3 s"]
