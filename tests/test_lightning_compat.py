"""Every assumption of `litsft.lightning_compat` about Lightning's private attributes and behaviour, pinned.

On a Lightning release that breaks one, the test says which: "Lightning <version> changed <what>:
litsft.lightning_compat.<function> needs updating". The behaviour is checked on real (tiny) Trainer runs.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from pathlib import Path

import lightning
import pytest
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.strategies import ModelParallelStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities.exceptions import SIGTERMException

from litsft import lightning_compat as compat


def changed(what: str, function: str) -> str:
    return f"Lightning {lightning.__version__} changed {what}: litsft.lightning_compat.{function} needs updating"


@contextmanager
def pinned(what: str, function: str):
    """Any failure inside (an attribute gone, a value not as assumed) is reported as that Lightning change."""
    try:
        yield
    except (AssertionError, AttributeError, KeyError, TypeError, ImportError) as err:
        pytest.fail(f"{changed(what, function)} ({type(err).__name__}: {err})", pytrace=False)


def attempt(function, *args):
    """`function(*args)`, or the exception it raised: a run that records an assumption gone fails that assumption's
    test (inside `pinned`), not the whole run."""
    try:
        return function(*args)
    except Exception as err:  # noqa: BLE001 - re-raised by `unwrap` in the test that reads it
        return err


def unwrap(value):
    if isinstance(value, Exception):
        raise value
    return value


def tiny_trainer(tmp_path: Path, callback: Callback, **kwargs) -> Trainer:
    settings = dict(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(tmp_path), callbacks=[callback],
    )  # fmt: skip
    return Trainer(**(settings | kwargs))


# -- one recorded run: 2 epochs of 5 micro-batches, 2 per optimizer step (steps end at batches 1, 3, 4 of an epoch) --

VALIDATE_AFTER = {1, 6}  # micro-batches counted over the run


class Recorder(Callback):
    def __init__(self) -> None:
        self.batch_ends: dict[int, dict] = {}  # total batch index -> what the compat functions said there
        self.validated_after: list[int] = []
        self.at_train_start: dict = {}
        self.at_train_end: dict = {}
        self.checkpoint_counts: tuple[int, int] | None = None

    def setup(self, trainer, pl_module, stage) -> None:
        trainer.check_val_every_n_epoch = None  # as litsft.callbacks.validation_schedule does

    def on_train_start(self, trainer, pl_module) -> None:
        self.at_train_start = {"trainer": attempt(compat.attached_trainer, pl_module)}
        attempt(compat.set_validation_due, trainer, False)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batch_ends[len(self.batch_ends)] = {
            "total_batch_idx": attempt(compat.total_batch_idx, trainer),
            "batch_idx": batch_idx,
            "position": attempt(compat.trained_position, trainer),
            "in_progress": attempt(compat.epoch_in_progress, trainer),
            "stepped": trainer.global_step != self._step,
        }
        if len(self.batch_ends) == 4:  # a step end: the count a checkpoint stores moves with the adjustment, and back
            self.checkpoint_counts = attempt(self.adjusted_counts, trainer)
        attempt(compat.set_validation_due, trainer, len(self.batch_ends) - 1 in VALIDATE_AFTER)

    @staticmethod
    def adjusted_counts(trainer) -> tuple[int, int]:
        path = Path(trainer.default_root_dir) / "adjusted.ckpt"
        compat.adjust_batches_that_stepped(trainer, -1)
        trainer.save_checkpoint(path)
        compat.adjust_batches_that_stepped(trainer, 1)
        lowered = torch.load(path, weights_only=True)["loops"]["fit_loop"]["epoch_loop.state_dict"]
        trainer.save_checkpoint(path)
        restored = torch.load(path, weights_only=True)["loops"]["fit_loop"]["epoch_loop.state_dict"]
        return lowered["_batches_that_stepped"], restored["_batches_that_stepped"]

    def on_validation_start(self, trainer, pl_module) -> None:
        self.validated_after.append(attempt(compat.total_batch_idx, trainer))

    def on_train_end(self, trainer, pl_module) -> None:
        self.at_train_end = {
            "in_progress": attempt(compat.epoch_in_progress, trainer),
            "batches_that_stepped": attempt(lambda: trainer.fit_loop.epoch_loop._batches_that_stepped),
            "position": attempt(compat.trained_position, trainer),
        }


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> tuple[Recorder, Trainer]:
    recorder = Recorder()
    trainer = tiny_trainer(
        tmp_path_factory.mktemp("compat"), recorder, max_epochs=2, limit_train_batches=5, limit_val_batches=1,
        accumulate_grad_batches=2,
    )  # fmt: skip
    trainer.fit(BoringModel())
    return recorder, trainer


@pytest.mark.integration
def test_trained_position_counts_the_batches_lightning_restores_as_done(recorded):
    recorder, _ = recorded
    with pinned("the fit loop's progress counters (epoch_progress, batch_progress)", "trained_position"):
        assert unwrap(recorder.batch_ends[2]["position"]) == (0, 3)  # epoch 0, its batches 0..2 processed
        assert unwrap(recorder.batch_ends[4]["position"]) == (1, 0)  # the epoch's last batch: the next epoch's start
        assert unwrap(recorder.batch_ends[5]["position"]) == (1, 1)
        assert unwrap(recorder.at_train_end["position"]) == (2, 0)


@pytest.mark.integration
def test_epoch_in_progress_until_the_epoch_end_hooks_ran(recorded):
    recorder, _ = recorded
    with pinned("epoch_progress.current (started, completed)", "epoch_in_progress"):
        assert all(unwrap(end["in_progress"]) is True for end in recorder.batch_ends.values())
        assert unwrap(recorder.at_train_end["in_progress"]) is False


@pytest.mark.integration
def test_total_batch_idx_counts_micro_batches_over_the_run(recorded):
    recorder, _ = recorded
    with pinned("epoch_loop.total_batch_idx", "total_batch_idx"):
        assert [unwrap(end["total_batch_idx"]) for end in recorder.batch_ends.values()] == list(range(10))
        assert [end["batch_idx"] for end in recorder.batch_ends.values()] == [0, 1, 2, 3, 4] * 2


@pytest.mark.integration
def test_validation_runs_exactly_after_the_micro_batches_set_due(recorded):
    recorder, _ = recorded
    with pinned("when fit validates with check_val_every_n_epoch=None (val_check_batch)", "set_validation_due"):
        assert [unwrap(index) for index in recorder.validated_after] == sorted(VALIDATE_AFTER)


@pytest.mark.integration
def test_batches_that_stepped_is_the_step_count_checkpoints_store(recorded):
    recorder, trainer = recorded
    with pinned("epoch_loop._batches_that_stepped", "adjust_batches_that_stepped"):
        steps_by_then = sum(recorder.batch_ends[i]["stepped"] for i in range(3))  # before batch 3's own count
        assert unwrap(recorder.checkpoint_counts) == (steps_by_then - 1, steps_by_then)
        assert unwrap(recorder.at_train_end["batches_that_stepped"]) == trainer.global_step == 6


@pytest.mark.integration
def test_attached_trainer(recorded):
    recorder, trainer = recorded
    with pinned("LightningModule._trainer", "attached_trainer"):
        assert compat.attached_trainer(BoringModel()) is None
        assert unwrap(recorder.at_train_start["trainer"]) is trainer


# -- the SIGTERM flag -------------------------------------------------------------------------------------------


class RaiseFlag(Callback):
    """Raises the flag at the end of training micro-batch `train_batch`, or of validation batch 0. Validates after
    every training micro-batch."""

    def __init__(self, train_batch: int | None) -> None:
        self.train_batch = train_batch
        self.seen: list[str] = []
        self.read_back: bool | None = None
        self.exception: BaseException | None = None

    def setup(self, trainer, pl_module, stage) -> None:
        trainer.check_val_every_n_epoch = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen.append(f"train {batch_idx}")
        if batch_idx == self.train_batch:
            compat.set_received_sigterm(trainer, True)
            self.read_back = trainer.received_sigterm
        compat.set_validation_due(trainer, True)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.seen.append(f"val {batch_idx}")
        if self.train_batch is None and not trainer.sanity_checking:
            compat.set_received_sigterm(trainer, True)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.exception = exception


@pytest.mark.integration
@pytest.mark.parametrize("where", ["training", "validation"])
def test_the_sigterm_flag_stops_fit_at_the_next_batch_end(tmp_path, where):
    flag = RaiseFlag(train_batch=2 if where == "training" else None)
    trainer = tiny_trainer(tmp_path, flag, max_steps=20, limit_train_batches=10, limit_val_batches=3)
    with pinned("what raising the SIGTERM flag does (signal_connector.received_sigterm)", "set_received_sigterm"):
        with pytest.raises(SIGTERMException):
            trainer.fit(BoringModel())
        assert isinstance(flag.exception, SIGTERMException)  # callbacks' on_exception sees it, as litsft saves there
        if where == "training":
            assert flag.read_back is True
            # the validation due after batch 2 still starts, and stops at its first batch end (litsft lowers the
            # flag while it runs, to let it finish)
            assert flag.seen[-2:] == ["train 2", "val 0"]
        else:
            assert flag.seen == ["train 0", "val 0"]  # the evaluation loop stopped at its next batch end


# -- strategies and the module --------------------------------------------------------------------------------


def test_data_parallel_mesh():
    with pinned("LightningModule.device_mesh or ModelParallelStrategy's mesh dimension names", "data_parallel_mesh"):
        assert compat.data_parallel_mesh(BoringModel()) is None
        assert 'device_mesh["data_parallel"]' in inspect.getsource(ModelParallelStrategy)


def test_model_parallel_strategy_settings():
    with pinned("ModelParallelStrategy._data_parallel_size", "set_data_parallel_size"):
        strategy = ModelParallelStrategy(data_parallel_size="auto", tensor_parallel_size=1)
        assert strategy._data_parallel_size == "auto"
        compat.set_data_parallel_size(strategy, 3)
        assert strategy._data_parallel_size == 3
        assert "self._data_parallel_size" in inspect.getsource(ModelParallelStrategy.setup_environment)
    with pinned("ModelParallelStrategy._save_distributed_checkpoint", "saves_distributed_checkpoint"):
        assert compat.saves_distributed_checkpoint(ModelParallelStrategy(save_distributed_checkpoint=False)) is False
        assert compat.saves_distributed_checkpoint(ModelParallelStrategy(save_distributed_checkpoint=True)) is True


def test_configured_checkpoint_io():
    with pinned("Strategy._checkpoint_io", "configured_checkpoint_io"):
        strategy = SingleDeviceStrategy("cpu")
        assert compat.configured_checkpoint_io(strategy) is None
        assert type(strategy.checkpoint_io) is TorchCheckpointIO  # the property makes a default: it cannot tell
        mine = TorchCheckpointIO()
        strategy.checkpoint_io = mine
        assert compat.configured_checkpoint_io(strategy) is mine


def test_is_local_path(tmp_path):
    with pinned("lightning.fabric.utilities.cloud_io._is_local_file_protocol", "is_local_path"):
        assert compat.is_local_path(tmp_path / "last.ckpt") and compat.is_local_path(str(tmp_path))
        assert not compat.is_local_path("s3://bucket/last.ckpt")


# -- LightningCLI's private steps -------------------------------------------------------------------------------


class Sized(BoringModel):
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.save_hyperparameters()


class Stop(Exception):
    pass


class RecordingCLI(compat.LightningCLIHooks):
    calls: list[str] = []

    def on_ckpt_path(self) -> None:
        self.calls.append("on_ckpt_path")
        super().on_ckpt_path()
        self.calls.append(f"width {self.config[self.config.subcommand].model.width}")

    def before_seed(self) -> None:
        self.calls.append(f"before_seed, subcommand {self.subcommand}")

    def before_instantiate_classes(self) -> None:
        raise Stop  # nothing more is needed: no trainer is built


@pytest.mark.integration
def test_cli_hooks_run_at_lightnings_private_steps_in_order(tmp_path):
    checkpoint = tmp_path / "hparams.ckpt"
    torch.save({"hyper_parameters": {"width": 7}}, checkpoint)
    RecordingCLI.calls = []
    with pinned("LightningCLI.__init__'s _parse_ckpt_path and _set_seed steps", "LightningCLIHooks"):
        with pytest.raises(Stop):
            RecordingCLI(Sized, args=["fit", "--ckpt_path", str(checkpoint)], seed_everything_default=False)
        # Lightning's own step put the checkpoint's hyperparameters over the parsed (default) ones
        assert RecordingCLI.calls == ["on_ckpt_path", "width 7", "before_seed, subcommand fit"]
