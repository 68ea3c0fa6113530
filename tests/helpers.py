"""What the tests build, one builder per object: paths of the repo's smoke assets, the tiny GPT-2 (config, saved
folder, `SFTModule`), its tokenizer, the datamodule on it, a lean `Trainer`, CLI flags for a fast run and what such a
run logs. Fixtures that wrap these are in conftest.py; test modules import from here, never from each other."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

import lightning.pytorch as pl
import torch

from litsft.data.collate import SFTCollator
from litsft.data.datamodule import AlpacaDataModule
from litsft.model.module import SFTModule

REPO = Path(__file__).resolve().parents[1]
SMOKE_MODEL = REPO / "configs" / "smoke" / "tiny-gpt2"  # GPT-2, 2 layers x 64 wide, 1,024 tokens, 256 positions
SMOKE_DATA = REPO / "configs" / "smoke" / "alpaca_synthetic.json"
SHARED_DATA = REPO.parent / "shared" / "data"

# The smoke config's dropout (0.1 on attention, residual and embeddings) off: equal weights give equal losses.
NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


@contextlib.contextmanager
def cwd(folder: Path = REPO) -> Iterator[Path]:
    """Run from `folder` (default the repo root, as a user does: configs use repo-relative paths), for fixtures
    wider than one test, which cannot use `monkeypatch.chdir`."""
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield folder
    finally:
        os.chdir(before)


# -- files -----------------------------------------------------------------------------------------------------------


def write_rows(path: Path, rows: list, jsonl: bool = False) -> Path:
    """`rows` as one JSON list (indented, as the Alpaca file is) or as JSON lines."""
    if jsonl:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        path.write_text(json.dumps(rows, indent=4))
    return path


AWKWARD = [
    "",  # an empty turn
    " starts with a space",
    ", starts with punctuation",
    "\nstarts with a newline",
    "ends with a space ",
    "naïve café — 你好 😀 ñ",  # non-ASCII: byte fallback in the SentencePiece vocabulary
    "assistant",  # a role name as content
    "user\n",
    "1. red\n2. blue\n\n3. green",
    "  two spaces",
    "The capital of France is Paris.",
    "?!",
    "\n",
]


def awkward_conversations(n: int, seed: int = 0) -> list[list[dict]]:
    """`n` random conversations of awkward turns (system prompt or not, 1-4 turns, some ending with a user turn),
    then every awkward content as the first and as a later assistant turn."""
    rng = random.Random(seed)
    convs = []
    for k in range(n):
        messages = []
        if rng.random() < 0.4:
            messages.append({"role": "system", "content": rng.choice(["Be brief.", " Réponds en français.", ""])})
        for _ in range(rng.randint(1, 4)):
            messages.append({"role": "user", "content": rng.choice(AWKWARD + ["What is 2 + 2?", "Hi"])})
            messages.append({"role": "assistant", "content": rng.choice(AWKWARD)})
        if k % 7 == 3:  # a trailing user message: never learned, and cut (it cannot change the loss)
            messages.append({"role": "user", "content": "thanks"})
        convs.append(messages)
    # every awkward content as the first and as a later assistant turn, with and without a system prompt
    for i, content in enumerate(AWKWARD):
        convs.append([{"role": "user", "content": "q"}, {"role": "assistant", "content": content}])
        system = [{"role": "system", "content": "sys"}] if i % 2 else []
        convs.append(system + [{"role": "user", "content": content}, {"role": "assistant", "content": "a"}] * 2)
    return convs


# -- the tiny GPT-2 --------------------------------------------------------------------------------------------------


def smoke_tokenizer():
    """The smoke model's GPT-2 tokenizer (1,024 tokens), loaded as litsft loads it (pad token = EOS)."""
    from litsft.data.tokenizer import load_tokenizer

    return load_tokenizer(str(SMOKE_MODEL))


