"""What a command prints: the libraries' known noise left out, message by exact message; the run's outputs last.

Every command printed 10-15 lines of tips and notices before its first useful line (a litlogger advertisement,
"TPU available: False", "Seed set to 42", a torch deprecation inside Lightning, W&B warnings about a setting
Lightning passes and about a folder W&B creates a moment later, a progress bar for writing one file) and ended
with ~30 lines of W&B's run summary over the export path. Each filter below names one message that carries no
information for a litsft user, and why; everything else, every other warning included, is shown as before.
`run_summary` then prints where the run's outputs are, as the last lines of the command.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
import warnings
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

# (logger name, message pattern): Lightning's info lines that say nothing a user acts on.
NOISE_LOGS = [
    ("lightning.pytorch.utilities.rank_zero", r"💡 Tip: "),  # advertisements for litlogger / litmodels
    ("lightning.pytorch.utilities.rank_zero", r"TPU available: False, using: 0 TPU cores$"),
    ("lightning.pytorch.utilities.rank_zero", r"HPU available: False, using: 0 HPUs$"),
    # no GPU: nothing to choose (a GPU present but unused still gets Lightning's own warning)
    ("lightning.pytorch.utilities.rank_zero", r"GPU available: False, used: False$"),
    ("lightning.pytorch.utilities.rank_zero", r"Loading `train_dataloader` to estimate number of stepping batches"),
    ("lightning.fabric.utilities.seed", r"(\[rank: \d+\] )?Seed set to \d+$"),  # the config (and config.yaml) say it
]
# (message pattern, module pattern) of Python warnings that are known noise in every litsft run.
NOISE_WARNINGS = [
    # torch 2.13 deprecates LeafSpec; Lightning 2.6's own pytree copy still builds one on every batch
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", r"lightning\.pytorch\.utilities\._pytree"),
    # litsft always instantiates the callbacks that wrote its checkpoints
    (r"Be aware that when using `ckpt_path`, callbacks used to create the checkpoint need to be provided",
     r"lightning\.pytorch\.trainer\.call"),
    # peft probes `model.is_gradient_checkpointing`, renamed in transformers 5.2x (the old name warns)
    (r"`is_gradient_checkpointing` is deprecated", r"transformers\.modeling_utils"),
    # litsft's loaders are an empty list on purpose where there are no rows (--data.val_size 0, test or predict)
    (r"Total length of `list` across ranks is zero", r"lightning\.pytorch\.utilities\.data"),
]  # fmt: skip
# Only where a checkpoint is evaluated (validate/test/predict): ModelCheckpoint writes nothing there.
EVAL_NOISE_WARNINGS = [(r"The dirpath has changed from .* won't be reloaded", r"lightning\.pytorch\.callbacks")]
# Only on resume: the run continues in its own checkpoint folder, which of course exists.
RESUME_NOISE_WARNINGS = [(r"Checkpoint directory .* exists and is not empty", r"lightning\.pytorch\.callbacks")]
# W&B's warnings (wandb.termwarn, printed straight to stderr) that are noise for every WandbLogger user:
WANDB_NOISE = [
    r"The anonymous setting has no effect",  # Lightning's WandbLogger always passes anonymous=None
    r"git root .* does not exist$",  # W&B checks its run folder for git before it creates the folder
]


class _DropMessages(logging.Filter):
    def __init__(self, patterns: list[str]) -> None:
        super().__init__()
        self.patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p.match(message) for p in self.patterns)


def quiet_logs() -> None:
    """Drop NOISE_LOGS (idempotent: one filter per logger)."""
    by_logger: dict[str, list[str]] = {}
    for name, pattern in NOISE_LOGS:
        by_logger.setdefault(name, []).append(pattern)
    for name, patterns in by_logger.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(patterns))


def quiet_warnings(subcommand: str | None, resuming: bool) -> None:
    """The filters for this command; call inside `warnings.catch_warnings()` so they end with it."""
    noise = EVAL_NOISE_WARNINGS if subcommand in ("validate", "test", "predict") else []
    noise += RESUME_NOISE_WARNINGS if subcommand == "fit" and resuming else []
    for message, module in noise:
        warnings.filterwarnings("ignore", message=message, module=module)


def quiet_noise_warnings() -> None:
    """NOISE_WARNINGS off. At import, for the process (also one a strategy spawns, which imports this module to
    unpickle the trainer), and again by each command inside its own `warnings.catch_warnings()`."""
    for message, module in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=message, module=module)


quiet_noise_warnings()


def quiet_wandb_termwarn(termwarn):
    """`wandb.termwarn` without the WANDB_NOISE messages (W&B's own code calls it as `wandb.termwarn`)."""
    patterns = [re.compile(p) for p in WANDB_NOISE]

    def quiet_termwarn(string: str, *args, **kwargs) -> None:
        if not any(p.match(str(string)) for p in patterns):
            termwarn(string, *args, **kwargs)

    quiet_termwarn._litsft = True
    return quiet_termwarn


def quiet_libraries() -> None:
    """W&B: its run summary and log-folder lines off (the summary below says where things are) unless the user
    set WANDB_QUIET / WANDB_SILENT, and its two noise warnings; transformers: no progress bar for writing a
    single-file model (`save_pretrained` of the export), other bars (loading, downloading) unchanged."""
    if "WANDB_QUIET" not in os.environ and "WANDB_SILENT" not in os.environ:
        os.environ["WANDB_QUIET"] = "true"
    try:
        import wandb
    except ImportError:  # pragma: no cover - wandb is a dependency
        wandb = None
    if wandb is not None and not getattr(wandb.termwarn, "_litsft", False):
        wandb.termwarn = quiet_wandb_termwarn(wandb.termwarn)
    from transformers.utils import logging as hf_logging

    if hasattr(hf_logging, "set_tqdm_hook"):

        def one_shard_quietly(factory, args, kwargs):
            items = args[0] if args else kwargs.get("iterable")
            if kwargs.get("desc") == "Writing model shards" and hasattr(items, "__len__") and len(items) <= 1:
                kwargs = {**kwargs, "disable": True}
            return factory(*args, **kwargs)

        hf_logging.set_tqdm_hook(one_shard_quietly)


class ModelLineCallback(Callback):
    """One line for the model instead of Lightning's 15-line summary table (`--trainer.enable_model_summary true`
    brings the table back): what it is, and how many of its parameters train."""

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        model = getattr(pl_module, "model", pl_module)
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        name = dict(getattr(pl_module, "hparams", {})).get("model_name_or_path")
        share = "all trainable" if trainable == total else f"{trainable:,} trainable ({trainable / max(total, 1):.2%})"
        source = f" ({name})" if name else ""
        rank_zero_info(f"litsft model: {type(model).__name__}{source}, {total:,} parameters, {share}")


# -- the last lines of a command: where its outputs are ---------------------------------------------------------


def _relative(path: str | os.PathLike) -> str:
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path.resolve())


