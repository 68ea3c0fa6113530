"""How fast chat rows get their assistant-only masks: litsft against transformers' generation-tag masks.

    python benchmarks/chat_tokenize_speed.py                    # 10,000 conversations of 2-3 turns, GPT-2 tokenizer
    python benchmarks/chat_tokenize_speed.py --conversations 2000

Conversations are made of real Alpaca rows (each row one user/assistant turn, 1-3 turns each, every third with a
system prompt), rendered with the Zephyr layout. Side by side, in one process, 1,000 conversations per call:
(a) litsft: render, locate each assistant message (marker rendering, verified), one tokenization with offsets;
(b) `apply_chat_template(tokenize=True, return_assistant_tokens_mask=True)` with the same template written with
`{% generation %}` tags (what TRL's `assistant_only_loss` uses, when a template has them). The masks are checked
to be identical before the times are printed.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REAL_TOKENIZER, REPO, alpaca_rows, load_average, machine  # noqa: E402

sys.path.insert(0, str(REPO / "src"))

TAGGED_ZEPHYR = (
    "{{- bos_token }}{%- for message in messages %}{{- '<|' + message['role'] + '|>\n' }}"
    "{%- if message['role'] == 'assistant' %}{% generation %}{{- message['content'] + eos_token }}{% endgeneration %}"
    "{%- else %}{{- message['content'] + eos_token }}{%- endif %}{{- '\n' }}{%- endfor %}"
)


def conversations(n: int) -> tuple[list[list[dict]], str]:
    rows, note = alpaca_rows(3 * n, None)
    rng = random.Random(0)
    out, k = [], 0
    for i in range(n):
        messages = [{"role": "system", "content": "You are a helpful assistant."}] if i % 3 == 0 else []
        for _ in range(rng.randint(1, 3)):
            row = rows[k]
            k += 1
            user = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]
        out.append(messages)
    return out, note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=10_000)
    args = parser.parse_args()
    from litsft.data.chat_format import ChatFormat
    from litsft.data.tokenize_chat import tokenize_conversations
    from litsft.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(
        str(REAL_TOKENIZER) if REAL_TOKENIZER.is_dir() else str(REPO / "configs/smoke/tiny-gpt2")
    )
    chat = ChatFormat(tokenizer, "zephyr")
    convs, note = conversations(args.conversations)
    batches = [convs[i : i + 1000] for i in range(0, len(convs), 1000)]

    start = time.perf_counter()
    ours = [tokenize_conversations(b, chat, max_seq_length=10**6) for b in batches]
    litsft_s = time.perf_counter() - start
    start = time.perf_counter()
    theirs = [
        tokenizer.apply_chat_template(
            b, chat_template=TAGGED_ZEPHYR, return_assistant_tokens_mask=True, return_dict=True
        )
        for b in batches
    ]
    hf_s = time.perf_counter() - start

    for mine, hf in zip(ours, theirs, strict=True):
        for ids, spans, hf_ids, hf_mask in zip(
            mine["input_ids"], mine["label_spans"], hf["input_ids"], hf["assistant_masks"], strict=True
        ):
            mask = [False] * len(ids)
            for a, b in zip(spans[0::2], spans[1::2], strict=True):
                mask[a:b] = [True] * (b - a)
            assert hf_ids[: len(ids)] == ids and [m == 1 for m in hf_mask[: len(ids)]] == mask
    tokens = sum(len(ids) for o in ours for ids in o["input_ids"])
    print(f"{machine()}; load average {load_average()}; {note}")
    print(f"{len(convs):,} conversations, {tokens:,} tokens; masks identical on every conversation\n")
    print("| method | seconds | conversations/s | tokens/s |\n|---|---:|---:|---:|")
    for name, seconds in (("litsft (no template tags needed)", litsft_s), ("transformers generation tags", hf_s)):
        print(f"| {name} | {seconds:.2f} | {len(convs) / seconds:,.0f} | {tokens / seconds:,.0f} |")


if __name__ == "__main__":
    main()
