"""Writes a `save_pretrained` folder (model, tokenizer, prompt template) at the end of `fit`."""

from __future__ import annotations

import os
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info


class ExportCallback(Callback):
    """Exports the fine-tuned model so `AutoModelForCausalLM.from_pretrained` and `pipeline` load it."""

    def __init__(self, dirpath: str | None = None, enabled: bool = True) -> None:
        """
        Args:
            dirpath: Export folder (default: `<trainer.default_root_dir>/export`).
            enabled: Set false to skip the export.
        """
        self.dirpath = dirpath
        self.enabled = enabled
        self.exported_to: Path | None = None

    def export_dir(self, trainer: Trainer) -> Path:
        return Path(self.dirpath or os.path.join(trainer.default_root_dir, "export"))

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.enabled or trainer.interrupted:
            return
        if trainer.is_global_zero:
            self.exported_to = export_model(pl_module, trainer.datamodule, self.export_dir(trainer))
            rank_zero_info(f"litsft: exported the fine-tuned model to {self.exported_to.resolve()}")
        trainer.strategy.barrier("litsft-export")


def export_model(pl_module: LightningModule, datamodule, folder: Path) -> Path:
    """Save model weights (safetensors), config, generation config, tokenizer and the prompt template."""
    folder.mkdir(parents=True, exist_ok=True)
    model = pl_module.model
    tokenizer = datamodule.tokenizer
    # Generation stops at the EOS the model learned, and pads with the tokenizer's pad id.
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    datamodule.template.save(folder)
    return folder
