"""The three ways to train one epoch that `throughput.py` compares, each run in its own process.

- tutorial: the tutorial's recipe: Hugging Face `Trainer`, batch 1 x accumulate 100, prompt masked with -100
            labels, the model's own loss (full-vocabulary logits at every position).
- raw:      a plain PyTorch loop over exactly litsft's batches (its sampler and collator, same seed) and its loss.
- litsft:   `python train.py fit` (in-process `cli_main`), timed by litsft's own throughput callback.
All three read the same tokenized rows (litsft's cache, filled once by the parent), start from the same random
weights (seeded) and use the same optimizer settings. Each prints one JSON line: token counts, seconds of the
training loop, wall seconds (model and data setup included, imports excluded), peak memory and the last loss.
"""

from __future__ import annotations

import json
import math
import os
import resource
import time
from pathlib import Path

import torch

TUTORIAL_BATCH, TUTORIAL_ACCUMULATE = 1, 100


def peak_memory_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux: the whole process


def datamodule(cfg: dict):
    from litsft.data.datamodule import AlpacaDataModule

    dm = AlpacaDataModule(
        dataset=cfg["data"], tokenizer_name_or_path=cfg["model_dir"], prompt_template=cfg["template"],
        max_seq_length=cfg["max_seq_length"], val_size=0, batch_size=cfg["batch_size"], seed=cfg["seed"],
        num_workers=cfg["workers"], cache_dir=cfg["cache"],
    )  # fmt: skip
    dm.prepare_data()  # a cache hit: the parent tokenized once
    dm.setup("fit")
    return dm


def new_model(cfg: dict, device: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(cfg["seed"])
    config = AutoConfig.from_pretrained(cfg["model_dir"])
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).to(device)


def tutorial_recipe(cfg: dict, device: str) -> dict:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from litsft.data.tokenize_alpaca import labels_for

    dm = datamodule(cfg)
    rows = dm.train_rows[: cfg["tutorial_rows"] or len(dm.train_rows)]
    examples = [
        {"input_ids": ids, "labels": labels_for(ids, p)} for ids, p in zip(rows["input_ids"], rows["prompt_len"])
    ]
    supervised = sum(sum(x != -100 for x in e["labels"][1:]) for e in examples)
    total = sum(len(e["input_ids"]) for e in examples)

    class Clock(TrainerCallback):
        def on_train_begin(self, *args, **kwargs):
            self.start = time.perf_counter()

        def on_train_end(self, *args, **kwargs):
            self.seconds = time.perf_counter() - self.start

    clock = Clock()
    args = TrainingArguments(
        output_dir=cfg["workdir"] + "/tutorial", per_device_train_batch_size=TUTORIAL_BATCH,
        gradient_accumulation_steps=TUTORIAL_ACCUMULATE, num_train_epochs=1, learning_rate=cfg["lr"], weight_decay=0.0,
        warmup_steps=cfg["warmup_ratio"], lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": cfg["min_lr_ratio"]}, max_grad_norm=1.0, logging_steps=10,
        save_strategy="no", report_to="none", use_cpu=device == "cpu", bf16=device == "cuda", seed=cfg["seed"],
        dataloader_num_workers=0, disable_tqdm=True,
    )  # fmt: skip
    trainer = Trainer(model=new_model(cfg, device), args=args, train_dataset=examples, callbacks=[clock])
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "supervised_tokens": supervised, "total_tokens": total, "token_slots": total, "seconds": clock.seconds,
        "rows": len(examples), "loss": losses[-1] if losses else None,
    }  # fmt: skip