def run_summary(cli, started: float) -> str | None:
    """Where the command's outputs are (export, checkpoints, metrics, W&B), for rank 0; None when nothing to say."""
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    from litsft.callbacks.export import ExportCallback
    from litsft.callbacks.prediction_writer import PredictionWriter

    trainer = getattr(cli, "trainer", None)
    if trainer is None or not trainer.is_global_zero or trainer.interrupted:
        return None
    wandb = sys.modules.get("wandb")
    wandb_run = getattr(wandb, "run", None) if wandb is not None else None
    rows: list[tuple[str, str]] = []
    for callback in trainer.callbacks:
        if isinstance(callback, ExportCallback) and callback.exported_to is not None:
            rows.append(("exported model", _relative(callback.exported_to)))
        if isinstance(callback, PredictionWriter) and callback.written_to is not None:
            rows.append(("predictions", _relative(callback.written_to)))
    checkpoint = trainer.checkpoint_callback
    if cli.subcommand == "fit" and checkpoint is not None:
        best = getattr(checkpoint, "best_model_path", "")
        if best and Path(best).is_file():
            score = checkpoint.best_model_score
            scored = f"  ({checkpoint.monitor} {float(score):.4f})" if checkpoint.monitor and score is not None else ""
            rows.append(("best checkpoint", _relative(best) + scored))
        last = getattr(checkpoint, "last_model_path", "")
        if last and Path(last).is_file():
            rows.append(("last checkpoint", _relative(last) + "  (continue: --ckpt_path last)"))
    for logger in trainer.loggers:
        if isinstance(logger, CSVLogger):
            metrics = Path(logger.log_dir) / "metrics.csv"
            if metrics.is_file():
                rows.append(("CSV metrics", _relative(metrics)))
        elif isinstance(logger, WandbLogger) and wandb_run is not None:  # the run this logger made (one per job)
            if wandb_run.offline:
                rows.append(("W&B (offline)", f"wandb sync {_relative(wandb_run.settings.sync_dir)}"))
            elif wandb_run.url:
                rows.append(("W&B run", wandb_run.url))
    if not rows:
        return None
    minutes, seconds = divmod(int(time.monotonic() - started), 60)
    steps = f", {trainer.global_step} steps" if cli.subcommand == "fit" else ""
    width = max(len(name) for name, _ in rows)
    lines = [f"litsft: {cli.subcommand} done in {minutes}:{seconds:02d}{steps}"]
    lines += [f"  {name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines)