def tiny_gpt2_config(**fields):
    """The smoke model's GPT-2 config with `fields` changed."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(SMOKE_MODEL))
    for key, value in fields.items():
        setattr(config, key, value)
    return config


def save_pretrained_tiny_gpt2(folder: Path, dropout: float = 0.1, seed: int = 0, **config) -> Path:
    """A tiny GPT-2 (the smoke model's shape and tokenizer) written with `save_pretrained`, as a user's model folder
    is: `from_pretrained` loads it in EVAL mode with the config's dropout (0.1 on attention, residual and
    embeddings) and 1,024 positions, like distilgpt2, so configs/default.yaml runs on it unchanged.
    `--model.random_init` builds its model in train mode and so hides any difference;
    tests of the path users take use this instead."""
    from transformers import AutoModelForCausalLM

    dropouts = {key: dropout for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop")}
    hf_config = tiny_gpt2_config(**(dropouts | {"n_positions": 1024} | config))
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(hf_config).save_pretrained(str(folder))
    smoke_tokenizer().save_pretrained(str(folder))
    return folder


def tiny_module(
    *, seed: int | None = 0, configure: bool = True, module_class: type[SFTModule] = SFTModule, **settings
) -> SFTModule:
    """An `SFTModule` of the smoke GPT-2 with random weights and dropout off (pass `config_overrides=None` for the
    config's 0.1), built after `pl.seed_everything(seed)` (None: no seeding) and configured (`configure=False`:
    left to `Trainer.fit`, which then builds the weights from the RNG state it finds)."""
    if seed is not None:
        pl.seed_everything(seed)
    settings = {"config_overrides": NO_DROPOUT} | settings
    module = module_class(model_name_or_path=str(SMOKE_MODEL), random_init=True, **settings)
    if configure:
        module.configure_model()
    return module


class SGDModule(SFTModule):
    """Plain SGD: the update is linear in the gradient, so equal weights mean equal gradients. (AdamW divides by
    sqrt(v): for near-zero gradients it turns float round-off between 1 and 2 processes into sign flips.)"""

    def configure_optimizers(self):
        return torch.optim.SGD(self.model.parameters(), lr=0.5)


# Three rows of 20, 15 and 11 tokens, 3 of them prompt: a right-padded batch without any tokenizer.
TOKEN_ROWS = [{"input_ids": list(range(5, 5 + n)), "prompt_len": 3} for n in (20, 15, 11)]


def token_batch(width: int = 0) -> dict:
    """`TOKEN_ROWS` collated, each row `width` tokens longer (another batch shape): input_ids (3, 20 + width)."""
    return SFTCollator(0)([dict(r, input_ids=r["input_ids"] + [9] * width) for r in TOKEN_ROWS])


# -- data and Trainer ------------------------------------------------------------------------------------------------


def tiny_datamodule(dataset: Path, cache_dir: Path, **settings) -> AlpacaDataModule:
    """The datamodule on `dataset` with the smoke tokenizer, 8 validation rows, batches of 4, no worker processes
    and its own tokenized cache in `cache_dir` (tests never share one); `settings` change any of these."""
    defaults = dict(tokenizer_name_or_path=str(SMOKE_MODEL), val_size=8, batch_size=4, num_workers=0)
    return AlpacaDataModule(**(defaults | {"dataset": str(dataset), "cache_dir": str(cache_dir)} | settings))


# A Trainer that does only what a test asks: CPU, no logger, no checkpoints, no progress bar or summary, no
# sanity validation, the datamodule's own sampler.
LEAN_TRAINER = dict(
    accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    use_distributed_sampler=False, num_sanity_val_steps=0,
)  # fmt: skip


def lean_trainer(**settings) -> pl.Trainer:
    """`pl.Trainer` with `LEAN_TRAINER`'s settings, `settings` added or changed."""
    return pl.Trainer(**(LEAN_TRAINER | settings))


class GradCapture(pl.Callback):
    """Keeps the gradients of the first optimizer step."""

    def __init__(self):
        self.grads = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self.grads is None:
            self.grads = {k: p.grad.detach().clone() for k, p in pl_module.model.named_parameters()}


def first_step_grads(path: Path, tmp_path: Path, batch_size: int, accumulate: int, **data_kw) -> dict:
    """{name: gradient} of the first optimizer step of the tiny module (dropout off) on `path`, rows in order."""
    module = tiny_module(seed=None, configure=False)  # fit builds the weights, after the seed below
    dm = tiny_datamodule(path, tmp_path / "cache", val_size=0, batch_size=batch_size, group_by_length=False, **data_kw)
    capture = GradCapture()
    pl.seed_everything(0)
    trainer = lean_trainer(max_steps=1, accumulate_grad_batches=accumulate, callbacks=[capture])
    trainer.fit(module, datamodule=dm)
    return capture.grads


# -- CLI runs --------------------------------------------------------------------------------------------------------


def tiny_model_args(tmp_path: Path, data: Path, *extra: str) -> list[str]:
    """CLI flags for a fast CPU run of the smoke model on `data`."""
    return [
        "-c", str(REPO / "configs" / "smoke.yaml"),
        "--data.dataset", str(data),
        "--data.val_size", "8",
        "--data.batch_size", "4",
        "--trainer.default_root_dir", str(tmp_path / "run"),
        "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        *extra,
    ]  # fmt: skip


# A fake W&B API key present during the shared smoke run: no file the run writes may contain it.
FAKE_WANDB_KEY = "f" * 8 + "5ec7e7" * 5 + "f" * 2  # 40 characters, like a real key

# Callbacks that cost time and log nothing the reliability tests compare.
LEAN_ARGS = ["--samples.enabled", "false", "--throughput.enabled", "false", "--export.enabled", "false"]


