"""Every private Lightning attribute and API litsft relies on, behind one small named function each.

Lightning keeps its loop counters, its SIGTERM flag and some strategy and CLI steps private, and litsft needs them
for an exact resume and a clean stop. A Lightning release may rename or change any of them; then the function here
is the one place to change, and `tests/test_lightning_compat.py` names it: each assumption below is pinned by a test
that fails with "Lightning <version> changed <what>: litsft.lightning_compat.<function> needs updating". Nothing
outside this module reads a private Lightning attribute (`tests/test_layout.py` checks the callbacks).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lightning.pytorch.cli import LightningCLI

if TYPE_CHECKING:
    from lightning.fabric.plugins import CheckpointIO
    from lightning.pytorch import LightningModule, Trainer
    from lightning.pytorch.strategies import ModelParallelStrategy, Strategy
    from torch.distributed.device_mesh import DeviceMesh

# -- the training loop's counters ---------------------------------------------------------------------------------


def trained_position(trainer: Trainer) -> tuple[int, int]:
    """(epoch, micro-batches of it trained), counted as Lightning will count them when it restores the loops.

    After a restore Lightning treats `batch_progress.current.processed` batches of the epoch as done, whichever
    hook saved the checkpoint (a step end, a validation end, an exception at a batch boundary). The epoch is the
    one those batches belong to: `epoch_progress.current.started - 1` (`current_epoch` moves on before the
    batch counter is reset). A finished epoch is reported as the start of the next one.
    """
    fit_loop = trainer.fit_loop
    epoch = max(0, fit_loop.epoch_progress.current.started - 1)
    done = fit_loop.epoch_loop.batch_progress.current.processed
    if done >= trainer.num_training_batches:
        return epoch + 1, 0
    return epoch, done


def epoch_in_progress(trainer: Trainer) -> bool:
    """Whether the current epoch has started and not yet completed (its end-of-epoch hooks not yet run)."""
    current = trainer.fit_loop.epoch_progress.current
    return current.completed < current.started


def total_batch_idx(trainer: Trainer) -> int:
    """Index of the current training micro-batch, counted over the whole run (all epochs), from 0."""
    return trainer.fit_loop.epoch_loop.total_batch_idx


def set_validation_due(trainer: Trainer, due: bool) -> None:
    """Make `fit` validate (or not) at the end of the current micro-batch, whatever `val_check_interval` said.

    Needs `trainer.check_val_every_n_epoch = None`: then Lightning validates after micro-batch i (over the run) when
    `(i + 1) % trainer.val_check_batch == 0`, and reads `val_check_batch` after `on_train_batch_end`.
    """
    batch = total_batch_idx(trainer)
    trainer.val_check_batch = batch + 1 if due else max(1, batch + 2)


def adjust_batches_that_stepped(trainer: Trainer, delta: int) -> None:
    """Add `delta` to Lightning's count of batches that ended an optimizer step: the step its loggers log at, which
    checkpoints store (`epoch_loop.state_dict`) and a resumed run goes on from."""
    trainer.fit_loop.epoch_loop._batches_that_stepped += delta


# -- stopping -------------------------------------------------------------------------------------------------------


def set_received_sigterm(trainer: Trainer, flag: bool) -> None:
    """Raise or lower Lightning's SIGTERM flag, as its own SIGTERM handler does.

    Raised, the training loop raises `SIGTERMException` at the end of the current batch (at the last batch of an
    epoch: after the epoch-end hooks), after its metrics are logged and the validation due there has run, and an
    evaluation loop raises it at its next batch end. `trainer.received_sigterm` reads it.
    """
    trainer._signal_connector.received_sigterm = flag


# -- the module and the strategy -----------------------------------------------------------------------------------


def attached_trainer(module: LightningModule) -> Trainer | None:
    """The trainer `module` is attached to, or None (`module.trainer` raises when there is none)."""
    return module._trainer


def data_parallel_mesh(module: LightningModule) -> DeviceMesh | None:
    """The data-parallel dimension of the device mesh that `ModelParallelStrategy` (and litsft's `FSDP2Strategy`)
    gives the module before `configure_model`; None under other strategies."""
    mesh = module.device_mesh
    return None if mesh is None else mesh["data_parallel"]


def set_data_parallel_size(strategy: ModelParallelStrategy, size: int) -> None:
    """Set the data-parallel size of a `ModelParallelStrategy` before its `setup_environment` builds the mesh (its
    default, "auto", means one rank per node)."""
    strategy._data_parallel_size = size


def saves_distributed_checkpoint(strategy: ModelParallelStrategy) -> bool:
    """Whether a `ModelParallelStrategy` writes a sharded checkpoint (a folder of shards) rather than one file."""
    return strategy._save_distributed_checkpoint


def configured_checkpoint_io(strategy: Strategy) -> CheckpointIO | None:
    """The `CheckpointIO` set on `strategy` (by the user or a plugin), or None when it will use Lightning's default
    (`strategy.checkpoint_io` creates that default on first read, so it cannot tell)."""
    return strategy._checkpoint_io


def is_local_path(path) -> bool:
    """Whether `path` is on the local filesystem (no `s3://`, `gs://`, ... protocol)."""
    from lightning.fabric.utilities.cloud_io import _is_local_file_protocol

    return _is_local_file_protocol(path)


# -- LightningCLI ------------------------------------------------------------------------------------------------


class LightningCLIHooks(LightningCLI):
    """`LightningCLI` with public hooks at two private steps of its `__init__` that litsft changes.

    `__init__` parses the arguments, then calls `_parse_ckpt_path` (the model hyperparameters stored in
    `--ckpt_path` go over the parsed config), sets `subcommand`, then `_set_seed` (`--seed_everything`), then
    `before_instantiate_classes`. Subclasses override `on_ckpt_path` and `before_seed` instead.
    """

    def _parse_ckpt_path(self) -> None:
        self.on_ckpt_path()

    def on_ckpt_path(self) -> None:
        """Right after parsing, before anything is built. Default: `hparams_from_ckpt_path`, as Lightning does."""
        self.hparams_from_ckpt_path()

    def hparams_from_ckpt_path(self) -> None:
        """Lightning's step: the model hyperparameters of `--ckpt_path` (a file) replace the parsed ones."""
        super()._parse_ckpt_path()

    def _set_seed(self) -> None:
        self.before_seed()
        super()._set_seed()

    def before_seed(self) -> None:
        """Before Lightning seeds everything from `--seed_everything` (`self.subcommand` is set)."""
