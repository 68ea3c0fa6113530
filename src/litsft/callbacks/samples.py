"""`SampleGenerationCallback`: what the model says to a few fixed prompts, from the base model on, as it trains.

This module decides when to generate, generates, and logs. The same prompts (`litsft.callbacks.sample_prompts`) are
answered at the start of `fit` (the base model, step 0) and then at every validation end (or every N optimizer
steps). W&B gets one table, a row per prompt and a column per evaluation step (base first), plus
`samples/eos_rate` (share of answers that ended with EOS) and `samples/mean_new_tokens`; every logger gets the
two numbers; without W&B a console panel shows base against now (`litsft.callbacks.sample_table`).

Ranks: with DDP each rank holds the whole model, so rank 0 generates and logs while the others go on to the
next step (they wait for it in the gradient all-reduce, at most `max_time`). With a sharded model (FSDP,
DeepSpeed ZeRO-3) every forward all-gathers parameters, so every rank generates the same prompts with the
same `max_new_tokens` and `synced_gpus`, and rank 0 logs. A generation past `max_time` is cut short and
skipped with a warning: it never stalls training.
"""

from __future__ import annotations

import time

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn

from litsft.callbacks import sample_table
from litsft.callbacks.sample_prompts import prompts_for_samples
from litsft.callbacks.step_boundary import StepBoundary
from litsft.data.datamodule import AlpacaDataModule
from litsft.data.prompts_to_answer import SamplePrompt, read_prompts
from litsft.errors import LitSFTError
from litsft.model.decoding import Deadline, generate_ids
from litsft.model.loading import context_length

TABLE_KEY = "samples/table"


def generates_on_all_ranks(trainer: Trainer, pl_module: LightningModule) -> bool:
    """True when the model is sharded over ranks, so that generation is a collective operation."""
    if trainer.world_size <= 1:
        return False
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

    strategy = trainer.strategy
    if isinstance(strategy, (FSDPStrategy, ModelParallelStrategy)):
        return True
    if isinstance(strategy, DeepSpeedStrategy):
        return strategy.zero_stage_3
    from torch.distributed.tensor import DTensor  # fully_shard applied by hand under another strategy

    return any(isinstance(p, DTensor) for p in pl_module.parameters())