def raw_loop(cfg: dict, device: str) -> dict:
    from torch.utils.data import DataLoader

    from litsft.data.collate import SFTCollator
    from litsft.data.loaders import row_lengths
    from litsft.data.sampler import KeyedDataset, StepBatchSampler
    from litsft.model.loss import masked_ce_sum
    from litsft.model.optim import param_groups, warmup_cosine

    dm = datamodule(cfg)
    rows, accumulate = dm.train_rows, cfg["accumulate"]
    sampler = StepBatchSampler(
        row_lengths(rows), rows["num_labels"][:], cfg["batch_size"], accumulate, seed=cfg["seed"], shuffle=True
    )
    loader = DataLoader(
        KeyedDataset(rows), batch_sampler=sampler, collate_fn=SFTCollator(dm.tokenizer.pad_token_id),
        num_workers=cfg["workers"], pin_memory=device == "cuda", persistent_workers=False,
    )  # fmt: skip
    model = new_model(cfg, device).train()
    optimizer = torch.optim.AdamW(param_groups(model, 0.0), lr=cfg["lr"], betas=(0.9, 0.999), fused=device == "cuda")
    total_steps = math.ceil(len(sampler) / accumulate)
    warmup = round(cfg["warmup_ratio"] * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, warmup, cfg["min_lr_ratio"]))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")
    counts = torch.zeros(2, dtype=torch.long, device=device)  # learned and real tokens: read once, at the end
    slots = 0
    start = time.perf_counter()
    for i, batch in enumerate(loader):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with autocast:
            # attention_mask None: right-padded rows under causal attention (as litsft's module does)
            loss_sum, n = masked_ce_sum(
                model, batch["input_ids"], None, batch["labels"], loss_index=batch["loss_index"]
            )
        (loss_sum / batch["step_tokens"]).backward()
        counts += torch.stack([n, batch["attention_mask"].sum()])
        slots += batch["input_ids"].numel()
        if (i + 1) % accumulate == 0 or i + 1 == len(sampler):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            last = loss_sum / n
    supervised, total = counts.tolist()
    seconds = time.perf_counter() - start
    return {
        "supervised_tokens": supervised, "total_tokens": total, "token_slots": slots, "seconds": seconds,
        "rows": len(rows), "loss": float(last),
    }  # fmt: skip


def litsft_fit(cfg: dict, device: str, extra: list[str]) -> dict:
    from litsft.callbacks.throughput import ThroughputCallback
    from litsft.cli import cli_main

    args = [
        "fit",
        "--model.model_name_or_path", cfg["model_dir"], "--model.random_init", "true",
        "--model.learning_rate", str(cfg["lr"]), "--model.warmup_ratio", str(cfg["warmup_ratio"]),
        "--model.min_lr_ratio", str(cfg["min_lr_ratio"]), "--model.weight_decay", "0",
        "--data.dataset", cfg["data"], "--data.prompt_template", cfg["template"],
        "--data.max_seq_length", str(cfg["max_seq_length"]), "--data.val_size", "0",
        "--data.batch_size", str(cfg["batch_size"]), "--data.num_workers", str(cfg["workers"]),
        "--data.seed", str(cfg["seed"]), "--data.cache_dir", cfg["cache"], "--seed_everything", str(cfg["seed"]),
        "--trainer.accelerator", "gpu" if device == "cuda" else "cpu", "--trainer.devices", "1",
        "--trainer.max_epochs", "1", "--trainer.accumulate_grad_batches", str(cfg["accumulate"]),
        "--trainer.gradient_clip_val", "1.0", "--trainer.default_root_dir", cfg["workdir"] + "/litsft",
        "--trainer.logger", "false", "--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--export.enabled", "false", "--samples.enabled", "false",
        *extra,
    ]  # fmt: skip
    cli = cli_main(args)
    callback = next(c for c in cli.trainer.callbacks if isinstance(c, ThroughputCallback))
    s = callback.summary
    loss = cli.trainer.callback_metrics.get("train/loss")
    # What a checkpoint of this run weighs (weights + optimizer state; LoRA: the adapters and theirs only), after
    # the timed loop.
    checkpoint = Path(cfg["workdir"]) / f"size-{os.getpid()}.ckpt"
    cli.trainer.save_checkpoint(checkpoint)
    checkpoint_bytes = checkpoint.stat().st_size
    checkpoint.unlink()
    params = list(cli.model.model.parameters())
    return {
        "supervised_tokens": s["supervised_tokens"], "total_tokens": s["total_tokens"],
        "token_slots": s["token_slots"], "seconds": s["seconds"], "rows": len(cli.datamodule.train_rows),
        "loss": float(loss) if loss is not None else None, "mfu": s.get("train/mfu"),
        "trainable_params": sum(p.numel() for p in params if p.requires_grad),
        "params": sum(p.numel() for p in params), "checkpoint_bytes": checkpoint_bytes,
    }  # fmt: skip


def run(recipe: str, cfg: dict, extra: list[str]) -> None:
    """Child entry point: train one epoch with `recipe`, print one JSON line."""
    device = "cuda" if torch.cuda.is_available() and not cfg["cpu"] else "cpu"
    start = time.perf_counter()
    if recipe == "tutorial":
        result = tutorial_recipe(cfg, device)
    elif recipe == "raw":
        result = raw_loop(cfg, device)
    else:
        result = litsft_fit(cfg, device, extra)
    if device == "cuda":
        torch.cuda.synchronize()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result.update(
        wall=time.perf_counter() - start, peak_mb=peak_memory_mb(device), device=device,
        cpu_s=usage.ru_utime + usage.ru_stime,  # this process's CPU time, all threads (not DataLoader workers)
    )  # fmt: skip
    print(json.dumps(result))
