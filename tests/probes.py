"""Callbacks that watch a run from outside, for tests: `--trainer.callbacks+=tests.probes.ModeProbe`."""

from __future__ import annotations

from lightning.pytorch import Callback


def module_modes(model) -> set[bool]:
    """`{True}`: every module of `model` in train mode; `{False}`: every one in eval mode; both: mixed."""
    return {m.training for m in model.modules()}


class ModeProbe(Callback):
    """Records the model's modes at every training and validation batch and at every `generate` call."""

    def __init__(self) -> None:
        self.train_batches: list[set[bool]] = []
        self.val_batches: list[set[bool]] = []
        self.generate_calls: list[set[bool]] = []

    def on_fit_start(self, trainer, pl_module) -> None:
        model = pl_module.model
        generate = model.generate

        def spy(*args, **kwargs):
            self.generate_calls.append(module_modes(model))
            return generate(*args, **kwargs)

        model.generate = spy

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.train_batches.append(module_modes(pl_module.model))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.val_batches.append(module_modes(pl_module.model))
