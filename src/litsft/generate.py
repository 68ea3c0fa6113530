"""Answer prompts with a model, or compare two models on the same prompts, side by side.

    python -m litsft.generate --model runs/alpaca-distilgpt2/export "Give three tips for staying healthy."
    python -m litsft.generate --model runs/alpaca-distilgpt2/export --compare distilgpt2 "Explain gravity."
    python -m litsft.generate --model runs/smoke/export --prompts_file prompts.jsonl --max_new_tokens 64
    python -m litsft.generate --model runs/chat/export --chat --system "Answer briefly." "Explain gravity."

Each prompt is rendered with the fine-tuned model's own prompt template (saved in its export folder; else
`--template`), generated greedily (or `--do_sample` with `--seed`), left-padded in batches, and stopped at
EOS. `--chat` (the default for a model fine-tuned on chat data) renders each prompt as a user message (after
`--system`, or a prompts file's `messages`) with the model's chat template and the generation prompt, and stops at
the end of the assistant's turn. `--compare BASE` answers the same rendered prompts with BASE, so you see what
fine-tuning changed.
A BASE folder holding only a config (like configs/smoke/tiny-gpt2) is built with random weights, as the
smoke run's base was.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

from litsft.data.prompts_to_answer import SamplePrompt, read_prompts
from litsft.errors import LitSFTError
from litsft.hub import check_hub
from litsft.prompts import TEMPLATE_FILE, PromptTemplate, get_template

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".index.json")


@dataclass
class Answer:
    text: str
    stopped: bool
    new_tokens: int


def _dtype(name: str):
    import torch

    if name == "auto":
        on_bf16_gpu = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if on_bf16_gpu else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_for_generation(name: str, flag: str, dtype_name: str = "auto", seed: int = 0):
    """A causal LM from a hub id or folder. A folder with a config but no weights gets random weights (warned)."""
    import torch
    from transformers import AutoModelForCausalLM

    from litsft.hub import explain_load_error
    from litsft.model.loading import load_config

    dtype = _dtype(dtype_name)
    folder = Path(name).expanduser()
    if folder.is_dir() and (folder / "config.json").is_file():
        if not any(p.name.endswith(WEIGHT_SUFFIXES) for p in folder.iterdir()):
            print(f"litsft: note: '{name}' holds a config but no weights: using random weights (seed {seed}).")
            torch.manual_seed(seed)
            return AutoModelForCausalLM.from_config(load_config(name), dtype=dtype)
    try:
        return AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
    except Exception as err:  # noqa: BLE001 - every failure of from_pretrained gets the same advice
        raise explain_load_error("model", name, flag, err) from err


def load_tokenizer_for(name: str, fallback: str | None, flag: str):
    """The tokenizer saved with `name`; else the one of `fallback` (the fine-tuned model's), with a note."""
    from litsft.data.tokenizer import load_tokenizer

    try:
        return load_tokenizer(name, flag=flag)
    except LitSFTError:
        if fallback is None:
            raise
        print(f"litsft: note: no tokenizer in '{name}': using the one of '{fallback}'.")
        return load_tokenizer(fallback, flag="--model")


def choose_template(model: str, name: str | None) -> PromptTemplate:
    """`--template` when given; else the template saved with the model at export; else Alpaca's."""
    if name is not None:
        return get_template(name)
    if (Path(model).expanduser() / TEMPLATE_FILE).is_file():
        return PromptTemplate.load(Path(model).expanduser())
    return get_template("alpaca")


def chat_format(args):
    """The fine-tuned model's chat template (`--chat`, or saved with a model fine-tuned on chat data), or None."""
    from litsft.data.chat_format import CHAT_FILE, ChatFormat

    trained_on_chat = (Path(args.model).expanduser() / CHAT_FILE).is_file()
    if not (args.chat or trained_on_chat or args.chat_template):
        return None
    from litsft.data.tokenizer import load_tokenizer

    return ChatFormat(load_tokenizer(args.model, flag="--model"), args.chat_template, flag="--chat_template")


def stop_ids(tokenizer, chat) -> list[int]:
    """Where an answer ends for `tokenizer`: EOS, and in chat the fine-tuned template's end-of-turn token."""
    stops = [tokenizer.eos_token_id]
    if chat is not None:
        end = tokenizer.convert_tokens_to_ids(chat.end_of_turn)
        if end is not None and end != tokenizer.unk_token_id and end not in stops:
            stops.insert(0, end)
    return stops


def answer(model, tokenizer, texts: list[str], args, chat=None) -> list[Answer]:
    from litsft.model.decoding import generate_ids

    # Chat text holds the template's special tokens as text: tokenized as they are, nothing added (as in training).
    kwargs = {"add_special_tokens": False} if chat is not None else {"add_special_tokens": True}
    ids = [tokenizer(t, split_special_tokens=chat is None, **kwargs)["input_ids"] for t in texts]
    results = generate_ids(
        model,
        ids,
        stop_ids(tokenizer, chat),
        tokenizer.pad_token_id,
        args.max_new_tokens,
        do_sample=args.do_sample,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    return [Answer(tokenizer.decode(new), stopped, len(new)) for new, stopped in results]


def _cell(ans: Answer) -> str:
    tail = "" if ans.stopped else f"  [no EOS: cut at {ans.new_tokens} tokens]"
    if not ans.text.strip():  # show an answer of only newlines/spaces as such, not as a blank cell
        return (repr(ans.text) if ans.text else "(empty)") + tail
    return ans.text.strip() + tail


def _wrap(text: str, width: int) -> list[str]:
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        lines.extend(textwrap.wrap(paragraph, width) or [""])
    return lines


def side_by_side(columns: list[tuple[str, str]], width: int) -> str:
    """Columns of (title, text) next to each other, each wrapped to its share of `width`."""
    col = max(20, (width - 3 * (len(columns) - 1)) // len(columns))
    blocks = [[title[:col], "-" * col, *_wrap(text, col)] for title, text in columns]
    height = max(len(b) for b in blocks)
    rows = []
    for i in range(height):
        rows.append(" | ".join((b[i] if i < len(b) else "").ljust(col) for b in blocks).rstrip())
    return "\n".join(rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m litsft.generate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("prompts", nargs="*", help="Instructions to answer (each rendered with the template).")
    parser.add_argument("--model", required=True, help="Fine-tuned model: an export folder or a hub id.")
    parser.add_argument("--compare", default=None, help="Base model to answer the same prompts (folder or hub id).")
    parser.add_argument("--input", default="", help="An `input` for every prompt (Alpaca's second field).")
    parser.add_argument("--prompts_file", default=None, help=".txt (one per line), .json or .jsonl prompts.")
    parser.add_argument("--template", default=None, help="Prompt template (default: the model's, else alpaca).")
    parser.add_argument(
        "--chat", action="store_true", help="Render prompts with the model's chat template (default for chat models)."
    )
    parser.add_argument("--system", default=None, help="A system message before each chat prompt.")
    parser.add_argument(
        "--chat_template", default=None, help="Chat template for a model without one: chatml, zephyr or a .jinja file."
    )
    parser.add_argument("--max_new_tokens", type=int, default=128, help="Most tokens per answer (EOS stops too).")
    parser.add_argument("--do_sample", action="store_true", help="Sample instead of greedy decoding.")
    parser.add_argument("--temperature", type=float, default=0.7, help="Sampling temperature.")
    parser.add_argument("--top_p", type=float, default=0.9, help="Nucleus sampling threshold.")
    parser.add_argument("--seed", type=int, default=1234, help="Seed of the sampling (and of random weights).")
    parser.add_argument("--batch_size", type=int, default=8, help="Prompts generated together.")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--width", type=int, default=None, help="Output width (default: the terminal's).")
    args = parser.parse_args(argv)
    if args.max_new_tokens <= 0 or args.batch_size <= 0:
        parser.error("--max_new_tokens and --batch_size must be positive")
    return args


def run(args: argparse.Namespace, out=None) -> list[dict]:
    import torch

    out = out or sys.stdout
    prompts = [SamplePrompt(p, args.input) for p in args.prompts]
    if args.prompts_file:
        prompts += read_prompts(args.prompts_file)
    if not prompts:
        raise LitSFTError("no prompt given: pass instructions as arguments or --prompts_file FILE.")
    chat = chat_format(args)
    if chat is not None:
        system = [{"role": "system", "content": args.system}] if args.system else []
        convs = [(system if not p.messages else []) + p.conversation() for p in prompts]
        texts = [chat.render(c, add_generation_prompt=True) for c in convs]
    else:
        template = choose_template(args.model, args.template)
        texts = [template.render(p.instruction, p.input) for p in prompts]
    models = [("fine-tuned", args.model)] + ([("base", args.compare)] if args.compare else [])
    check_hub([name for _, name in models])  # offline: decided once, then the cache answers at once (no retries)
    answers: dict[str, list[Answer]] = {}
    for role, name in models:
        flag = "--model" if role == "fine-tuned" else "--compare"
        model = load_for_generation(name, flag, args.dtype, args.seed)  # first: "not a model" is the clearer message
        tokenizer = load_tokenizer_for(name, None if role == "fine-tuned" else args.model, flag)
        if torch.cuda.is_available():
            model = model.cuda()
        answers[role] = answer(model, tokenizer, texts, args, chat)
        del model
    width = args.width or shutil.get_terminal_size((120, 24)).columns
    order = [("base", args.compare), ("fine-tuned", args.model)] if args.compare else [("fine-tuned", args.model)]
    for role, name in order:
        print(f"{role + ':':<12}{name}", file=out)
    records = []
    for i, prompt in enumerate(prompts):
        print(f"\n=== [{i + 1}] {prompt.display()}", file=out)
        columns = [(role, _cell(answers[role][i])) for role, _ in order]
        print(side_by_side(columns, width), file=out)
        records.append({"prompt": texts[i], **{role: answers[role][i].text for role, _ in order}})
    return records


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    try:
        return run(args)
    except LitSFTError as err:
        print(f"litsft: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
