"""Template + tokenize + mask, one row at a time in spirit, batched for speed.

Each row becomes one token sequence `prompt + response + EOS`, tokenized in ONE call so BPE merges across the
prompt/response seam are the tokenizer's own (tokenizing the two apart can shift the boundary). Which
tokens are learned is decided from character offsets: a token is learned when it covers at least one
character of the response; the appended EOS is always learned, so the model learns to stop.
Since offsets increase along the sequence, the masked tokens are exactly a prefix: we store its length
(`prompt_len`) instead of a label list, and the collator expands it.
"""

from __future__ import annotations

from litsft.batch import IGNORE_INDEX
from litsft.data.progress import no_datasets_progress
from litsft.data.row_counts import RowCounts
from litsft.prompts import PromptTemplate


def tokenize_batch(
    batch: dict[str, list],
    tokenizer,
    template: PromptTemplate,
    max_seq_length: int,
    mask_prompt: bool = True,
) -> dict[str, list]:
    """`datasets.map(batched=True)` function: rows -> `input_ids`, `prompt_len`, `num_labels` and flags.

    Returns, per row: `input_ids` (at most `max_seq_length`, EOS last unless truncated), `prompt_len` (number of
    leading tokens with label -100), `num_labels` (learned tokens; 0 means the row must be dropped),
    `truncated`, `row` (source index, when the batch carries one).
    """
    prompts = [template.render(i, x) for i, x in zip(batch["instruction"], batch["input"], strict=True)]
    texts = [p + r for p, r in zip(prompts, batch["output"], strict=True)]
    # split_special_tokens: a literal "<|endoftext|>" inside a row is text, not an EOS that ends the sample.
    enc = tokenizer(
        texts, return_offsets_mapping=True, add_special_tokens=True, split_special_tokens=True, verbose=False
    )
    eos = tokenizer.eos_token_id
    out: dict[str, list] = {"input_ids": [], "prompt_len": [], "num_labels": [], "truncated": []}
    for ids, offsets, prompt in zip(enc["input_ids"], enc["offset_mapping"], prompts, strict=True):
        if len(ids) and ids[-1] == eos and tuple(offsets[-1]) == (0, 0):
            # The tokenizer's post-processor appended its own EOS (a literal EOS in the text is text here, and
            # would have offsets): drop it, so the EOS appended below is the one and only.
            ids, offsets = ids[:-1], offsets[:-1]
        boundary = len(prompt)
        if mask_prompt:
            # First token that reaches past the prompt's last character. Special tokens added by the tokenizer
            # (BOS) have offsets (0, 0) and count as prompt.
            prompt_len = next((k for k, (_, end) in enumerate(offsets) if end > boundary), len(ids))
        else:
            prompt_len = 0
        ids = list(ids) + [eos]
        truncated = len(ids) > max_seq_length
        ids = ids[:max_seq_length]
        prompt_len = min(prompt_len, len(ids))
        out["input_ids"].append(ids)
        out["prompt_len"].append(prompt_len)
        # Position 0 is never a target (nothing precedes it), also when mask_prompt=False.
        out["num_labels"].append(len(ids) - max(prompt_len, 1))
        out["truncated"].append(truncated)
    return out


def labels_for(input_ids: list[int], prompt_len: int) -> list[int]:
    """Labels aligned with `input_ids` (not shifted; the model shifts): -100 on the prompt prefix."""
    return [IGNORE_INDEX] * prompt_len + list(input_ids[prompt_len:])


def process_rows(
    rows,
    tokenizer,
    template: PromptTemplate,
    max_seq_length: int,
    mask_prompt: bool = True,
    num_proc: int | None = None,
):
    """Checked rows (a `datasets.Dataset`) -> (kept rows with `row`, `input_ids`, `prompt_len`, `num_labels`, counts).

    Rows with no learned token left are dropped and counted, never trained on: a row with zero learned tokens
    would otherwise divide by zero somewhere (a NaN loss).
    """
    import datasets

    features = datasets.Features(
        {
            "row": datasets.Value("int64"),
            "input_ids": datasets.Sequence(datasets.Value("int32")),
            "prompt_len": datasets.Value("int32"),
            "num_labels": datasets.Value("int32"),
            "truncated": datasets.Value("bool"),
            "empty_output": datasets.Value("bool"),
        }
    )

    def fn(batch: dict, indices: list[int]) -> dict:
        out = tokenize_batch(batch, tokenizer, template, max_seq_length, mask_prompt)
        out["row"] = indices
        out["empty_output"] = [not o for o in batch["output"]]
        return out

    tokenized = rows.map(
        fn,
        batched=True,
        batch_size=1000,
        with_indices=True,
        remove_columns=rows.column_names,
        features=features,
        num_proc=num_proc,
        desc="Tokenizing",
        load_from_cache_file=False,  # litsft keeps its own cache, keyed by the tokenizer's content
    )
    num_labels = tokenized["num_labels"][:]
    truncated = tokenized["truncated"][:]
    empty = tokenized["empty_output"][:]
    keep = [i for i, n in enumerate(num_labels) if n > 0]
    counts = RowCounts(
        rows=len(rows),
        kept=len(keep),
        dropped=len(rows) - len(keep),
        truncated=sum(truncated[i] for i in keep),
        empty_output=sum(empty),
    )
    kept = tokenized.select(keep) if len(keep) < len(rows) else tokenized
    with no_datasets_progress():  # a copy in memory, instant after the Tokenizing bar
        kept = kept.remove_columns(["truncated", "empty_output"]).flatten_indices()
    return kept, counts