class SampleGenerationCallback(Callback):
    """Answers fixed prompts during `fit`, base model first, and logs them side by side."""

    def __init__(
        self,
        enabled: bool = True,
        prompts_file: str | None = None,
        num_val_prompts: int = 3,
        every_n_steps: int | None = None,
        max_new_tokens: int = 128,
        do_sample: bool = False,
        temperature: float = 0.7,
        top_p: float = 0.9,
        seed: int = 1234,
        batch_size: int = 8,
        max_time: float = 120.0,
        console: bool | None = None,
        cpu_threads: int | None = 1,
    ) -> None:
        """
        Args:
            enabled: Set false to generate no samples.
            prompts_file: Your prompts instead of the defaults (the tutorial's two plus validation rows): a .txt file
                (one instruction per line), or .json/.jsonl with `instruction` and optional `input`, `output`.
            num_val_prompts: Validation rows (with their input and reference answer) added to the tutorial's two.
            every_n_steps: Generate every N optimizer steps; default (null): at the end of each validation.
            max_new_tokens: Most tokens generated per answer; an answer also stops at EOS.
            do_sample: Sample instead of greedy decoding (seeded: the same draws at every evaluation step).
            temperature: Sampling temperature (with do_sample).
            top_p: Nucleus sampling threshold (with do_sample).
            seed: Seed of the sampling draws; the training RNG is left as it was.
            batch_size: Prompts generated together (left-padded).
            max_time: Seconds one round of generation may take; a longer one is cut, skipped and warned about.
            console: Print base and current answers to the console. Default (null): only when no W&B logger.
            cpu_threads: Intra-op threads while generating on a CPU (the training's are restored after). Decode steps
                are too small to split: more threads mostly wait for each other, and on a busy machine a round took
                10-25 s with 2 threads against 0.5 s with 1. Null: the process's setting.
        """
        for flag, value in (("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
            if value <= 0:
                raise LitSFTError(f"--samples.{flag} must be a positive integer, got {value}.")
        if every_n_steps is not None and every_n_steps <= 0:
            raise LitSFTError(f"--samples.every_n_steps must be positive or null, got {every_n_steps}.")
        if cpu_threads is not None and cpu_threads < 1:
            raise LitSFTError(f"--samples.cpu_threads must be a positive integer or null, got {cpu_threads}.")
        if not max_time > 0:
            raise LitSFTError(f"--samples.max_time must be a positive number of seconds, got {max_time}.")
        if not 0 <= seed < 2**32:
            raise LitSFTError(f"--samples.seed must be an integer in [0, 2^32), got {seed}.")
        if num_val_prompts < 0:
            raise LitSFTError(f"--samples.num_val_prompts must be >= 0, got {num_val_prompts}.")
        self.enabled = enabled
        self.user_prompts = read_prompts(prompts_file, "--samples.prompts_file") if prompts_file else None
        self.num_val_prompts = num_val_prompts
        self.every_n_steps = every_n_steps
        self.max_new_tokens = max_new_tokens
        self.sampling = {"do_sample": do_sample, "temperature": temperature, "top_p": top_p, "seed": seed}
        self.batch_size = batch_size
        self.max_time = max_time
        self.console = console
        self.cpu_threads = cpu_threads
        self.prompts: list[SamplePrompt] = []
        self._prompt_ids: list[list[int]] = []
        # The table so far (kept in checkpoints, so a resumed run continues it): a label and step per column,
        # and answers[prompt][column].
        self.columns: list[str] = []
        self.steps: list[int] = []
        self.answers: list[list[str]] = []
        self._tried_step: int | None = None
        self._restored: dict | None = None
        self._boundary = StepBoundary()

    # -- prompts ----------------------------------------------------------------------------------------------

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Build the prompts on every rank before training, so a bad prompt fails every rank at once."""
        if stage != TrainerFn.FITTING or not self.enabled or self._prompt_ids:
            return
        datamodule = trainer.datamodule
        if not isinstance(datamodule, AlpacaDataModule):  # plain dataloaders: nothing to tokenize prompts with
            rank_zero_warn("litsft samples: no datamodule with a tokenizer; sample generation is off for this run.")
            self.enabled = False
            return
        context = context_length(pl_module.hf_config)
        self.prompts = prompts_for_samples(
            datamodule, self.user_prompts, self.num_val_prompts, self.max_new_tokens, context
        )
        # the training template or the chat template, tokenized like the training rows
        self._prompt_ids = [datamodule.encode_prompt(p) for p in self.prompts]
        self.answers = [[] for _ in self.prompts]

    # -- when -------------------------------------------------------------------------------------------------

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._maybe_sample(trainer, pl_module)  # the base model (or, when resuming, where it left off)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        self._boundary.batch_started(trainer)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        stepped = self._boundary.step_ended(trainer)
        if self.every_n_steps and stepped and trainer.global_step % self.every_n_steps == 0:
            self._maybe_sample(trainer, pl_module)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.every_n_steps is None and not trainer.sanity_checking and trainer.state.fn == TrainerFn.FITTING:
            self._maybe_sample(trainer, pl_module)

    def _maybe_sample(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._restored is not None:  # checkpoint state arrives after `setup`: keep it if the prompts match
            if self._restored.get("prompts") == [p.display() for p in self.prompts]:
                self.columns, self.steps = list(self._restored["columns"]), list(self._restored["steps"])
                self.answers = [list(a) for a in self._restored["answers"]]
            self._restored = None
        step = trainer.global_step
        # Several micro-batches (accumulation) share a global step: one try per step, and none for a step
        # already in the table (a resumed run's first step).
        if not self.enabled or not self._prompt_ids or step in self.steps or step == self._tried_step:
            return
        self._tried_step = step
        self.sample(trainer, pl_module)

    # -- generate and log -------------------------------------------------------------------------------------

    def all_ranks_generate(self, trainer: Trainer, pl_module: LightningModule) -> bool:
        """Whether generation is collective here (a sharded model); else rank 0 generates alone."""
        return generates_on_all_ranks(trainer, pl_module)

    def sample(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """One round of generation at the current step: generate, then log on rank 0."""
        everyone = self.all_ranks_generate(trainer, pl_module)
        if not (everyone or trainer.is_global_zero):
            return  # DDP: rank 0 has the whole model and generates alone; this rank goes on training
        datamodule = trainer.datamodule
        tokenizer = datamodule.tokenizer
        model = pl_module.model
        limit = context_length(model.config)
        longest = max(len(p) for p in self._prompt_ids)
        # Same on every rank (same prompts, same config): the sharded decode loop runs the same steps everywhere.
        max_new_tokens = max(1, min(self.max_new_tokens, limit - longest)) if limit else self.max_new_tokens
        deadline = Deadline(self.max_time)
        start = time.perf_counter()
        with trainer.precision_plugin.forward_context():  # autocast as in evaluation (bf16 on a GPU)
            results = generate_ids(
                model,
                self._prompt_ids,
                datamodule.stop_token_ids,
                tokenizer.pad_token_id,
                max_new_tokens,
                batch_size=self.batch_size,
                deadline=deadline,
                synced_gpus=everyone,
                num_threads=self.cpu_threads,
                **self.sampling,
            )
        seconds = time.perf_counter() - start
        if not trainer.is_global_zero:
            return
        step = trainer.global_step
        if deadline.expired:
            rank_zero_warn(
                f"litsft samples: generation at step {step} took longer than --samples.max_time={self.max_time:g}s "
                f"and was skipped. Raise max_time, or lower --samples.max_new_tokens ({self.max_new_tokens})."
            )
            return
        self.columns.append(f"step {step} (base)" if step == 0 else f"step {step}")
        self.steps.append(step)
        for row, (ids, _) in zip(self.answers, results, strict=True):
            row.append(tokenizer.decode(ids))
        stopped = sum(s for _, s in results)
        metrics = {
            "samples/eos_rate": stopped / len(results),
            "samples/mean_new_tokens": sum(len(ids) for ids, _ in results) / len(results),
        }
        self._log(trainer, metrics, seconds)

    def table(self) -> tuple[list[str], list[list[str]]]:
        """Columns and rows of the samples table: prompt, reference, then one column per evaluation step."""
        return sample_table.table(self.prompts, self.columns, self.answers)

    def _log(self, trainer: Trainer, metrics: dict[str, float], seconds: float) -> None:
        from lightning.pytorch.loggers import WandbLogger

        wandb_on = False
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
            if isinstance(logger, WandbLogger):
                wandb_on = True
                columns, rows = self.table()
                # W&B tables are immutable: log the whole table, with every column so far, each time.
                logger.log_table(TABLE_KEY, columns=columns, data=rows, step=trainer.global_step)
        if self.console if self.console is not None else not wandb_on:
            text = sample_table.panel(self.prompts, self.columns, self.answers, metrics, seconds)
            bar = trainer.progress_bar_callback
            (bar.print if bar is not None and hasattr(bar, "print") else print)(text)

    # -- checkpoint state: a resumed run continues the table --------------------------------------------------

    def state_dict(self) -> dict:
        prompts = [p.display() for p in self.prompts]
        return {"prompts": prompts, "columns": self.columns, "steps": self.steps, "answers": self.answers}

    def load_state_dict(self, state_dict: dict) -> None:
        self._restored = dict(state_dict)
