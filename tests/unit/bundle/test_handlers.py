"""Checkpoints: weights-only loading with errors that name the file, and a training state that resumes."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events

from unet_med.bundle.errors import BundleError
from unet_med.bundle.handlers import (
    AtomicCheckpointSaver,
    AtomicDiskSaver,
    BestModelGuard,
    DivergenceGuard,
    TrainingStateSaver,
    WeightsOnlyCheckpointLoader,
)
from unet_med.bundle.io import CheckpointError, load_checkpoint, save_checkpoint


class Payload:
    """A class a checkpoint might pickle: loading it would run code of the file's choosing."""


def run_engine_with_loader(loader: WeightsOnlyCheckpointLoader) -> Engine:
    engine = Engine(lambda engine, batch: None)
    loader.attach(engine)
    engine.run([0], max_epochs=1)
    return engine


def test_loader_refuses_pickled_objects_and_names_a_checkpoint_that_does_not_fit(tmp_path):
    evil, other = tmp_path / "evil.pt", tmp_path / "other.pt"
    torch.save({"model": Payload()}, evil)
    save_checkpoint(torch.nn.Linear(5, 1).state_dict(), other)
    net = torch.nn.Linear(2, 2)
    with pytest.raises(CheckpointError, match=f"{evil} is refused"):
        run_engine_with_loader(WeightsOnlyCheckpointLoader(evil, {"model": net}))
    with pytest.raises(CheckpointError, match=rf"{other} does not fit the objects it is loaded into \(model\): .*size"):
        run_engine_with_loader(WeightsOnlyCheckpointLoader(other, {"model": net}))


METRICS = [None, 0.2, 0.6, 0.4, 0.5, 0.3]  # validation metric by epoch: epoch 2's is the best


def train(folder, stop_after: int | None = None, resume: bool = False) -> tuple[Engine, dict, Engine]:
    """Five epochs of a small trainer and validator wired as the bundles wire theirs.

    Returns the trainer, the objects of its training state and the validator.
    """
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    optimizer = torch.optim.AdamW(net.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=5)

    def step(engine, batch):
        optimizer.zero_grad()
        net(batch).square().mean().backward()
        optimizer.step()

    def validate(validator):  # a metric, and the best so far as MONAI's evaluators track it
        dice = validator.state.metrics["dice"] = METRICS[trainer.state.epoch]
        if dice > validator.state.best_metric:
            validator.state.best_metric, validator.state.best_metric_epoch = dice, trainer.state.epoch

    trainer, validator = Engine(step), Engine(lambda engine, batch: None)
    validator.state.best_metric, validator.state.best_metric_epoch = -1, -1
    validator.add_event_handler(Events.EPOCH_COMPLETED, validate)
    saver = AtomicCheckpointSaver(folder, {"model": net}, save_key_metric=True, key_metric_name="dice",
                                  key_metric_filename="model.pt")
    saver.attach(validator)
    state = {"model": net, "optimizer": optimizer, "lr_scheduler": scheduler, "best_model_saver": saver}
    if resume:
        WeightsOnlyCheckpointLoader(folder / "latest.pt", state, engine_key="trainer").attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: scheduler.step())
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: validator.run([0]))
    TrainingStateSaver(folder / "latest.pt", state).attach(trainer)
    if stop_after is not None:
        trainer.add_event_handler(Events.EPOCH_COMPLETED(once=stop_after), lambda engine: engine.terminate())
    trainer.run([torch.ones(2, 3)] * 2, max_epochs=5)
    return trainer, state, validator


def test_resumed_training_ends_as_an_uninterrupted_one(tmp_path):
    once, twice = tmp_path / "once", tmp_path / "twice"
    _, uninterrupted, _ = train(once)
    train(twice, stop_after=2)
    saved = load_checkpoint(twice / "latest.pt")
    assert saved["trainer"]["iteration"] == 4 and saved["lr_scheduler"]["last_epoch"] == 2
    assert saved["best_model_saver"]["best_metric"] == 0.6

    trainer, resumed, validator = train(twice, resume=True)
    assert (trainer.state.epoch, trainer.state.iteration, resumed["lr_scheduler"].last_epoch) == (5, 10, 5)
    for key in ("weight", "bias"):
        assert torch.equal(resumed["model"].state_dict()[key], uninterrupted["model"].state_dict()[key])
    # model.pt holds epoch 2's weights in both: the resumed run knew that 0.4, 0.5 and 0.3 are worse than 0.6.
    assert (validator.state.best_metric, validator.state.best_metric_epoch) == (0.6, 2)
    best_once, best_twice = load_checkpoint(once / "model.pt"), load_checkpoint(twice / "model.pt")
    assert best_once.keys() == {"weight", "bias"}
    assert all(torch.equal(best_once[key], best_twice[key]) for key in best_once)


