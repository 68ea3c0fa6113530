"""Show processed training rows: prompt tokens and learned tokens told apart.

    python -m litsft.preview -c configs/smoke.yaml --rows 5
    python -m litsft.preview -c configs/default.yaml --data.dataset alpaca_data.json --rows 100 --jsonl out.jsonl

`--jsonl` writes one object per kept row, in source order (before any split or shuffle):
`{"row": int, "text": str, "input_ids": [int], "labels": [int]}`, labels -100 where masked.
"""

from __future__ import annotations

import json
import sys

from litsft.batch import IGNORE_INDEX
from litsft.data.tokenize_alpaca import tokenize_batch

DIM, GREEN, REVERSE, RESET = "\033[2m", "\033[32m", "\033[7m", "\033[0m"


def render_row(tokenizer, input_ids: list[int], prompt_len: int, colour: bool) -> str:
    """Prompt tokens dim, learned tokens green (EOS shown reversed). Without colour: learned part in [[...]]."""
    prompt = tokenizer.decode(input_ids[:prompt_len])
    learned_ids = input_ids[prompt_len:]
    eos = learned_ids[-1:] == [tokenizer.eos_token_id]
    body = tokenizer.decode(learned_ids[:-1] if eos else learned_ids)
    eos_text = tokenizer.eos_token if eos else ""
    if colour:
        return f"{DIM}{prompt}{RESET}{GREEN}{body}{RESET}{REVERSE}{GREEN}{eos_text}{RESET}"
    return f"{prompt}[[{body}{eos_text}]]"


def render_spans(text: str, offsets: list[tuple[int, int]], spans: list[int], length: int, colour: bool) -> str:
    """A chat row by characters: the text of its first `length` tokens, each learned range (flat token pairs
    `spans`) green, or inside [[...]] without colour. By character offsets, so every character shows exactly once."""
    pieces, pos = [], 0
    for a, b in zip(spans[0::2], spans[1::2], strict=True):
        start, end = offsets[a][0], offsets[b - 1][1]
        pieces.append(f"{DIM}{text[pos:start]}{RESET}" if colour else text[pos:start])
        pieces.append(f"{GREEN}{text[start:end]}{RESET}" if colour else f"[[{text[start:end]}]]")
        pos = end
    tail = text[pos : offsets[length - 1][1]] if length else ""
    pieces.append(f"{DIM}{tail}{RESET}" if colour else tail)
    return "".join(pieces)


def _encode_head(dm, rows: int):
    """The first `rows` source rows through the data rules: (tokenized, the text of each row, offsets or None)."""
    if dm.chat is not None:
        from litsft.data.tokenize_chat import tokenize_conversations

        source, _ = dm.chat.load()
        head = source.select(range(min(rows, len(source))))["messages"]
        enc = tokenize_conversations(head, dm.chat.format, dm.max_seq_length, dm.mask_prompt, where=dm.dataset)
        texts = enc["text"]
        offsets = dm.tokenizer(texts, return_offsets_mapping=True, add_special_tokens=False)["offset_mapping"]
        return enc, texts, offsets
    from litsft.data.sources import load_rows

    source, _ = load_rows(dm.dataset, dm.columns, dm.split)
    head = source.select(range(min(rows, len(source))))[:]
    enc = tokenize_batch(head, dm.tokenizer, dm.template, dm.max_seq_length, dm.mask_prompt)
    texts = [dm.template.render(i, x) + o for i, x, o in zip(head["instruction"], head["input"], head["output"])]
    return enc, texts, None


def preview(cli, rows: int, jsonl: str | None, out=sys.stdout) -> dict:
    """Process the first `rows` source rows with the configured data rules; print and/or write them."""
    from litsft.data.collate import label_ranges

    dm = cli.datamodule
    enc, texts, offsets = _encode_head(dm, rows)
    colour = out.isatty() and jsonl is None
    kept = dropped = truncated = 0
    sink = open(jsonl, "w", encoding="utf-8") if jsonl else None  # noqa: SIM115 - closed below
    try:
        for i, (ids, p, n, trunc) in enumerate(
            zip(enc["input_ids"], enc["prompt_len"], enc["num_labels"], enc["truncated"], strict=True)
        ):
            if n == 0:
                dropped += 1
                continue
            kept += 1
            truncated += trunc
            row = {"input_ids": ids, "prompt_len": p}
            if offsets is not None:
                row["label_spans"] = enc["label_spans"][i]
            if sink:
                labels = [IGNORE_INDEX] * len(ids)
                for a, b in label_ranges(row):
                    labels[a:b] = ids[a:b]
                record = {"row": i, "text": texts[i], "input_ids": ids, "labels": labels}
                sink.write(json.dumps(record) + "\n")
            else:
                print(f"--- row {i}: {len(ids)} tokens, {n} learned{' (truncated)' if trunc else ''}", file=out)
                if offsets is None:
                    print(render_row(dm.tokenizer, ids, p, colour), file=out)
                else:
                    print(render_spans(texts[i], offsets[i], row["label_spans"], len(ids), colour), file=out)
    finally:
        if sink:
            sink.close()
    summary = {"rows": len(texts), "kept": kept, "dropped": dropped, "truncated": truncated}
    print(
        f"{summary['rows']} rows: {kept} kept, {dropped} dropped ("
        + ("nothing to learn within" if offsets is not None else "prompt fills")
        + f" max_seq_length={dm.max_seq_length}),"
        f" {truncated} truncated" + (f"; wrote {jsonl}" if jsonl else ""),
        file=sys.stderr if jsonl is None and out is sys.stdout else out,
    )
    return summary


def main(args: list[str] | None = None) -> dict:
    from litsft.cli import PreviewCLI, run_cli

    cli = run_cli(PreviewCLI, args, run=False)
    return preview(cli, cli.config.rows, cli.config.jsonl)


if __name__ == "__main__":
    main()
