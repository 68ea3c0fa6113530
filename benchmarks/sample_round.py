"""One round of sample generations, before and after `--samples.cpu_threads 1`, side by side.

    python benchmarks/sample_round.py                 # as the machine is now
    python benchmarks/sample_round.py --busy 2        # next to 2 other CPU-bound processes (a shared machine)
    python benchmarks/sample_round.py --shape distilgpt2 --repeats 3

The callback's default work: the tutorial's two prompts plus three validation rows with their input, Alpaca template,
greedy, 128 new tokens, batch 8, on a GPT-2 with random weights (it never emits EOS: every answer runs to 128
tokens, 640 in all). Default shape: 2 layers x 64 wide with the real 50,257-token vocabulary (3.4M parameters).
"before": generation on the process's intra-op threads (what the callback did); "after": on one thread.
Interleaved, order alternating, medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from common import REAL_ROWS, REAL_TOKENIZER, REPO, load_average, machine

sys.path.insert(0, str(REPO / "src"))

SHAPES = {"tiny": (2, 64, 2), "distilgpt2": (6, 768, 12)}  # layers, width, heads
BUSY = "import torch; torch.set_num_threads(1); a = torch.randn(512, 512)\nwhile True: a @ a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--busy", type=int, default=0, help="CPU-bound processes to run alongside.")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--max_new_tokens", type=int, default=128)
    args = parser.parse_args()

    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from litsft.callbacks.sample_prompts import TUTORIAL_PROMPTS
    from litsft.model.decoding import Deadline, generate_ids
    from litsft.prompts import ALPACA

    source = REAL_TOKENIZER if REAL_TOKENIZER.is_dir() else REPO / "configs" / "smoke" / "tiny-gpt2"
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    rows = json.loads(REAL_ROWS.read_text()) if REAL_ROWS.is_file() else []
    with_input = [(r["instruction"], r["input"]) for r in rows if r["input"]][:3] or [("Sort: 3, 1, 2.", "3, 1, 2")] * 3
    prompts = [(p.instruction, "") for p in TUTORIAL_PROMPTS] + with_input
    ids = [tokenizer(ALPACA.render(i, x))["input_ids"] for i, x in prompts]
    layers, width, heads = SHAPES[args.shape]
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_layer=layers, n_embd=width, n_head=heads, n_positions=1024)
    model = GPT2LMHeadModel(config).train()  # as during training: generation switches to eval mode itself
    eos = tokenizer.eos_token_id
    params = sum(p.numel() for p in model.parameters())

    def round_(threads: int | None) -> float:
        start = time.perf_counter()
        out = generate_ids(
            model, ids, eos, eos, args.max_new_tokens, batch_size=8, deadline=Deadline(600), num_threads=threads
        )
        assert sum(len(a) for a, _ in out) == len(ids) * args.max_new_tokens
        return time.perf_counter() - start

    busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(args.busy)]
    try:
        time.sleep(2 if busy else 0)
        round_(1)  # warm-up
        times: dict[str, list[float]] = {"before": [], "after": []}
        variants = [("before", None), ("after", 1)]
        for r in range(args.repeats):  # interleaved, order alternating: a change in machine load hits both alike
            for name, threads in variants if r % 2 == 0 else variants[::-1]:
                times[name].append(round_(threads))
        load = load_average()
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()

    print(f"machine: {machine()}; load average {load}; {args.busy} busy process(es) added")
    print(
        f"model: GPT-2 {layers} x {width}, vocab {len(tokenizer):,} ({params / 1e6:.1f}M parameters); "
        f"{len(ids)} prompts x {args.max_new_tokens} new tokens, greedy, KV cache; median of {args.repeats}"
    )
    base = statistics.median(times["before"])
    print(f"{'':<40} {'median s':>9} {'min s':>7} {'max s':>7} {'speed-up':>9}")
    labels = {
        "before": f"before: process threads ({torch.get_num_threads()})",
        "after": "after: --samples.cpu_threads 1",
    }
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{labels[name]:<40} {median:9.3f} {min(values):7.3f} {max(values):7.3f} {base / median:8.1f}x")


if __name__ == "__main__":
    main()
