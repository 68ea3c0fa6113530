"""Show processed training rows: prompt tokens and learned tokens told apart.

    python -m litsft.preview -c configs/smoke.yaml --rows 5
    python -m litsft.preview -c configs/default.yaml --data.dataset alpaca_data.json --rows 100 --jsonl out.jsonl

`--jsonl` writes one object per kept row, in source order (before any split or shuffle):
`{"row": int, "text": str, "input_ids": [int], "labels": [int]}`, labels -100 where masked.
"""

from __future__ import annotations

import json
import sys

from litsft.data.tokenize import labels_for, tokenize_batch

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


def preview(cli, rows: int, jsonl: str | None, out=sys.stdout) -> dict:
    """Process the first `rows` source rows with the configured data rules; print and/or write them."""
    from litsft.data.sources import load_rows

    dm = cli.datamodule
    source, _ = load_rows(dm.dataset, dm.columns, dm.split)
    head = source.select(range(min(rows, len(source))))[:]
    enc = tokenize_batch(head, dm.tokenizer, dm.template, dm.max_seq_length, dm.mask_prompt)
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
            text = dm.template.render(head["instruction"][i], head["input"][i]) + head["output"][i]
            if sink:
                record = {"row": i, "text": text, "input_ids": ids, "labels": labels_for(ids, p)}
                sink.write(json.dumps(record) + "\n")
            else:
                print(f"--- row {i}: {len(ids)} tokens, {n} learned{' (truncated)' if trunc else ''}", file=out)
                print(render_row(dm.tokenizer, ids, p, colour), file=out)
    finally:
        if sink:
            sink.close()
    summary = {"rows": len(head["instruction"]), "kept": kept, "dropped": dropped, "truncated": truncated}
    print(
        f"{summary['rows']} rows: {kept} kept, {dropped} dropped (prompt fills max_seq_length={dm.max_seq_length}),"
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
