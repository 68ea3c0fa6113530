"""`fit --ckpt_path`: every setting that differs from the checkpoint's takes effect, with a line, or is refused.

Lightning's CLI silently replaces the model flags of a resumed run with the checkpoint's hyperparameters, and
restores the optimizer's learning rate and betas over the new ones: `--model.learning_rate 1e-3` after a
divergence, or `--model.config_overrides '{n_layer: 3}'`, resumed the old run unchanged, without a word.
Here instead:

- Every checkpoint stores the run's settings (`RunSettingsCallback`: the model and data flags, the batch
  layout, the length of the schedule, the seed, and a hash of a local data file).
- Resuming compares them with this run's, before anything is written (no config.yaml, no logger version, no
  W&B run). A change that cannot be resumed is refused, all at once, each flag named with both values: the
  model's shape and weights, the data and its processing, the batch layout (rows per micro-batch, devices,
  accumulation), the seeds. Everything else takes effect, and a line says so: the learning rate, betas,
  weight decay, warmup and minimum of the schedule (applied to the restored optimizer and schedule, see
  `apply_optimizer_settings`), the schedule's length (max_steps / max_epochs), and settings that change
  neither state nor order (workers, gradient checkpointing, clipping, ...).
"""

from __future__ import annotations

import math
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from litsft.errors import LitSFTError

CHECKPOINT_KEY = "litsft_settings"

# Flags a resumed run cannot change, and why. The rest take effect.
REFUSED = {
    "model.model_name_or_path": "the model",
    "model.tokenizer_name_or_path": "the tokenizer",
    "model.random_init": "the model",
    "model.config_overrides": "the model's shape",
    "model.lora.r": "the trained adapters",
    "model.lora.alpha": "the trained adapters",
    "model.lora.target_modules": "the trained adapters",
    "data.dataset": "the data",
    "data.split": "the data",
    "data.prompt_template": "the data's processing",
    "data.max_seq_length": "the data's processing",
    "data.mask_prompt": "the data's processing",
    "data.instruction_column": "the data's processing",
    "data.input_column": "the data's processing",
    "data.output_column": "the data's processing",
    "data.format": "the data's processing",
    "data.messages_column": "the data's processing",
    "data.role_key": "the data's processing",
    "data.content_key": "the data's processing",
    "data.role_map": "the data's processing",
    "data.chat_template": "the data's processing",
    "data.val_size": "the training rows",
    "data.seed": "the data order",
    "data.batch_size": "the batch layout",
    "data.group_by_length": "the batch layout",
    "data.packing": "the batch layout",
    "trainer.accumulate_grad_batches": "the batch layout",
    "trainer.world_size": "the batch layout (devices x nodes)",
    "seed_everything": "the random state (the checkpoint's generators continue)",
}
OPTIMIZER = {"model.learning_rate", "model.betas", "model.weight_decay", "model.warmup_ratio", "model.min_lr_ratio"}
SCHEDULE_LENGTH = {"trainer.max_steps", "trainer.max_epochs"}
# Names that hold no setting of the run (where it writes, what it prints).
IGNORED = {"data.cache_dir", "data.predict_file"}
LORA_KEYS = ("r", "alpha", "dropout", "target_modules")
TRAINER_KEYS = ("accumulate_grad_batches", "max_steps", "max_epochs", "gradient_clip_val", "precision")


def _plain(value):
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def run_settings(config, trainer: Trainer) -> dict:
    """The settings a checkpoint must agree with to resume, flattened to flag names, from the CLI's config."""
    settings = {f"model.{k}": v for k, v in config.model.as_dict().items()}
    # LoRA as one flag per setting, off = r 0: the adapters' shape is refused when changed, their dropout is not.
    lora = settings.pop("model.lora", None) or {}
    lora = lora if lora.get("r") else {}
    settings |= {f"model.lora.{k}": lora.get(k, 0 if k == "r" else None) for k in LORA_KEYS}
    settings |= {f"data.{k}": v for k, v in config.data.as_dict().items()}
    settings |= {f"trainer.{k}": config.trainer.get(k) for k in TRAINER_KEYS}
    settings["trainer.world_size"] = trainer.world_size
    settings["seed_everything"] = config.get("seed_everything")
    settings["data.dataset_sha256"] = data_file_hash(config.data.get("dataset"))
    return {k: _plain(v) for k, v in settings.items()}


def data_file_hash(dataset) -> str | None:
    """The content hash of a local data file (the data's identity across moves and renames), else None."""
    from litsft.data.sources import file_fingerprint

    path = Path(str(dataset)).expanduser()
    try:
        return file_fingerprint(path) if path.is_file() else None
    except (OSError, LitSFTError):
        return None  # unreadable: the data module says so with the file's name


def read_saved_settings(ckpt_path: str, weights_only: bool = True) -> tuple[dict | None, dict | None]:
    """The settings and model hyperparameters stored in a checkpoint (a file, or a sharded folder's metadata)."""
    import torch

    path = Path(ckpt_path)
    if path.is_dir():
        path = path / "meta.pt"  # Lightning's sharded checkpoints keep everything but the tensors there
    if not path.is_file():
        return None, None
    checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=weights_only)
    hparams = checkpoint.get("hyper_parameters")
    return checkpoint.get(CHECKPOINT_KEY), dict(hparams) if hparams else None


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _show(value) -> str:
    return "null" if value is None else str(value)


