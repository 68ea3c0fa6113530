"""Conversations -> one tokenization each, learned token spans from character offsets, truncation at turn ends.

Per conversation (cut after its last assistant message, see `litsft.data.chat_format.trained_part`): render it with the
chat template, locate the characters to learn (each assistant message through its end-of-turn token,
`ChatFormat.locate`), tokenize the rendered text ONCE (the template writes the special tokens; none are added), and
learn every token that covers one of those characters. The ids are exactly `apply_chat_template(tokenize=True)`'s,
so training sees what generation will.

Stored per row, beside Alpaca's columns: `label_spans`, the learned token ranges as flat pairs
[start0, end0, start1, end1, ...] (the collators label `input_ids[start:end]`); `prompt_len` is the first learned
token. Tokens after the last learned one are not stored (they cannot change the loss).

Too long for `max_seq_length`: cut after the last assistant turn that fits whole (a turn boundary); when even the
first does not fit, cut inside it (its end-of-turn token is lost, counted). A row left with no learned token is
dropped and counted, as is a row without an assistant message or with a control token inside a message.
"""

from __future__ import annotations

from litsft.data.chat_format import ChatFormat, ChatRowError, trained_part
from litsft.data.progress import no_datasets_progress
from litsft.data.row_counts import RowCounts
from litsft.errors import LitSFTError

OK, NO_ASSISTANT, CONTROL_TOKEN = 0, 1, 2