def schedule_after_one_epoch(folder, total_iters: int) -> tuple[Engine, torch.optim.lr_scheduler.PolynomialLR]:
    """A one-epoch run of a ``total_iters``-epoch schedule, saved as the bundles save it, and a fresh copy."""
    net = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=total_iters, power=0.9)
    trainer = Engine(lambda engine, batch: None)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: scheduler.step())
    TrainingStateSaver(folder / "latest.pt", {"optimizer": optimizer, "lr_scheduler": scheduler}).attach(trainer)
    return trainer, scheduler


def resume(folder, max_epochs: int) -> tuple[Engine, torch.optim.lr_scheduler.PolynomialLR]:
    """Resume the saved run with a schedule built for ``max_epochs``; returns the trainer and the scheduler."""
    net = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=max_epochs, power=0.9)
    trainer = Engine(lambda engine, batch: None)
    seen = []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda engine: seen.append(optimizer.param_groups[0]["lr"]))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: scheduler.step())
    state = {"optimizer": optimizer, "lr_scheduler": scheduler}
    WeightsOnlyCheckpointLoader(folder / "latest.pt", state, engine_key="trainer").attach(trainer)
    trainer.run([0], max_epochs=max_epochs)
    trainer.state.rates = seen
    return trainer, scheduler


def test_resuming_with_more_epochs_stretches_the_schedule(tmp_path):
    trainer, scheduler = schedule_after_one_epoch(tmp_path, total_iters=1)
    trainer.run([0], max_epochs=1)
    assert scheduler.get_last_lr() == [0.0]  # the finished one-epoch schedule
    resumed, stretched = resume(tmp_path, max_epochs=3)
    assert resumed.state.epoch == 3 and stretched.total_iters == 3
    assert resumed.state.rates == pytest.approx([0.1 * (2 / 3) ** 0.9, 0.1 * (1 / 3) ** 0.9])


def test_resuming_with_fewer_epochs_than_trained_is_refused(tmp_path):
    trainer, _ = schedule_after_one_epoch(tmp_path, total_iters=3)
    trainer.run([0], max_epochs=2)
    with pytest.raises(BundleError, match=r"^--epochs 1: .*latest\.pt has already trained 2 epochs; pass --epochs 3"):
        resume(tmp_path, max_epochs=1)


class Validator(Engine):
    """An engine run as MONAI's evaluators are: ``run(global_epoch)``, one pass over one batch."""

    def __init__(self) -> None:
        super().__init__(lambda engine, batch: None)

    def run(self, global_epoch: int = 1) -> None:  # type: ignore[override]
        super().run([0], max_epochs=1)


def guarded_run(folder, weights: dict, scores: list[float], resume: bool = False) -> tuple[Engine, torch.nn.Module]:
    """A trainer whose network starts from ``weights``, guarded, validated once per epoch with ``scores``."""
    net = torch.nn.Linear(3, 1)
    net.load_state_dict(weights)
    validator = Validator()
    validator.state.key_metric_name = "dice"
    runs = iter([float(torch.equal(net.weight, weights["weight"])) * 0.6, *scores])  # the score of model.pt first

    def validate(engine):
        dice = engine.state.metrics["dice"] = next(runs)
        if dice > engine.state.best_metric:
            engine.state.best_metric, engine.state.best_metric_epoch = dice, engine.state.epoch

    validator.state.best_metric, validator.state.best_metric_epoch = -1, -1
    validator.add_event_handler(Events.EPOCH_COMPLETED, validate)
    saver = AtomicCheckpointSaver(folder, {"model": net}, save_key_metric=True, key_metric_name="dice",
                                  key_metric_filename="model.pt")
    saver.attach(validator)
    trainer = Engine(lambda engine, batch: net.weight.data.add_(1.0))
    BestModelGuard(folder / "model.pt", net, validator, saver, resume=resume).attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: validator.run())
    trainer.run([0], max_epochs=len(scores))
    return validator, net


def test_the_model_on_disk_is_scored_first_and_replaced_only_by_a_better_one(tmp_path):
    torch.manual_seed(0)
    on_disk = torch.nn.Linear(3, 1).state_dict()
    save_checkpoint(on_disk, tmp_path / "model.pt")
    (tmp_path / "training_log.csv").write_text("epoch\n")
    written = (tmp_path / "model.pt").stat().st_mtime_ns
    validator, _ = guarded_run(tmp_path, on_disk, scores=[0.5, 0.55])  # starts from model.pt, as MONAI Label does
    assert validator.state.best_metric == 0.6
    assert (tmp_path / "model.pt").stat().st_mtime_ns == written  # scoring it did not rewrite it
    assert all(torch.equal(value, load_checkpoint(tmp_path / "model.pt")[key]) for key, value in on_disk.items())
    validator, net = guarded_run(tmp_path, on_disk, scores=[0.7])
    assert torch.equal(load_checkpoint(tmp_path / "model.pt")["weight"], net.weight)


