"""`SFTModule`: a Hugging Face causal LM trained with the exact, token-weighted masked loss."""

from __future__ import annotations

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics.aggregation import SumMetric

from litsft.batch import IGNORE_INDEX, Batch, is_right_padded
from litsft.lightning_compat import attached_trainer, data_parallel_mesh
from litsft.model.attention_mask import block_causal_mask
from litsft.model.decoding import generate_ids
from litsft.model.eos_accuracy import eos_hits
from litsft.model.lm_head import capture_head_output, head_can_be_gathered
from litsft.model.loading import load_config, load_pretrained
from litsft.model.lora import LoraSettings, as_hparams, lora_settings
from litsft.model.loss import masked_ce_sum
from litsft.model.metrics import TokenMean
from litsft.model.optim import check_optimizer_settings, param_groups, warmup_cosine


class SFTModule(LightningModule):
    """Fine-tunes `model_name_or_path` on the response tokens of each row.

    The training loss of an optimizer step is the mean cross-entropy over ALL learned tokens of that step,
    across gradient-accumulation micro-batches (and ranks), exactly as one large batch would give.
    """

    def __init__(
        self,
        model_name_or_path: str = "distilgpt2",
        tokenizer_name_or_path: str | None = None,
        random_init: bool = False,
        config_overrides: dict | None = None,
        trust_remote_code: bool = False,
        learning_rate: float = 1e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_ratio: float = 0.03,
        min_lr_ratio: float = 0.1,
        gradient_checkpointing: bool = False,
        gather_head: bool = True,
        torch_compile: bool = False,
        max_new_tokens: int = 128,
        dropout: float | None = None,
        lora: LoraSettings | None = None,
    ) -> None:
        """
        Args:
            model_name_or_path: Hub id or local Hugging Face folder of a causal LM.
            tokenizer_name_or_path: Tokenizer, when not the one stored with the model.
            random_init: Build the model from its config with random weights (no weights are downloaded).
            config_overrides: Config fields to change before building, e.g. {n_layer: 2} for a small model.
            trust_remote_code: Allow a hub model to run its own Python code. Off unless you trust it.
            learning_rate: Peak AdamW learning rate (after warmup).
            weight_decay: AdamW weight decay on matrices; never on biases and norm gains.
            betas: AdamW betas.
            warmup_ratio: Share of all optimizer steps spent warming the learning rate up linearly.
            min_lr_ratio: The cosine decay ends at learning_rate * min_lr_ratio.
            gradient_checkpointing: Recompute activations in backward: less memory, about 30% more compute.
            gather_head: Run the LM head only at learned positions (same loss, less compute and memory).
            torch_compile: `torch.compile` each transformer block (regional compilation: compiles once for all blocks).
            max_new_tokens: Tokens generated per prompt by `predict`.
            dropout: Set every dropout probability of the model to this: GPT-2's resid_pdrop, embd_pdrop and
                attn_pdrop; `dropout`, `attention_dropout`, `hidden_dropout` ... in other families. Default (null):
                the model config's own (distilgpt2: 0.1, as it was pretrained and as the seed trains it).
            lora: Train low-rank adapters on the frozen model instead of every weight (`--model.lora.r 8`; needs
                `pip install -e ".[lora]"`). Default (null) or r 0: full fine-tuning.
        """
        super().__init__()
        self.lora = lora_settings(lora)  # None when off
        lora = as_hparams(self.lora)  # hparams hold plain data: checkpoints load with weights_only=True
        self.save_hyperparameters()
        if self.lora is not None:
            from litsft.model.lora import import_peft

            import_peft()  # a missing package fails now, not after the data is prepared
            self.strict_loading = False  # checkpoints hold the adapters alone; load_state_dict checks their keys
        # Set by configure_model with LoRA: the trainable parameters' count and state-dict keys, the frozen keys,
        # and the frozen base's fingerprint (checked when a checkpoint is loaded).
        self.adapter_params = 0
        self.adapter_state_keys: set[str] = set()
        self.frozen_state_keys: set[str] = set()
        self.base_fingerprint: torch.Tensor | None = None
        check_optimizer_settings(learning_rate, weight_decay, betas, warmup_ratio, min_lr_ratio)
        if dropout is not None and not 0.0 <= dropout < 1.0:
            from litsft.errors import LitSFTError

            raise LitSFTError(f"--model.dropout must be in [0, 1) (or null: the model's own), got {dropout}.")
        # Loading the config now (not the weights) fails early for a bad path or an offline hub id, and gives
        # the context length that the CLI checks against --data.max_seq_length.
        self.hf_config = load_config(model_name_or_path, trust_remote_code, config_overrides, dropout)
        self.model = None
        self.gather_head = False
        """Whether the LM head runs at learned positions only: `--model.gather_head`, where the model allows it (set
        by `configure_model`)."""
        # The loss of the optimizer step in progress: token-weighted over its micro-batches (and ranks at compute), no
        # host sync per micro-batch. Emptied by the first micro-batch of the next step (`step_loss`).
        self.train_loss = TokenMean()
        self._train_loss_step: int | None = None  # the global step whose micro-batches `train_loss` holds
        self.val_loss = TokenMean()
        # val/eos_acc: EOS targets predicted as argmax / EOS targets, over the whole set and all ranks.
        self.val_eos_hits = SumMetric(nan_strategy="disable")
        self.val_eos_total = SumMetric(nan_strategy="disable")

    def configure_model(self) -> None:
        if self.model is not None:
            return
        from transformers import AutoModelForCausalLM

        hp = self.hparams
        if hp.random_init:
            model = AutoModelForCausalLM.from_config(
                self.hf_config, trust_remote_code=hp.trust_remote_code, dtype=torch.float32
            )
        else:
            model = load_pretrained(hp.model_name_or_path, self.hf_config, hp.trust_remote_code)  # fp32, no code run
            model.train()  # from_pretrained returns eval mode; evaluation loops switch to eval themselves
        if hp.gradient_checkpointing:
            model.config.use_cache = False
            # transformers 5.2x renamed it (the old name warns, and goes in v6)
            if hasattr(model, "activation_checkpointing_enable"):
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.lora is not None:  # after gradient checkpointing (peft adapts to it), before sharding and compiling
            from litsft.model.lora import apply_lora, describe, weights_fingerprint

            self.base_fingerprint = weights_fingerprint(model)
            model = apply_lora(model, self.lora)
            rank_zero_info(describe(model, self.lora))
        mesh = data_parallel_mesh(self)
        if mesh is not None:  # FSDP2 (litsft.strategies.FSDP2Strategy / ModelParallelStrategy)
            from litsft.model.sharding import apply_fsdp2

            # bf16-mixed: all-gather and compute in bf16 (half the traffic), reduce gradients in fp32.
            trainer = attached_trainer(self)
            bf16 = trainer is not None and str(trainer.precision) == "bf16-mixed"
            apply_fsdp2(model, mesh, torch.bfloat16 if bf16 else None)
        if hp.torch_compile:
            from litsft.model.compilation import compile_blocks

            compile_blocks(model)
        self.model = model
        self.gather_head = hp.gather_head and head_can_be_gathered(model)
        if self.lora is not None:
            trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
            self.adapter_params = sum(p.numel() for _, p in trainable)  # global counts, also when sharded
            self.adapter_state_keys = {f"model.{name}" for name, _ in trainable}
            self.frozen_state_keys = set(self.state_dict()) - self.adapter_state_keys

    def on_fit_start(self) -> None:
        # `from_pretrained` returns the model in eval mode (dropout off), and Lightning (>= 2.2) keeps the modes it
        # finds: a pretrained model would train without dropout. `configure_model` switches a freshly loaded model;
        # this covers any mode left by whatever ran since. Before the sanity check: validation and generation switch
        # to eval mode and restore the mode they found, so training stays in train mode throughout.
        self.train()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask)

    def _loss_sum(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        attention_mask, position_ids = batch["attention_mask"], batch.get("position_ids")
        if position_ids is not None:  # packed rows (litsft.data.packing): causal attention within each row only
            attention_mask = block_causal_mask(
                position_ids, self.model.config._attn_implementation, next(self.model.parameters()).dtype
            )
        elif is_right_padded(batch):  # no mask needed: the model may use its plain causal kernel (litsft.batch)
            attention_mask = None
        return masked_ce_sum(
            self.model,
            batch["input_ids"],
            attention_mask,
            batch["labels"],
            gather_head=self.gather_head,
            position_ids=position_ids,
            loss_index=batch.get("loss_index"),
        )

    # -- training -----------------------------------------------------------------------------------------

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss_sum, n = self._loss_sum(batch)
        if self._train_loss_step != self.trainer.global_step:  # the first micro-batch of an optimizer step
            self.train_loss.reset()
            self._train_loss_step = self.trainer.global_step
        self.train_loss.update(loss_sum, n)
        step_tokens = batch.get("step_tokens")
        if step_tokens is None:  # a batch from elsewhere: fall back to this micro-batch's own token count
            step_tokens = n.clamp(min=1) * self.trainer.world_size * self.trainer.accumulate_grad_batches
        # Lightning divides by accumulate_grad_batches and DDP/FSDP average over ranks; undo both so the
        # gradient is d(sum of token losses of the whole step) / (learned tokens of the whole step).
        scale = self.trainer.world_size * self.trainer.accumulate_grad_batches
        return loss_sum * (scale / step_tokens.clamp(min=1))

    def step_loss(self) -> torch.Tensor | None:
        """The loss of the current optimizer step (from its first micro-batch until the next step's first): the mean
        cross-entropy over all its learned tokens, all micro-batches so far and all ranks. A scalar on the device;
        None before the first training step.

        Every rank must call it at the same point (it all-reduces, once per step: torchmetrics keeps the result
        until the next micro-batch). `on_before_optimizer_step` gives the whole step's, in any hook order.
        """
        return self.train_loss.compute() if self.train_loss.update_count > 0 else None

    def on_before_optimizer_step(self, optimizer) -> None:
        # All micro-batches of this step are in: log the step's exact loss (synced over ranks by torchmetrics).
        self.log("train/loss", self.step_loss(), on_step=True, on_epoch=False, prog_bar=True)
        self.log("lr", optimizer.param_groups[0]["lr"], on_step=True, on_epoch=False)

    # -- evaluation -----------------------------------------------------------------------------------------

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        with capture_head_output(self.model) as head_output:  # the loss forward's own logits, no second pass
            loss_sum, n = self._loss_sum(batch)
        self.val_loss.update(loss_sum, n)
        hits, total = eos_hits(head_output[-1], batch["labels"], self._eos_token_id())
        self.val_eos_hits.update(hits)
        self.val_eos_total.update(total)

    def _eos_token_id(self) -> int | list[int]:
        """The token(s) that end a learned answer: the datamodule's (EOS; chat: end of turn and EOS), else the
        model config's EOS."""
        datamodule = getattr(attached_trainer(self), "datamodule", None)
        stops = getattr(datamodule, "stop_token_ids", None)
        if stops is not None:
            return stops
        tokenizer = getattr(datamodule, "tokenizer", None)
        return tokenizer.eos_token_id if tokenizer is not None else self.hf_config.eos_token_id

    def _log_eval(self, prefix: str) -> None:
        loss = self.val_loss.compute()  # token-weighted over the whole set, all ranks
        self.log(f"{prefix}/loss", loss, prog_bar=True, sync_dist=False)
        self.log(f"{prefix}/ppl", torch.exp(loss), sync_dist=False)
        self.val_loss.reset()
        total = self.val_eos_total.compute()  # synced over ranks, so every rank takes the same branch
        if total > 0:  # no EOS target at all (every row truncated): no value rather than NaN
            self.log(f"{prefix}/eos_acc", self.val_eos_hits.compute() / total, sync_dist=False)
        self.val_eos_hits.reset()
        self.val_eos_total.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        """Greedy answers to the prompts of the batch's rows (the prompt is each row's unlabelled prefix)."""
        tokenizer = self.trainer.datamodule.tokenizer
        prompts = []
        for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"], strict=True):
            learned = (labels != IGNORE_INDEX).nonzero()
            end = int(learned[0]) if len(learned) else int(mask.sum())
            prompts.append(ids[:end].tolist())
        answers = generate_ids(
            self.model, prompts, self._eos_token_id(), tokenizer.pad_token_id, self.hparams.max_new_tokens
        )
        return [
            {"prompt": tokenizer.decode(p), "response": tokenizer.decode(a), "stopped": stopped}
            for p, (a, stopped) in zip(prompts, answers, strict=True)
        ]

    # -- LoRA checkpoints: the adapters and their optimizer state only ----------------------------------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.lora is not None:
            state = checkpoint["state_dict"]
            checkpoint["state_dict"] = {k: v for k, v in state.items() if k in self.adapter_state_keys}
            checkpoint["lora_base_fingerprint"] = self.base_fingerprint

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.lora is not None:
            from litsft.model.lora import check_fingerprint

            check_fingerprint(checkpoint.get("lora_base_fingerprint"), self.base_fingerprint)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """With LoRA, a state dict of the adapters alone loads (the frozen base comes from the model's own source)."""
        if self.lora is None or not self.adapter_state_keys:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        from litsft.model.lora import check_adapter_keys

        check_adapter_keys(state_dict.keys(), self.adapter_state_keys, self.frozen_state_keys)
        return super().load_state_dict(state_dict, strict=False, assign=assign)

    # -- optimization ---------------------------------------------------------------------------------------

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.AdamW(
            param_groups(self.model, hp.weight_decay),
            lr=hp.learning_rate,
            betas=tuple(hp.betas),
            fused=self.device.type == "cuda",
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = round(hp.warmup_ratio * total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, warmup, hp.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
