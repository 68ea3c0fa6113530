"""Writes a `save_pretrained` folder (model, tokenizer, prompt template) at the end of `fit`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from litsft.atomic_files import disk_full_error, free_bytes, is_disk_full, replace_folder, temporary_folder_beside
from litsft.errors import LitSFTError
from litsft.model.lora import ExportMode
from litsft.model.sharding import full_state_dict


class ExportCallback(Callback):
    """Exports the fine-tuned model so `AutoModelForCausalLM.from_pretrained` and `pipeline` load it."""

    def __init__(
        self, dirpath: str | None = None, enabled: bool = True, from_best: bool = True, lora: ExportMode = "merged"
    ) -> None:
        """
        Args:
            dirpath: Export folder (default: `<trainer.default_root_dir>/export`).
            enabled: Set false to skip the export.
            from_best: Export the best checkpoint of the (first) ModelCheckpoint, e.g. lowest val/loss, and leave
                the trained module holding those weights; false: the weights at the end of training.
            lora: With --model.lora: 'merged', the adapters added into the weights, a plain model that `pipeline`
                loads; or 'adapter', a peft folder (the adapters alone) for `PeftModel.from_pretrained(base, folder)`.
        """
        self.dirpath = dirpath
        self.enabled = enabled
        self.from_best = from_best
        self.lora = lora
        self.exported_from: str | None = None
        self.exported_to: Path | None = None
        self._trained = False

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._trained = False

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        self._trained = True

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.enabled and self.lora != "merged" and pl_module.lora is None:
            raise LitSFTError(f"--export.lora {self.lora} needs --model.lora (e.g. --model.lora.r 8): no adapters.")

    def export_dir(self, trainer: Trainer) -> Path:
        return Path(self.dirpath or os.path.join(trainer.default_root_dir, "export"))

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.enabled or trainer.interrupted:
            return
        if not self._trained:  # e.g. resumed from a checkpoint that had already reached max_steps / max_epochs
            rank_zero_warn("litsft: this fit ran no training step, so nothing was exported.")
            return
        if self.from_best:
            self._load_best(trainer)
        # Under FSDP every rank takes part in gathering the full weights; rank 0 writes them.
        state_dict = full_state_dict(pl_module.model)
        if trainer.is_global_zero:
            folder = self.export_dir(trainer)
            self.exported_to = export_model(pl_module, trainer.datamodule, folder, state_dict, self.lora)
            rank_zero_info(f"litsft: exported the fine-tuned model to {self.exported_to.resolve()}")
        trainer.strategy.barrier("litsft-export")

    def _load_best(self, trainer: Trainer) -> None:
        """Put the best checkpoint's weights into the module, on every rank (the strategy knows its layout)."""
        checkpoint = trainer.checkpoint_callback
        best = getattr(checkpoint, "best_model_path", "") if checkpoint is not None else ""
        if not best or not os.path.exists(best):
            return
        trainer.strategy.load_model_state_dict(trainer.strategy.load_checkpoint(best))
        self.exported_from = best
        score = checkpoint.best_model_score
        monitor = f", {checkpoint.monitor} {float(score):.4f}" if checkpoint.monitor and score is not None else ""
        rank_zero_info(f"litsft: exporting the best checkpoint {best}{monitor}")


def export_model(
    pl_module: LightningModule, datamodule, folder: Path, state_dict: dict | None = None, lora: ExportMode = "merged"
) -> Path:
    """Save model weights (safetensors), config, generation config, tokenizer and the prompt template (chat data:
    the tokenizer carries the chat template trained with, and `litsft_chat.json` says how turns end).

    `state_dict`: the full (gathered) weights when the model is sharded; None saves the model's own. `lora`: how a
    LoRA model is saved (`litsft.model.lora.save_lora`). Written into a temporary folder beside `folder`, then swapped
    in whole: a crash or a full disk during the export leaves the previous export as it was.
    """
    folder = Path(folder)
    model = pl_module.model
    tokenizer = datamodule.tokenizer
    weights = state_dict if state_dict is not None else model.state_dict()
    tensors = {t.data_ptr(): t.numel() * t.element_size() for t in weights.values() if hasattr(t, "data_ptr")}
    needed = sum(tensors.values())  # tied weights (GPT-2's embedding and head) are stored once
    free = free_bytes(folder.parent) if folder.parent.exists() else None
    if free is not None and free < needed:
        raise disk_full_error(folder.parent, f"the export '{folder.name}'", needed)
    # Generation stops at the EOS the model learned (chat: the end-of-turn token, or EOS), and pads with the
    # tokenizer's pad id.
    stops = list(datamodule.stop_token_ids)
    model.generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    chat = datamodule.chat
    if chat is not None:  # the exact template trained with: apply_chat_template and pipelines render the same
        tokenizer.chat_template = chat.format.template
    tmp = temporary_folder_beside(folder)
    try:
        if pl_module.lora is not None:
            from litsft.model.lora import save_lora

            save_lora(model, tmp, state_dict, lora)
        else:
            model.save_pretrained(str(tmp), state_dict=state_dict)
        tokenizer.save_pretrained(str(tmp))
        (chat.format if chat is not None else datamodule.template).save(tmp)
        replace_folder(tmp, folder)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        # safetensors reports a full disk as its own error type, with the OS message inside
        if is_disk_full(err) or "No space left on device" in str(err):
            raise disk_full_error(folder.parent, f"the export '{folder.name}'", needed) from err
        raise
    return folder