def check_resume(saved: dict | None, saved_hparams: dict | None, now: dict, ckpt_path: str) -> list[str]:
    """Refuse the unresumable changes (LitSFTError naming each flag); return lines for those that take effect.

    `saved`: the checkpoint's `litsft_settings`; older checkpoints have only the model's hyperparameters.
    """
    if saved is None:
        saved = {f"model.{k}": _plain(v) for k, v in (saved_hparams or {}).items() if f"model.{k}" in now}
    changes = {k: (saved[k], now.get(k)) for k in saved if k in now and not _same(saved[k], now.get(k))}
    if None in changes.get("seed_everything", ()):  # a random seed (seed_everything: true) on either side
        changes.pop("seed_everything")
    # Data: the file's content is what matters. A moved or renamed file with the same bytes is the same data;
    # the same path with other bytes is other data.
    sha = changes.pop("data.dataset_sha256", None)
    if "data.dataset" in changes and saved.get("data.dataset_sha256") and sha is None:
        changes.pop("data.dataset")
    elif sha is not None and "data.dataset" not in changes:
        changes["data.dataset"] = (f"{saved['data.dataset']} (content sha256 {sha[0][:12]}...)",
                                   f"the same path with other content (sha256 {_show(sha[1])[:12]}...)")  # fmt: skip
    refused = [(k, changes[k]) for k in REFUSED if k in changes]
    if refused:
        listed = "; ".join(f"--{k} {_show(a)} -> {_show(b)} ({REFUSED[k]})" for k, (a, b) in refused)
        raise LitSFTError(
            f"--ckpt_path {ckpt_path}: this run changes what a resumed run cannot change: {listed}. Resuming "
            "continues the same model on the same batches; set these back to the checkpoint's values (or leave "
            "the flags out), or start a new run without --ckpt_path. Nothing was written."
        )
    lines = []
    for key, (old, new) in changes.items():
        if key in IGNORED:
            continue
        if key in OPTIMIZER:
            effect = "the restored optimizer and schedule use it from the first resumed step"
        elif key in SCHEDULE_LENGTH:
            effect = "the learning-rate schedule is stretched to the new length, from the first resumed step"
        else:
            effect = "takes effect"
        lines.append(f"--{key.replace('trainer.world_size', 'trainer.devices')} {_show(old)} -> {_show(new)}: {effect}")
    return lines


class RunSettingsCallback(Callback):
    """Stores the run's settings in every checkpoint; on resume, applies the new optimizer settings."""

    def __init__(self, settings: dict | None = None) -> None:
        self.settings = settings or {}
        self._fresh: list[dict] | None = None

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        if self.settings:
            checkpoint[CHECKPOINT_KEY] = self.settings

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Optimizers are built (from this run's flags) but not yet restored: remember their settings.
        self._fresh = [
            [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
            for optimizer in trainer.optimizers
        ]

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.ckpt_path and self._fresh is not None:
            lr = apply_optimizer_settings(trainer, self._fresh)
            if lr is not None:
                rank_zero_info(f"litsft: resumed at step {trainer.global_step} with learning rate {lr:.4g}.")
        self._fresh = None


def apply_optimizer_settings(trainer: Trainer, fresh: list[list[dict]]) -> float | None:
    """Put this run's optimizer settings (lr, betas, weight decay, ...) over the ones restored from the checkpoint,
    keeping the restored moments and step counts, and recompute the learning rate where the schedule now is.

    Unchanged settings give back exactly the restored values (the same float expressions), so an exact resume
    stays exact. Returns the first group's learning rate.
    """
    import torch

    schedulers = {id(c.scheduler.optimizer): c.scheduler for c in trainer.lr_scheduler_configs}
    for optimizer, groups in zip(trainer.optimizers, fresh):
        if not isinstance(optimizer, torch.optim.Optimizer) or len(groups) != len(optimizer.param_groups):
            continue  # a wrapped optimizer (DeepSpeed) or another layout: leave it as restored
        for group, settings in zip(optimizer.param_groups, groups):
            group.update({k: v for k, v in settings.items() if k not in ("lr", "initial_lr")})
        scheduler = schedulers.get(id(optimizer))
        if scheduler is None:
            for group, settings in zip(optimizer.param_groups, groups):
                group["lr"] = settings["lr"]
            continue
        base_lrs = [settings.get("initial_lr", settings["lr"]) for settings in groups]
        scheduler.base_lrs = base_lrs
        for group, base in zip(optimizer.param_groups, base_lrs):
            group["initial_lr"] = base
        lambdas = getattr(scheduler, "lr_lambdas", None)
        if lambdas is not None:  # LambdaLR (litsft's warmup + cosine): the factor of the current step
            for group, base, factor in zip(optimizer.param_groups, base_lrs, lambdas):
                group["lr"] = base * factor(scheduler.last_epoch)
            scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    if trainer.optimizers and trainer.optimizers[0].param_groups:
        return float(trainer.optimizers[0].param_groups[0]["lr"])
    return None
