"""Writes the offline smoke assets: synthetic Alpaca-format rows and a tiny GPT-2 (config + tokenizer).

`python -m litsft.smoke_assets configs/smoke` regenerates what `configs/smoke.yaml` uses. Nothing is
downloaded and no real Alpaca row is copied: the rows are generated from simple, learnable tasks, so a tiny
randomly initialised model shows a clearly falling validation loss within a minute on a laptop CPU.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

WORDS = "apple river stone cloud green quiet table window garden silver music paper orange winter bridge".split()
COUNTRIES = {
    "France": "Paris",
    "Japan": "Tokyo",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Egypt": "Cairo",
    "Peru": "Lima",
    "Kenya": "Nairobi",
    "Canada": "Ottawa",
    "Norway": "Oslo",
    "Chile": "Santiago",
    "India": "New Delhi",
}
COLORS = "red blue green yellow purple orange black white".split()


def synthetic_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """`n` rows with `instruction`, `input`, `output`; deterministic for a seed."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        task = rng.randrange(6)
        if task == 0:
            words = rng.sample(WORDS, rng.randint(3, 6))
            row = ("Reverse the order of these words.", " ".join(words), " ".join(reversed(words)))
        elif task == 1:
            nums = [rng.randint(1, 99) for _ in range(rng.randint(3, 6))]
            row = (
                "Sort these numbers from smallest to largest.",
                ", ".join(map(str, nums)),
                ", ".join(map(str, sorted(nums))),
            )
        elif task == 2:
            country = rng.choice(sorted(COUNTRIES))
            row = (f"What is the capital of {country}?", "", f"The capital of {country} is {COUNTRIES[country]}.")
        elif task == 3:
            a, b = rng.randint(1, 50), rng.randint(1, 50)
            row = (f"Add {a} and {b}.", "", f"{a} plus {b} is {a + b}.")
        elif task == 4:
            word = rng.choice(WORDS)
            row = ("Write the word in capital letters.", word, word.upper())
        else:
            colors = rng.sample(COLORS, 3)
            row = ("List three colors.", "", "\n".join(f"{i}. {c}" for i, c in enumerate(colors, start=1)))
        rows.append(dict(zip(("instruction", "input", "output"), row, strict=True)))
    return rows


def write_tokenizer(folder: Path, texts: list[str], vocab_size: int = 1024) -> None:
    """A byte-level BPE like GPT-2's (same pre-tokenizer, EOS '<|endoftext|>'), trained on `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )
    fast.model_max_length = 256
    fast.save_pretrained(str(folder))


def write_assets(out: Path, rows: int = 800) -> None:
    from transformers import GPT2Config

    from litsft.prompts import TEMPLATES

    out.mkdir(parents=True, exist_ok=True)
    data = synthetic_rows(rows)
    (out / "alpaca_synthetic.json").write_text(json.dumps(data, indent=1) + "\n")
    model_dir = out / "tiny-gpt2"
    texts = [t.render(r["instruction"], r["input"]) + r["output"] for r in data for t in TEMPLATES.values()]
    write_tokenizer(model_dir, texts)
    GPT2Config(
        vocab_size=1024, n_positions=256, n_embd=64, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0
    ).save_pretrained(str(model_dir))


if __name__ == "__main__":
    write_assets(Path(sys.argv[1] if len(sys.argv) > 1 else "configs/smoke"))