def token_ranges(offsets: list[tuple[int, int]], char_spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Per character span [cs, ce): the token range [a, b) of the tokens that cover at least one of its characters
    (offsets increase along the text; zero-width tokens cover nothing)."""
    out, t, n = [], 0, len(offsets)
    for cs, ce in char_spans:
        while t < n and (offsets[t][1] <= cs or offsets[t][1] == offsets[t][0]):
            t += 1
        start = t
        while t < n and offsets[t][0] < ce:
            t += 1
        out.append((start, t))
    return out


def truncate(turns: list[tuple[int, int]], max_seq_length: int) -> tuple[int, list[tuple[int, int]], bool]:
    """(tokens to keep, assistant turns kept, cut inside a turn?) for a conversation ending at `turns[-1][1]`."""
    if turns[-1][1] <= max_seq_length:
        return turns[-1][1], turns, False
    whole = [t for t in turns if t[1] <= max_seq_length]
    if whole:  # the end of the last turn that fits: a turn boundary
        return whole[-1][1], whole, False
    return max_seq_length, [(a, min(b, max_seq_length)) for a, b in turns if a < max_seq_length], True


def tokenize_conversations(
    conversations: list[list[dict]],
    chat: ChatFormat,
    max_seq_length: int,
    mask_prompt: bool = True,
    rows: list[int] | None = None,
    where: str = "",
) -> dict[str, list]:
    """Batch of conversations -> per row `input_ids`, `prompt_len`, `num_labels` (0: drop the row), `label_spans`,
    `text` (the rendered conversation), and `truncated`, `cut_mid_turn`, `status`, `empty_output`, `turns`, `turns_cut`.

    `rows`: source indices for error messages (default: positions in the batch); `where`: the data's name.
    """
    rows = list(range(len(conversations))) if rows is None else rows
    texts, char_spans, status, empty = [], [], [], []
    for row, messages in zip(rows, conversations, strict=True):
        messages = trained_part(messages)
        empty.append(any(m["role"] == "assistant" and not m["content"] for m in messages))
        if not messages:
            state, text, spans = NO_ASSISTANT, "", []
        elif chat.control_token_in(messages) is not None:
            state, text, spans = CONTROL_TOKEN, "", []
        else:
            try:
                text, spans = chat.locate(messages)
            except ChatRowError as err:
                raise LitSFTError(f"{where}: row {row}: {err}.") from None
            state = OK
        status.append(state)
        texts.append(text)
        char_spans.append(spans)
    enc = chat.tokenizer(texts, return_offsets_mapping=True, add_special_tokens=False, verbose=False)
    keys = ("input_ids", "prompt_len", "num_labels", "label_spans", "truncated", "cut_mid_turn", "turns", "turns_cut")
    out: dict[str, list] = {key: [] for key in keys}
    for ids, offsets, spans in zip(enc["input_ids"], enc["offset_mapping"], char_spans, strict=True):
        turns = token_ranges(offsets, spans)
        if not turns:  # dropped before tokenization
            ids, kept, mid, cut, full = [], [], False, 0, 0
        else:
            # The row ends with its last learned token; with mask_prompt=false everything is learned, to the end.
            full = turns[-1][1] if mask_prompt else len(ids)
            cut, kept, mid = truncate(turns[:-1] + [(turns[-1][0], full)], max_seq_length)
        learned = kept if mask_prompt else ([(0, cut)] if kept else [])
        out["input_ids"].append(list(ids[:cut]))
        out["label_spans"].append([i for span in learned for i in span])
        out["prompt_len"].append(learned[0][0] if learned else cut)
        # Position 0 is never a target (nothing precedes it).
        out["num_labels"].append(sum(max(0, b - max(a, 1)) for a, b in learned))
        out["truncated"].append(cut < full)
        out["cut_mid_turn"].append(mid)
        out["turns"].append(len(kept))
        out["turns_cut"].append(len(turns) - len(kept))
    out.update(status=status, empty_output=empty, text=texts)
    return out


def process_conversations(
    rows, chat: ChatFormat, max_seq_length: int, mask_prompt: bool = True, num_proc: int | None = None, where: str = ""
):
    """Checked conversations (a Dataset with `messages`) -> (kept rows with `row`, `input_ids`, `prompt_len`,
    `num_labels`, `label_spans`; counts). Rows with no learned token are dropped and counted, never trained on."""
    import datasets

    features = datasets.Features(
        {
            "row": datasets.Value("int64"),
            "input_ids": datasets.Sequence(datasets.Value("int32")),
            "prompt_len": datasets.Value("int32"),
            "num_labels": datasets.Value("int32"),
            "label_spans": datasets.Sequence(datasets.Value("int32")),
            "truncated": datasets.Value("bool"),
            "cut_mid_turn": datasets.Value("bool"),
            "status": datasets.Value("int8"),
            "empty_output": datasets.Value("bool"),
            "turns": datasets.Value("int32"),
            "turns_cut": datasets.Value("int32"),
        }
    )

    def fn(batch: dict, indices: list[int]) -> dict:
        out = tokenize_conversations(batch["messages"], chat, max_seq_length, mask_prompt, indices, where)
        del out["text"]
        out["row"] = indices
        return out

    tokenized = rows.map(
        fn,
        batched=True,
        batch_size=1000,
        with_indices=True,
        remove_columns=rows.column_names,
        features=features,
        num_proc=num_proc,
        desc="Tokenizing conversations",
        load_from_cache_file=False,  # litsft keeps its own cache, keyed by the tokenizer and template
    )
    flags = {k: tokenized[k][:] for k in ("num_labels", "truncated", "cut_mid_turn", "status", "turns", "turns_cut")}
    keep = [i for i, n in enumerate(flags["num_labels"]) if n > 0]
    counts = RowCounts(
        rows=len(rows),
        kept=len(keep),
        dropped=len(rows) - len(keep),
        truncated=sum(flags["truncated"][i] for i in keep),
        cut_mid_turn=sum(flags["cut_mid_turn"][i] for i in keep),
        empty_output=sum(tokenized["empty_output"][:]),
        format="messages",
        no_assistant=sum(s == NO_ASSISTANT for s in flags["status"]),
        control_tokens=sum(s == CONTROL_TOKEN for s in flags["status"]),
        turns=sum(flags["turns"][i] for i in keep),
        turns_cut=sum(flags["turns_cut"][i] for i in keep),
    )
    kept = tokenized.select(keep) if len(keep) < len(rows) else tokenized
    drop = ["truncated", "cut_mid_turn", "status", "empty_output", "turns", "turns_cut"]
    with no_datasets_progress():  # a copy in memory, instant after the Tokenizing bar
        return kept.remove_columns(drop).flatten_indices(), counts
