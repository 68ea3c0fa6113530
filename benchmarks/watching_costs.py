"""What watching a run costs: `val/eos_acc` on top of the validation loss, and one round of samples.

    python benchmarks/watching_costs.py                     # CPU: about a minute
    python benchmarks/watching_costs.py --repeats 9 --val_rows 256

1. A validation pass computing the loss alone (the baseline) against the same pass also computing
   `val/eos_acc` from the loss forward's own logits (a forward hook on the LM head), A/B interleaved,
   medians. GPT-2's real vocabulary (50,257; the argmax is over it) when ../shared/data has the tokenizer.
2. One round of the sample callback's default work: the tutorial's two prompts plus three validation rows,
   `max_new_tokens` 128, greedy, on a distilgpt2-shaped model with random weights (which never emits EOS:
   the worst case, every answer runs to 128 tokens). Use it to choose `--samples.max_time`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, alpaca_rows, load_average, machine, tokenizer_source, write_rows

sys.path.insert(0, str(REPO / "src"))


def tiny_gpt2(vocab_size: int, layers: int, width: int, heads: int):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab_size, n_layer=layers, n_embd=width, n_head=heads, n_positions=1024)
    return GPT2LMHeadModel(config).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--val_rows", type=int, default=96)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layers", type=int, default=2, help="Layers of the model timed in part 1.")
    parser.add_argument("--max_new_tokens", type=int, default=128)
    args = parser.parse_args()

    import torch

    from litsft.callbacks.sample_prompts import TUTORIAL_PROMPTS
    from litsft.data.datamodule import AlpacaDataModule
    from litsft.model.decoding import generate_ids
    from litsft.model.eos_accuracy import eos_hits
    from litsft.model.lm_head import capture_head_output
    from litsft.model.loss import masked_ce_sum
    from litsft.prompts import ALPACA

    tokenizer_path, tokenizer_note = tokenizer_source(None)
    print(f"tokenizer: {tokenizer_note}")
    rows, note = alpaca_rows(args.val_rows + 1, None)
    with tempfile.TemporaryDirectory() as tmp:
        dm = AlpacaDataModule(
            dataset=str(write_rows(rows, Path(tmp) / "rows.json")), tokenizer_name_or_path=str(tokenizer_path),
            val_size=args.val_rows, batch_size=args.batch_size, num_workers=0, cache_dir=tmp,
        )  # fmt: skip
        dm.setup("fit")
        batches = list(dm.val_dataloader())
    tokenizer = dm.tokenizer
    eos = tokenizer.eos_token_id
    print(f"machine: {machine()}; load average {load_average()}")
    print(f"data: {note}; {args.val_rows} validation rows in {len(batches)} batches; vocab {len(tokenizer):,}")

    # 1. the validation pass, with and without eos_acc ----------------------------------------------------------
    model = tiny_gpt2(len(tokenizer), args.layers, 256, 4)

    @torch.no_grad()
    def loss_only() -> None:
        for b in batches:
            masked_ce_sum(model, b["input_ids"], b["attention_mask"], b["labels"])

    @torch.no_grad()
    def loss_and_eos() -> None:
        for b in batches:
            with capture_head_output(model) as out:
                masked_ce_sum(model, b["input_ids"], b["attention_mask"], b["labels"])
            eos_hits(out[-1], b["labels"], eos)

    times: dict[str, list[float]] = {"val/loss only (baseline)": [], "val/loss + val/eos_acc": []}
    loss_only()  # warm-up
    variants = list(zip(times, (loss_only, loss_and_eos), strict=True))
    for r in range(args.repeats):  # interleaved, order alternating: a change in machine load hits both alike
        for name, fn in variants if r % 2 == 0 else variants[::-1]:
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["val/loss only (baseline)"])
    print(f"\n1. validation pass ({args.layers}-layer GPT-2, width 256), median of {args.repeats}:")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"   {name:<28} {median:7.3f} s   {median / base:5.3f}x")

    # 2. one round of samples ------------------------------------------------------------------------------------
    model = tiny_gpt2(len(tokenizer), 6, 768, 12)  # distilgpt2's shape
    prompts = [(p.instruction, "") for p in TUTORIAL_PROMPTS] + [(r["instruction"], r["input"]) for r in rows[:3]]
    ids = [tokenizer(ALPACA.render(i, x))["input_ids"] for i, x in prompts]
    generate_ids(model, ids[:1], eos, tokenizer.pad_token_id, 2)  # warm-up
    start = time.perf_counter()
    out = generate_ids(model, ids, eos, tokenizer.pad_token_id, args.max_new_tokens)
    seconds = time.perf_counter() - start
    tokens = sum(len(a) for a, _ in out)
    print(f"\n2. one sample round, distilgpt2 shape, {len(ids)} prompts x up to {args.max_new_tokens} new tokens:")
    print(f"   {seconds:.2f} s for {tokens} new tokens ({tokens / seconds:.0f} tokens/s)")


if __name__ == "__main__":
    main()
