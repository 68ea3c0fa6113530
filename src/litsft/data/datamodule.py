"""`AlpacaDataModule`: instruction rows -> prompt template -> one tokenization with exact masks -> batches."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader

from litsft.data.cache import TokenizedCache, default_cache_dir, tokenizer_fingerprint
from litsft.data.chat_data import ChatData
from litsft.data.collate import SFTCollator
from litsft.data.conversations import MessageColumns, detect_format
from litsft.data.loaders import BatchSettings, Placement, collator, describe_step, eval_loader, loader, train_batches
from litsft.data.progress import no_datasets_progress
from litsft.data.prompts_to_answer import SamplePrompt, choose_prompts
from litsft.data.row_counts import RowCounts
from litsft.data.sampler import KeyedDataset, ResumableBatchSampler
from litsft.data.sources import file_fingerprint, load_rows, source_kind
from litsft.data.splits import validation_mask
from litsft.data.tokenize_alpaca import process_rows
from litsft.data.tokenizer import load_tokenizer
from litsft.errors import LitSFTError
from litsft.lightning_compat import trained_position
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
        packing: bool = False,
        pad_to_multiple_of: int | None = None,
        cache_dir: str | None = None,
        tokenize_num_proc: int | None = None,
        trust_remote_code: bool = False,
        predict_file: str | None = None,
        format: str = "auto",  # noqa: A002 - the flag is --data.format
        messages_column: str | None = None,
        role_key: str | None = None,
        content_key: str | None = None,
        role_map: dict[str, str] | None = None,
        chat_template: str | None = None,
    ) -> None:
        """
        Args:
            dataset: A hub dataset id, a local .json/.jsonl/.parquet/.csv file, or a `save_to_disk` folder.
            tokenizer_name_or_path: Tokenizer to use; linked from the model's name by the CLI (set it there).
            prompt_template: 'alpaca' (Stanford, with and without input) or 'plain' (the seed tutorial's:
                `instruction: input`, or the instruction alone without input, then the output directly).
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
            packing: Pack training rows into sequences of max_seq_length tokens (rows never attend to each other;
                same loss). A micro-batch is then batch_size such sequences: lower batch_size accordingly.
            pad_to_multiple_of: Pad each batch's length up to a multiple of this (8 helps tensor cores).
            cache_dir: Where tokenized data is cached (default $LITSFT_CACHE or ~/.cache/litsft).
            tokenize_num_proc: Processes for tokenization (default: one process; the tokenizer is multithreaded).
            trust_remote_code: Allow a tokenizer from the hub to run its own Python code. Off unless you trust it.
            predict_file: Prompts for `predict` (.txt one instruction per line, or .json/.jsonl with `instruction`
                and optional `input`; chat: `messages`), rendered with the template; default: the validation rows.
            format: 'alpaca' (instruction rows), 'messages' (chat: rows of [{role, content}, ...], loss on the
                assistant's turns only; Alpaca rows then become one-turn chats), or 'auto': 'messages' when the data
                has a `messages_column` (default 'messages' or 'conversations').
            messages_column: Column holding each row's conversation (default: 'messages', else 'conversations').
            role_key: Key of a message's role (default: 'role', or ShareGPT's 'from').
            content_key: Key of a message's text (default: 'content', or ShareGPT's 'value').
            role_map: Source roles to map, e.g. {human: user, bot: assistant} (human, gpt, model are known).
            chat_template: Chat data: 'chatml', 'zephyr' (any tokenizer: turns end with its EOS), a .jinja file or a
                template; default: the tokenizer's own. It is saved with the exported tokenizer.
        """
        super().__init__()
        # In every checkpoint, so `validate|test|predict --ckpt_path` evaluate on the run's own data (cli.py). The
        # tokenizer and trust_remote_code follow the model's (linked), which the checkpoint holds already.
        self.save_hyperparameters(ignore=["tokenizer_name_or_path", "trust_remote_code"])
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
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise LitSFTError(f"--data.pad_to_multiple_of must be >= 1 (or null), got {pad_to_multiple_of}.")
        if not 0 <= seed < 2**32:  # numpy's seeds; a negative one is an error deep inside the split
            raise LitSFTError(f"--data.seed must be an integer in [0, 2^32), got {seed}.")
        if tokenize_num_proc is not None and tokenize_num_proc < 1:
            raise LitSFTError(f"--data.tokenize_num_proc must be >= 1 (or null: one process), got {tokenize_num_proc}.")
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
        self.packing = packing
        self.pad_to_multiple_of = pad_to_multiple_of
        self.cache_dir = cache_dir or default_cache_dir()
        self.tokenize_num_proc = tokenize_num_proc
        self.trust_remote_code = trust_remote_code
        if predict_file is not None and not Path(predict_file).expanduser().is_file():
            raise LitSFTError(f"--data.predict_file: '{predict_file}' is not a file. Check the path.")
        self.predict_file = predict_file
        self.format = format
        self.message_columns = MessageColumns(messages_column, role_key, content_key, dict(role_map or {}))
        self.chat_template = chat_template
        self._chat: ChatData | None = None
        self._is_chat: bool | None = None
        self._source = None
        self._tokenizer = None
        self._checked_cache: Path | None = None  # the cache entry this process has checked (or written)
        self.counts: RowCounts | None = None
        self.train_rows = self.val_rows = None
        self._train_batches: ResumableBatchSampler | None = None
        self._train_resume: dict | None = None  # sampler position from a checkpoint, for the next train loader

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_name_or_path, self.trust_remote_code)
        return self._tokenizer

    @property
    def chat(self) -> ChatData | None:
        """The chat side (conversations, chat template) when the data is in `messages` form, else None."""
        if self._is_chat is None:
            found = detect_format(self.format, self.dataset, self.split, self.message_columns)
            chat_flags = self.chat_template is not None or self.message_columns != MessageColumns()
            if found == "alpaca" and chat_flags:
                raise LitSFTError(
                    f"--data.chat_template / --data.messages_column / --data.role_*: '{self.dataset}' holds Alpaca "
                    "rows, not conversations. Add --data.format messages to train them as one-turn chats, or drop "
                    "those flags."
                )
            self._is_chat = found == "messages"
        if self._is_chat and self._chat is None:
            self._chat = ChatData(self.dataset, self.split, self.message_columns, self.tokenizer, self.chat_template)
        return self._chat

    @property
    def eos_token_id(self) -> int:
        """The tokenizer's EOS id: the token every response ends with (and learns)."""
        return self.tokenizer.eos_token_id

    @property
    def stop_token_ids(self) -> list[int]:
        """Tokens that end an answer: EOS; for chat data the end-of-turn token too."""
        return self.chat.stop_token_ids if self.chat is not None else [self.eos_token_id]

    def encode_prompt(self, prompt: SamplePrompt) -> list[int]:
        """Token ids of a prompt as training renders it (template, special tokens), for generation."""
        if self.chat is not None:
            return self.chat.encode(prompt)
        text = self.template.render(prompt.instruction, prompt.input)
        # Tokenized like the training rows (special tokens added, a literal "<|endoftext|>" is text).
        return self.tokenizer(text, add_special_tokens=True, split_special_tokens=True)["input_ids"]

    def source_prompts(self, rows: list[int]) -> list[SamplePrompt]:
        """Prompts of source rows `rows`, their answer as reference: chat, the conversation up to its last
        assistant turn; Alpaca, the instruction and input."""
        if self.chat is not None:
            return self.chat.prompts(rows)
        if self._source is None:
            self._source, _ = load_rows(self.dataset, self.columns, self.split)
        block = self._source.select(rows)[:]
        return [SamplePrompt(*r) for r in zip(block["instruction"], block["input"], block["output"], strict=True)]

    def sample_prompts(self, count: int, fits) -> list[SamplePrompt]:
        """What the sample callback asks besides its fixed prompts: `count` validation rows whose prompt `fits`
        (see `choose_prompts`)."""
        if count <= 0 or self.val_rows is None or not len(self.val_rows):
            return []
        return choose_prompts(sorted(self.val_rows["row"][:]), self.source_prompts, count, fits)

    # -- tokenization and its cache -------------------------------------------------------------------------

    def _cache(self) -> tuple[TokenizedCache, object]:
        """The cache entry for the current settings, and the loaded rows when finding the key needed them."""
        rows = None
        if self.source_kind == "file":
            source = {"file_sha256": file_fingerprint(Path(self.dataset).expanduser())}
        else:  # hub or save_to_disk folder: the loaded dataset's own fingerprint identifies its content
            rows, fingerprint = self._load_source()
            source = {"fingerprint": fingerprint, "dataset": self.dataset, "split": self.split}
        settings = {
            "source": source,
            "columns": self.columns,
            "template": [self.template.with_input, self.template.without_input],
            "tokenizer": tokenizer_fingerprint(self.tokenizer),
            "max_seq_length": self.max_seq_length,
            "mask_prompt": self.mask_prompt,
        }
        if self.chat is not None:  # conversations: no Alpaca columns or template, the chat template instead
            del settings["columns"], settings["template"]
            settings |= self.chat.cache_settings()
        return TokenizedCache(self.cache_dir, settings), rows

    def _load_source(self):
        """(checked rows, fingerprint): conversations for chat data, else instruction rows."""
        return self.chat.load() if self.chat is not None else load_rows(self.dataset, self.columns, self.split)

    def prepare_data(self) -> None:
        cache, rows = self._cache()
        if self._usable_cache(cache):
            return
        if rows is None:
            rows, _ = self._load_source()
        if self.chat is not None:
            processed, counts = self.chat.process(rows, self.max_seq_length, self.mask_prompt, self.tokenize_num_proc)
        else:
            processed, counts = process_rows(
                rows, self.tokenizer, self.template, self.max_seq_length, self.mask_prompt, self.tokenize_num_proc
            )
        if counts.kept == 0:
            raise LitSFTError(
                f"{self.dataset}: all {counts.rows} rows were dropped: every prompt fills --data.max_seq_length "
                f"({self.max_seq_length}). Raise max_seq_length."
            )
        with no_datasets_progress():  # the Tokenizing bar above showed the long part
            cache.save(processed, counts)
        self._checked_cache = cache.path

    def _usable_cache(self, cache: TokenizedCache) -> bool:
        """Is the entry there and whole (sizes and checksums of its manifest)? A damaged one is removed, with a
        warning, to be built again."""
        if self._checked_cache == cache.path:
            return True
        problem = cache.problem()
        if problem is None:
            self._checked_cache = cache.path
            return True
        if problem != "missing":
            rank_zero_warn(f"litsft: the tokenized-data cache entry {cache.path} is damaged ({problem}); rebuilding it")
            cache.discard()
        return False

    def setup(self, stage: str | None = None) -> None:
        if self.train_rows is not None:
            return
        cache, _ = self._cache()
        if not self._usable_cache(cache):  # setup without prepare_data (a bare script), or damaged since: prepare
            self.prepare_data()
        processed, self.counts = cache.load()
        if self.trainer is not None:
            rank_zero_info(describe_step(processed, self.batch_size, self.packing, Placement.of(self.trainer)))
        rank_zero_info(f"litsft data: {self.counts.describe()} (cache {cache.path})")
        is_val = validation_mask(processed["row"][:], self.counts.rows, self.val_size, self.seed)
        self.train_rows = processed.select(np.flatnonzero(~is_val))
        self.val_rows = processed.select(np.flatnonzero(is_val))
        if len(self.train_rows) == 0:
            raise LitSFTError(
                f"--data.val_size={self.val_size} leaves no training rows out of {self.counts.kept}. Lower it."
            )

    # -- loaders --------------------------------------------------------------------------------------------

    def batch_settings(self) -> BatchSettings:
        return BatchSettings(
            pad_token_id=self.tokenizer.pad_token_id,
            batch_size=self.batch_size,
            max_seq_length=self.max_seq_length,
            seed=self.seed,
            num_workers=self.num_workers,
            group_by_length=self.group_by_length,
            packing=self.packing,
            pad_to_multiple_of=self.pad_to_multiple_of,
        )

    def collator(self) -> SFTCollator:
        return collator(self.batch_settings())

    def train_dataloader(self) -> DataLoader:
        settings, placement = self.batch_settings(), Placement.of(self.trainer)
        sampler, collate_fn = train_batches(self.train_rows, settings, placement)
        if self._train_resume is not None:  # the position a checkpoint saved (load_state_dict)
            sampler.load_state_dict(self._train_resume)
            self._train_resume = None
        self._train_batches = sampler
        return loader(self.train_rows, sampler, collate_fn, settings, placement)

    # -- checkpoint state: where training stands in the data ---------------------------------------------------

    def state_dict(self) -> dict:
        trainer = self.trainer
        if self._train_batches is None or trainer is None or trainer.state.fn != "fit":
            return {}
        return {"train_batches": self._train_batches.state_dict(*trained_position(trainer))}

    def load_state_dict(self, state_dict: dict) -> None:
        # Lightning restores this before it asks for the train loader, which then starts at the saved position.
        self._train_resume = state_dict.get("train_batches")
        if self._train_resume is not None:
            # Lightning warns that a mid-epoch resume is unreliable unless the DataLoader itself has a state;
            # here the state lives in the datamodule, so the warning does not apply.
            warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")

    def source_rows(self, epoch: int, batches: list[int]) -> list[int]:
        """Source row indices (as in the data file) of global training micro-batches `batches` of `epoch`."""
        order = self._train_batches.batches_of_epoch(epoch)
        index = np.concatenate([order[b] for b in batches if b < len(order)] or [np.zeros(0, dtype=np.int64)])
        return [int(r) for r in np.asarray(self.train_rows["row"][:])[index]]

    def val_dataloader(self) -> DataLoader | list:
        if not len(self.val_rows):
            return []
        return eval_loader(self.val_rows, self.batch_settings(), Placement.of(self.trainer))

    def test_dataloader(self) -> DataLoader | list:
        """Alpaca has one split: `test` evaluates the held-out validation rows."""
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader | list:
        """Prompts of the validation rows, in order (their responses are what `predict` generates), or of
        `predict_file`: rows whose every token is prompt (prompt_len = length), which `predict_step` answers."""
        if self.predict_file is not None:
            from litsft.data.prompts_to_answer import read_prompts

            rows = []
            for prompt in read_prompts(self.predict_file, "--data.predict_file"):
                ids = self.encode_prompt(prompt)
                rows.append({"input_ids": ids, "prompt_len": len(ids)})
            return DataLoader(rows, batch_size=self.batch_size, shuffle=False, collate_fn=self.collator())
        if not len(self.val_rows):
            return []
        if self.chat is not None:  # each conversation up to its last assistant turn, rendered with the prompt
            prompts = self.source_prompts(self.val_rows["row"][:])
            rows = [{"input_ids": ids, "prompt_len": len(ids)} for ids in map(self.encode_prompt, prompts)]
            return DataLoader(rows, batch_size=self.batch_size, shuffle=False, collate_fn=self.collator())
        return DataLoader(
            KeyedDataset(self.val_rows), batch_size=self.batch_size, shuffle=False, collate_fn=self.collator()
        )
