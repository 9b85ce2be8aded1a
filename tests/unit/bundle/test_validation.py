"""Validation every interval epochs and after the last one, through a real MONAI evaluator."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events
from monai.engines import SupervisedEvaluator

from unet_med.bundle.validation import IntervalAndLastValidation, validation_due


def test_validation_due():
    assert [epoch for epoch in range(1, 31) if validation_due(epoch, 4, 30)] == [4, 8, 12, 16, 20, 24, 28, 30]
    assert [epoch for epoch in range(1, 4) if validation_due(epoch, 5, 3)] == [3]


def test_the_last_epoch_is_validated_also_when_the_run_is_extended():
    batch = {"image": torch.zeros(1, 1, 4, 4), "label": torch.zeros(1, 1, 4, 4)}
    validator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=[batch],
                                    network=torch.nn.Conv2d(1, 2, 1))
    validated = []
    validator.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: validated.append(engine.state.epoch))
    trainer = Engine(lambda engine, batch: None)
    IntervalAndLastValidation(interval=3, validator=validator).attach(trainer)
    trainer.run([0], max_epochs=7)
    assert validated == [3, 6, 7]
    trainer.run([0], max_epochs=8)  # a resumed run given one more epoch
    assert validated == [3, 6, 7, 8]


def test_interval_must_be_positive():
    with pytest.raises(ValueError, match="val_interval is 0"):
        IntervalAndLastValidation(interval=0)
