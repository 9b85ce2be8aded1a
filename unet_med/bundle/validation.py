"""When the bundles validate: every ``interval`` epochs, and after the last epoch whatever the interval."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ignite.engine import Events
from monai.handlers import ValidationHandler

if TYPE_CHECKING:
    from ignite.engine import Engine
    from monai.engines import Evaluator

__all__ = ["IntervalAndLastValidation", "validation_due"]


def validation_due(epoch: int, interval: int, max_epochs: int) -> bool:
    """Whether ``epoch`` (1-based) is validated: every ``interval``-th epoch, and the last of ``max_epochs``."""
    return epoch % interval == 0 or epoch == max_epochs


class IntervalAndLastValidation(ValidationHandler):
    """MONAI's epoch-level ``ValidationHandler`` that also validates the last epoch.

    With 30 epochs and an interval of 4, MONAI's handler validates epochs 4, 8, ..., 28 and leaves the final
    weights unscored; this one validates epoch 30 too, so the last model can become ``model.pt``. The last
    epoch is read from the trainer when each epoch ends, so a resumed run given more epochs ends validated too.

    Args:
        interval: validate every ``interval`` epochs.
        validator: the evaluator to run.
        exec_at_start: validate once before training as well.
    """

    def __init__(self, interval: int, validator: Evaluator | None = None, exec_at_start: bool = False) -> None:
        if interval < 1:
            raise ValueError(f"val_interval is {interval}: expected a whole number of epochs >= 1.")
        super().__init__(interval, validator, epoch_level=True, exec_at_start=exec_at_start)

    def attach(self, engine: Engine) -> None:
        """Validate after the due epochs of ``engine`` (see :func:`validation_due`)."""

        def due(engine: Engine, epoch: int) -> bool:
            return validation_due(epoch, self.interval, engine.state.max_epochs)

        engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=due), self)
        if self.exec_at_start:
            engine.add_event_handler(Events.STARTED, self)