def test_a_finished_run_resumed_scores_nothing(tmp_path):
    save_checkpoint(torch.nn.Linear(3, 1).state_dict(), tmp_path / "model.pt")
    net = torch.nn.Linear(3, 1)
    validator = Validator()
    validator.add_event_handler(Events.STARTED, lambda engine: pytest.fail("the validator ran"))
    saver = AtomicCheckpointSaver(tmp_path, {"model": net}, save_key_metric=True, key_metric_name="dice",
                                  key_metric_filename="model.pt")
    trainer = Engine(lambda engine, batch: None)
    trainer.add_event_handler(Events.STARTED, lambda engine: setattr(engine.state, "epoch", 2))  # as a resume does
    BestModelGuard(tmp_path / "model.pt", net, validator, saver, resume=True).attach(trainer)
    trainer.run([0], max_epochs=2)
    assert trainer.state.epoch == 2


def test_training_from_scratch_over_a_model_is_refused(tmp_path):
    save_checkpoint(torch.nn.Linear(3, 1).state_dict(), tmp_path / "model.pt")
    before = (tmp_path / "model.pt").read_bytes()
    with pytest.raises(BundleError, match=r"model\.pt: a trained model is already there; --resume true .*--overwrite"):
        guarded_run(tmp_path, torch.nn.Linear(3, 1).state_dict(), scores=[0.9])
    assert (tmp_path / "model.pt").read_bytes() == before


def diverging_run(losses: list[float], nan_weights_at: int | None = None, scaled: bool = False) -> list[int]:
    """Two epochs of two iterations with these losses (MONAI's decollated output), guarded by DivergenceGuard.

    ``nan_weights_at``: the iteration whose step leaves a NaN weight. Returns the epochs that handlers attached
    after the guard (validation, savers) saw completed.
    """
    net = torch.nn.Linear(2, 1)

    def step(engine, batch):
        if engine.state.iteration == nan_weights_at:
            with torch.no_grad():
                net.bias.fill_(float("nan"))
        loss = torch.tensor(losses[engine.state.iteration - 1])
        return [{"loss": loss}, {"loss": loss}]

    trainer = Engine(step)
    trainer.scaler = object() if scaled else None  # MONAI's trainers hold a GradScaler under CUDA amp
    DivergenceGuard(net).attach(trainer)
    completed: list[int] = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: completed.append(engine.state.epoch))
    trainer.run([0, 1], max_epochs=2)
    return completed


def test_a_non_finite_loss_or_weight_stops_training_naming_the_epoch_and_iteration():
    assert diverging_run([2.0, 150.0, 3.0, 1.0]) == [1, 2]  # a spike in a falling loss: means 76 and 2
    with pytest.raises(BundleError, match=r"^training diverged at epoch 2, iteration 1 of 2: the loss is nan; "):
        diverging_run([1.0, 1.0, float("nan"), 1.0])
    with pytest.raises(BundleError, match=r"at epoch 1, iteration 2 of 2: the loss is inf;"):
        diverging_run([1.0, float("inf"), 1.0, 1.0])
    # the step of an epoch's last iteration, whose loss was finite, leaves NaN weights: caught before validation
    with pytest.raises(BundleError, match=r"at epoch 1, iteration 2 of 2: after its optimizer step the network's "
                                          r"bias holds NaN or Inf values; nothing of this epoch was validated"):
        diverging_run([1.0] * 4, nan_weights_at=2)


def test_a_finite_loss_grown_a_hundredfold_stops_training():
    # --learning_rate 1e4: finite, but the network has left any useful region after its first steps
    with pytest.raises(BundleError, match=r"^training diverged in epoch 1: its mean loss 1e\+07 is over 100 times "
                                          r"the first loss of this run \(2\); nothing of this epoch was validated"):
        diverging_run([2.0, 2e7, 1e7, 1e7])
    with pytest.raises(BundleError, match=r"in epoch 2: its mean loss 300 is over 100 times the first loss of this "
                                          r"run \(0\.5\)"):
        diverging_run([0.5, 0.4, 300.0, 300.0])  # a fine-tune from a good model blowing up in its second epoch


def test_under_a_gradient_scaler_only_an_epoch_without_a_finite_loss_stops():
    # float16 overflows give non-finite losses whose steps the scaler skips
    assert diverging_run([1.0, float("inf"), float("nan"), 1.0], scaled=True) == [1, 2]
    with pytest.raises(BundleError, match=r"in epoch 2: the loss of every iteration was NaN or Inf"):
        diverging_run([1.0, 1.0, float("nan"), float("inf")], scaled=True)


def test_the_savers_never_write_non_finite_weights(tmp_path):
    net = torch.nn.Linear(2, 1)
    AtomicDiskSaver(tmp_path, "model.pt")({"model": net.state_dict()}, "ignored.pt")
    before = (tmp_path / "model.pt").read_bytes()
    with torch.no_grad():
        net.weight[0, 1] = float("inf")
    with pytest.raises(BundleError, match=rf"^{tmp_path / 'model.pt'}: not saved: model.weight holds NaN or Inf"):
        AtomicDiskSaver(tmp_path, "model.pt")({"model": net.state_dict(), "plan": {"epochs": 1}}, "ignored.pt")
    assert (tmp_path / "model.pt").read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.pt"]
