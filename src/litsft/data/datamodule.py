"""`AlpacaDataModule`: instruction rows -> prompt template -> one tokenization with exact masks -> batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from litsft.data.cache import TokenizedCache, default_cache_dir, tokenizer_fingerprint
from litsft.data.collate import SFTCollator
from litsft.data.sampler import KeyedDataset, StepBatchSampler
from litsft.data.sources import file_fingerprint, load_rows, source_kind
from litsft.data.tokenize import RowCounts, process_rows
from litsft.errors import LitSFTError
from litsft.hf_loading import load_tokenizer
from litsft.prompts import PromptTemplate, get_template


class AlpacaDataModule(LightningDataModule):
    """Alpaca-style instruction data (`instruction`, `input`, `output`) for supervised fine-tuning.

    Tokenization runs once in `prepare_data` (one process per node) and is cached on disk keyed by the data,
    tokenizer, template and length settings; `setup` memory-maps the cache on every rank.
    """

    def __init__(
        self,
        dataset: str = "tatsu-lab/alpaca",
        tokenizer_name_or_path: str = "distilgpt2",
        prompt_template: str = "alpaca",
        max_seq_length: int = 512,
        mask_prompt: bool = True,
        val_size: int | float = 0.02,
        batch_size: int = 16,
        num_workers: int = 2,
        seed: int = 42,
        split: str = "train",
        instruction_column: str = "instruction",
        input_column: str = "input",
        output_column: str = "output",
        group_by_length: bool = True,
        pad_to_multiple_of: int | None = None,
        cache_dir: str | None = None,
        tokenize_num_proc: int | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        """
        Args:
            dataset: A hub dataset id, a local .json/.jsonl/.parquet/.csv file, or a `save_to_disk` folder.
            tokenizer_name_or_path: Tokenizer to use; linked from the model's name by the CLI (set it there).
            prompt_template: 'alpaca' (Stanford, with and without input) or 'plain' (`instruction: input` + output).
            max_seq_length: Tokens per row after templating; longer rows lose the end of their response.
            mask_prompt: Learn only the response (and EOS) tokens. False learns the prompt too.
            val_size: Validation rows: a count (int) or a fraction of the rows (float); 0 disables validation.
            batch_size: Rows per micro-batch per device.
            num_workers: DataLoader worker processes.
            seed: Seed of the train/val split and of the batch order.
            split: Split to read from a hub dataset or a DatasetDict folder.
            instruction_column: Source column holding the instruction.
            input_column: Source column holding the optional input (may be absent).
            output_column: Source column holding the response.
            group_by_length: Batch rows of similar length together (shuffled batches): little padding.
            pad_to_multiple_of: Pad each batch's length up to a multiple of this (8 helps tensor cores).
            cache_dir: Where tokenized data is cached (default $LITSFT_CACHE or ~/.cache/litsft).
            tokenize_num_proc: Processes for tokenization (default: one process; the tokenizer is multithreaded).
            trust_remote_code: Allow a tokenizer from the hub to run its own Python code. Off unless you trust it.
        """
        super().__init__()
        self.template: PromptTemplate = get_template(prompt_template)
        for flag, value in (("max_seq_length", max_seq_length), ("batch_size", batch_size)):
            if value <= 0:
                raise LitSFTError(f"--data.{flag} must be a positive integer, got {value}.")
        if isinstance(val_size, float) and not 0.0 <= val_size < 1.0:
            raise LitSFTError(f"--data.val_size: a fraction must be in [0, 1), got {val_size}. Use an int for a count.")
        if val_size < 0:
            raise LitSFTError(f"--data.val_size must be >= 0, got {val_size}.")
        if num_workers < 0:
            raise LitSFTError(f"--data.num_workers must be >= 0, got {num_workers}.")
        self.dataset = dataset
        self.source_kind = source_kind(dataset)  # fails now for a missing local file
        self.tokenizer_name_or_path = tokenizer_name_or_path
        self.max_seq_length = max_seq_length
        self.mask_prompt = mask_prompt
        self.val_size = val_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.split = split
        self.columns = {"instruction": instruction_column, "input": input_column, "output": output_column}
        self.group_by_length = group_by_length
        self.pad_to_multiple_of = pad_to_multiple_of
        self.cache_dir = cache_dir or default_cache_dir()
        self.tokenize_num_proc = tokenize_num_proc
        self.trust_remote_code = trust_remote_code
        self._tokenizer = None
        self.counts: RowCounts | None = None
        self.train_rows = self.val_rows = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_name_or_path, self.trust_remote_code)
        return self._tokenizer

    # -- tokenization and its cache -------------------------------------------------------------------------

    def _cache(self) -> tuple[TokenizedCache, object]:
        """The cache entry for the current settings, and the loaded rows when finding the key needed them."""
        rows = None
        if self.source_kind == "file":
            source = {"file_sha256": file_fingerprint(Path(self.dataset).expanduser())}
        else:  # hub or save_to_disk folder: the loaded dataset's own fingerprint identifies its content
            rows, fingerprint = load_rows(self.dataset, self.columns, self.split)
            source = {"fingerprint": fingerprint, "dataset": self.dataset, "split": self.split}
        settings = {
            "source": source,
            "columns": self.columns,
            "template": [self.template.with_input, self.template.without_input],
            "tokenizer": tokenizer_fingerprint(self.tokenizer),
            "max_seq_length": self.max_seq_length,
            "mask_prompt": self.mask_prompt,
        }
        return TokenizedCache(self.cache_dir, settings), rows

    def prepare_data(self) -> None:
        cache, rows = self._cache()
        if cache.exists():
            return
        if rows is None:
            rows, _ = load_rows(self.dataset, self.columns, self.split)
        processed, counts = process_rows(
            rows, self.tokenizer, self.template, self.max_seq_length, self.mask_prompt, self.tokenize_num_proc
        )
        if counts.kept == 0:
            raise LitSFTError(
                f"{self.dataset}: all {counts.rows} rows were dropped: every prompt fills --data.max_seq_length "
                f"({self.max_seq_length}). Raise max_seq_length."
            )
        cache.save(processed, counts)

    def setup(self, stage: str | None = None) -> None:
        if self.train_rows is not None:
            return
        cache, _ = self._cache()
        if not cache.exists():  # setup without prepare_data (e.g. a bare script): prepare here
            self.prepare_data()
        processed, self.counts = cache.load()
        rank_zero_info(f"litsft data: {self.counts.describe()} (cache {cache.path})")
        is_val = self.val_mask(processed["row"][:], self.counts.rows)
        self.train_rows = processed.select(np.flatnonzero(~is_val))
        self.val_rows = processed.select(np.flatnonzero(is_val))
        if len(self.train_rows) == 0:
            raise LitSFTError(
                f"--data.val_size={self.val_size} leaves no training rows out of {self.counts.kept}. Lower it."
            )

    def val_mask(self, rows: list[int], num_source_rows: int) -> np.ndarray:
        """Which kept rows validate. Drawn over source row indices with `seed`, so the validation rows do not
        change with tokenizer or length settings; the same for every run with the same data and seed."""
        n_val = self.val_size if isinstance(self.val_size, int) else round(self.val_size * num_source_rows)
        if n_val >= num_source_rows:
            raise LitSFTError(
                f"--data.val_size={self.val_size} asks for {n_val} validation rows but the data has only "
                f"{num_source_rows}. Use a smaller count or a fraction such as 0.02."
            )
        val_rows = np.random.default_rng(self.seed).permutation(num_source_rows)[:n_val]
        return np.isin(np.asarray(rows), val_rows)

    # -- loaders --------------------------------------------------------------------------------------------

    def collator(self) -> SFTCollator:
        return SFTCollator(self.tokenizer.pad_token_id, self.pad_to_multiple_of)

    def _loader(self, rows, shuffle: bool) -> DataLoader:
        trainer = self.trainer
        sampler = StepBatchSampler(
            lengths=np.asarray([len(x) for x in rows["input_ids"]]) if len(rows) else np.zeros(0),
            num_labels=np.asarray(rows["num_labels"][:]),
            batch_size=self.batch_size,
            accumulate=trainer.accumulate_grad_batches if (trainer and shuffle) else 1,
            num_replicas=trainer.world_size if trainer else 1,
            rank=trainer.global_rank if trainer else 0,
            seed=self.seed,
            shuffle=shuffle,
            group_by_length=self.group_by_length or not shuffle,  # evaluation order is free: sort by length
        )
        return DataLoader(
            KeyedDataset(rows),
            batch_sampler=sampler,
            collate_fn=self.collator(),
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_rows, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_rows, shuffle=False) if len(self.val_rows) else []

    def test_dataloader(self) -> DataLoader | list:
        """Alpaca has one split: `test` evaluates the held-out validation rows."""
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader | list:
        """Prompts of the validation rows, in order (their responses are what `predict` generates)."""
        if not len(self.val_rows):
            return []
        return DataLoader(
            KeyedDataset(self.val_rows), batch_size=self.batch_size, shuffle=False, collate_fn=self.collator()
        )
