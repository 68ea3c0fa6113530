"""SIGTERM or Ctrl-C: finish the optimizer step in progress, save `last.ckpt`, say how to resume.

A job on a shared machine gets SIGTERM before it is killed (schedulers, `docker stop`, `kill`), and users press
Ctrl-C. Stopping at once would lose the work since the last checkpoint, and stopping mid-step (gradients of
some accumulation micro-batches summed, the optimizer not stepped) cannot be resumed exactly. So the first
signal only raises a flag; at the end of the optimizer step in progress (after the validation due there, if
any) the ranks agree to stop, the run stops through Lightning's own SIGTERM path, this callback saves
`last.ckpt`, and `cli_main` prints the command that resumes. A second signal stops at once without saving.

The resume is exact because everything else is in the checkpoint: Lightning's weights, optimizer, LR schedule and
loop counters, the datamodule's data position, and the random number generators (`litsft.callbacks.rng_state`).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from litsft.callbacks.step_boundary import StepBoundary
from litsft.lightning_compat import (
    adjust_batches_that_stepped,
    epoch_in_progress,
    set_received_sigterm,
    trained_position,
)
from litsft.run.resume import checkpoint_dir, resume_command

EXIT_CODES = {signal.SIGTERM: 128 + signal.SIGTERM, signal.SIGINT: 128 + signal.SIGINT}  # shell conventions


@dataclass
class StopReport:
    """What `cli_main` tells the user after a clean stop."""

    signal_name: str
    checkpoint: str
    step: int
    epoch: int
    batch: int
    num_batches: int
    exit_code: int


class GracefulStopCallback(Callback):
    """Stops cleanly on SIGTERM / Ctrl-C, after the optimizer step in progress, with a resumable `last.ckpt`."""

    def __init__(self, enabled: bool = True) -> None:
        """
        Args:
            enabled: Catch SIGTERM and Ctrl-C (stop after the current optimizer step and save last.ckpt).
                False leaves Lightning's own handling. Resumed runs restore the RNG state either way.
        """
        self.enabled = enabled
        self.requested: int | None = None  # the signal received, until the run stops
        self._previous: dict[int, object] = {}
        self._trainer: Trainer | None = None
        self._boundary = StepBoundary()
        self._validated_this_batch = False
        self._stopping = False  # the ranks agreed to stop after this optimizer step
        self._announced = False

    # -- signal handling --------------------------------------------------------------------------------------

    def _install(self, trainer: Trainer) -> None:
        if not self.enabled or threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        self._trainer = trainer
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)

    def _uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        # Keep this minimal: it runs between two bytecodes of whatever the main thread was doing (no printing).
        if self.requested is not None:  # the second signal: stop now, no checkpoint
            self._uninstall()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.requested = signum
        launcher = self._trainer.strategy.launcher if self._trainer is not None else None
        if signum == signal.SIGTERM and launcher is not None:
            launcher.kill(signum)  # as Lightning does: pass SIGTERM on to the processes it started

    def _announce(self) -> None:
        if self.requested is not None and not self._announced:
            self._announced = True
            rank_zero_info(
                f"\nlitsft: {signal.Signals(self.requested).name} received: finishing this optimizer step, then "
                "saving last.ckpt. Send it again to stop at once without saving."
            )

    def _stop_if_requested(self, trainer: Trainer) -> None:
        """Called at optimizer-step ends only, on every rank alike."""
        self._announce()
        requested = self.requested is not None
        if trainer.world_size > 1:  # all ranks must stop after the same step, or the next all-reduce hangs
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
        if requested:
            self.requested = self.requested or signal.SIGTERM  # a rank that got no signal itself stops (and saves) too
            self._stopping = True
            # Lightning's SIGTERM flag: the training loop stops at the end of this batch (or of the epoch, at its
            # last batch), after its metrics are logged and any validation due here has run (`on_validation_start`
            # lowers the flag while it runs).
            set_received_sigterm(trainer, True)

    # -- hooks ------------------------------------------------------------------------------------------------

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._install(trainer)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        self._boundary.batch_started(trainer)
        self._validated_this_batch = False

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        self._announce()
        if self._boundary.step_ended(trainer):  # not while gradient accumulation is still in progress
            self._stop_if_requested(trainer)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._stopping and trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            # Stopping after this step, and a validation is due first: Lightning's evaluation loop would abort it
            # after one batch (it checks the flag at every batch end), so no val/loss would be logged for this
            # step, and a resumed run would never run it. Let it finish; `on_validation_end` raises the flag again.
            set_received_sigterm(trainer, False)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self._validated_this_batch = True
            if self._stopping:
                set_received_sigterm(trainer, True)
            elif self._boundary.step_ended(trainer):
                self._stop_if_requested(trainer)  # a signal during validation: stop right after it

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._uninstall()  # now, before Lightning's teardown restores the handlers it found
        if not isinstance(exception, SIGTERMException) or self.requested is None:
            return
        path = checkpoint_dir(trainer) / "last.ckpt"
        if trainer.is_global_zero and path.is_symlink():
            path.unlink()  # ModelCheckpoint(save_last="link") points it at another checkpoint: do not write there
        epoch, batch = trained_position(trainer)
        # Lightning restores a run stopped right after a validation by replaying the end of that batch, which
        # counts the logging step once more (checkpoints that ModelCheckpoint writes at validation end are taken
        # before the count, ours after it): store one less, or every later step is logged one step late.
        # At an epoch's end (the stop waits for the epoch-end hooks there) nothing is replayed.
        replayed = int(self._validated_this_batch and epoch_in_progress(trainer))
        adjust_batches_that_stepped(trainer, -replayed)
        try:
            trainer.save_checkpoint(path)
        finally:
            adjust_batches_that_stepped(trainer, replayed)
        exception.litsft_stop = StopReport(  # read by cli_main, which knows the command line
            signal_name=signal.Signals(self.requested).name,
            checkpoint=str(path.resolve()),
            step=trainer.global_step,
            epoch=epoch,
            batch=batch,
            num_batches=int(trainer.num_training_batches),
            exit_code=EXIT_CODES.get(self.requested, 1),
        )

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._uninstall()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._uninstall()
        self._trainer = None


def report_stop(stop: BaseException, args: list[str] | None) -> int:
    """Print how the run stopped and the command that resumes it; return the exit status (143 SIGTERM, 130 ^C)."""
    report: StopReport | None = getattr(stop, "litsft_stop", None)
    if report is None:  # stopped by Lightning's own SIGTERM handling (--interrupt.enabled false): no checkpoint
        print("litsft: stopped by SIGTERM before a checkpoint could be saved.", file=sys.stderr)
        return EXIT_CODES[signal.SIGTERM]
    if args is None:  # a real command line: repeat it as typed (`python train.py ...` or the `litsft` script)
        args = sys.argv[1:]
        prog = f"python {sys.argv[0]}" if sys.argv[0].endswith(".py") else Path(sys.argv[0]).name
    else:
        prog = "python train.py"
    command = resume_command(args, report.checkpoint, prog)
    print(
        f"litsft: stopped by {report.signal_name} after step {report.step} (epoch {report.epoch}, "
        f"{report.batch} of {report.num_batches} batches done) and saved {report.checkpoint}\n"
        f"litsft: resume exactly where it stopped with (from {os.getcwd()}):\n  {command}\n"
        "litsft: or with --ckpt_path last, which takes the newest last.ckpt of the run's folders.",
        file=sys.stderr,
        flush=True,
    )
    return report.exit_code