def csv_logger_args(root: Path) -> list[str]:
    """Log every optimizer step to <root>/csv/version_N/metrics.csv, written at once (tests read it mid-run)."""
    return [
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(root),
        "--trainer.logger.name", "csv", "--trainer.logger.flush_logs_every_n_steps", "1",
        "--trainer.log_every_n_steps", "1",
    ]  # fmt: skip


def logged_metrics(root: Path, key: str) -> dict[int, float]:
    """{step: value} of `key` from every metrics.csv under `root` (a resumed run writes a new version)."""
    values: dict[int, float] = {}
    for path in sorted(root.rglob("metrics.csv")):
        with path.open() as f:
            for row in csv.DictReader(f):
                if row.get(key):
                    values[int(row["step"])] = float(row[key])
    return values


def cli_one_thread(args: list[str]):
    """`cli_main(args)` on one intra-op thread, as the reliability tests compare runs bit for bit: the tiny model
    gains nothing from a second thread, and on a busy 2-core machine spinning OpenMP threads make each step
    10-20x slower. (Runs compared with each other must use the same thread count: sums split differently round
    differently.)"""
    from litsft.cli import cli_main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return cli_main(args)
    finally:
        torch.set_num_threads(threads)


# 104 rows - 8 validation = 96 training rows = 24 micro-batches of 4 = 12 optimizer steps per epoch (accumulate
# 2); validation every 12 micro-batches (Lightning's val_check_interval 0.5, set here), i.e. mid-epoch and at the
# end, on step ends. (litsft's own schedule, --validation.*, resumes exactly too: tests/test_validation_schedule.py.)
RESUME_STEPS_PER_EPOCH = 12


def write_resume_rows(folder: Path) -> Path:
    """The 104 synthetic rows of the resume and determinism runs, written to `folder`."""
    from litsft.smoke_assets import synthetic_rows

    return write_rows(folder / "rows.json", synthetic_rows(104, seed=3))


def resume_run_args(root: Path, data: Path, *extra: str) -> list[str]:
    """`fit` for 2 epochs of `RESUME_STEPS_PER_EPOCH` steps (dropout on, accumulate 2, validation mid-epoch), every
    step's losses logged under `root`."""
    return [
        "fit", *tiny_model_args(root, data), *LEAN_ARGS, *csv_logger_args(root),
        "--trainer.max_epochs", "2", "--trainer.accumulate_grad_batches", "2", "--trainer.val_check_interval", "0.5",
        *extra,
    ]  # fmt: skip


def run_resume_reference(root: Path, data: Path) -> tuple[Path, dict[int, float], dict[int, float]]:
    """The uninterrupted run (root, train losses, val losses); it also keeps checkpoints written at a step end before
    validation (step 6), at the last step of epoch 0 (on_train_batch_end, step 12) and at epoch 0's end
    (on_train_epoch_end)."""
    checkpoints = [
        "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.dirpath", str(root / "by_step"),
        "--trainer.callbacks.every_n_train_steps", "6", "--trainer.callbacks.save_top_k", "-1",
        "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.dirpath", str(root / "by_epoch"),
        "--trainer.callbacks.save_on_train_epoch_end", "true", "--trainer.callbacks.save_top_k", "-1",
    ]  # fmt: skip
    with cwd(REPO):
        cli_one_thread(resume_run_args(root, data, *checkpoints))
    losses = logged_metrics(root, "train/loss")
    assert len(losses) == 2 * RESUME_STEPS_PER_EPOCH
    return root, losses, logged_metrics(root, "val/loss")


def run_smoke_config(run: Path):
    """`fit -c configs/smoke.yaml` as a new user runs it (W&B offline + CSV, samples on) into `run`, with a fake W&B
    API key set: (cli, run)."""
    from litsft.cli import cli_main

    key = os.environ.get("WANDB_API_KEY")
    os.environ["WANDB_API_KEY"] = FAKE_WANDB_KEY
    try:
        with cwd(REPO):
            cli = cli_main(
                ["fit", "-c", "configs/smoke.yaml", "--trainer.default_root_dir", str(run),
                 "--trainer.logger.init_args.save_dir", str(run), "--trainer.enable_progress_bar", "false"]
            )  # fmt: skip
    finally:
        os.environ.pop("WANDB_API_KEY") if key is None else os.environ.update(WANDB_API_KEY=key)
    return cli, run


def offline_run_folder(run: Path) -> Path:
    """The first offline W&B run folder under <run>/wandb."""
    folders = sorted((run / "wandb").glob("offline-run-*"))
    assert folders, f"no offline W&B run under {run}"
    return folders[0]


def latest_table(folder: Path) -> dict:
    """The newest samples table an offline W&B run folder holds."""
    tables = sorted(folder.rglob("samples/table_*.table.json"), key=lambda p: int(p.name.split("_")[1]))
    assert tables, f"no samples table in {folder}"
    return json.loads(tables[-1].read_text())
