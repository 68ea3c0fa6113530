"""What a run needs from outside, checked before anything is built or written, every problem in one message.

The model's config and weights, the tokenizer, the dataset and `--data.max_seq_length` against the model's context
used to fail one at a time, each at its own stage (the dataset only after the trainer and W&B had started), so an
offline user fixed one problem to meet the next. Here they are checked together, after deciding once whether the
hub can be used (`litsft.hub`); with the hub offline, what is cached passes at once and what is not is named.
"""

from __future__ import annotations

from litsft.data.tokenizer import load_tokenizer
from litsft.errors import LitSFTError
from litsft.hub import check_hub, needs_hub
from litsft.model.loading import check_weights, context_length, load_config


def _hub_dataset_problem(dataset: str, reason: str) -> str | None:
    """A hub dataset with the hub offline: usable only if the datasets cache has it (checked without loading)."""
    import datasets

    try:
        datasets.load_dataset_builder(dataset)
    except Exception:  # noqa: BLE001 - not cached (or not loadable): either way, say what to pass instead
        return (
            f"--data.dataset: dataset '{dataset}' is not in the datasets cache ({datasets.config.HF_DATASETS_CACHE}). "
            "Pass a local copy: --data.dataset path/to/alpaca_data.json (or .jsonl, .parquet, .csv, or a "
            f"`save_to_disk` folder); where there is network, `datasets.load_dataset('{dataset}')` fills the cache."
        )
    return None


def check_run(model: dict, data: dict, check_model: bool = True) -> None:
    """Raise one `LitSFTError` listing every problem of the run's model, tokenizer and data settings.

    `model` and `data` are the `--model.*` / `--data.*` settings (the CLI's config). `check_model` False checks the
    data side only (`python -m litsft.preview` needs no weights).
    """
    from litsft.data.sources import source_kind

    name = model.get("model_name_or_path")
    tokenizer = data.get("tokenizer_name_or_path") or model.get("tokenizer_name_or_path") or name
    dataset = data.get("dataset")
    names = [name if check_model else None, tokenizer, dataset]
    reason = check_hub(names)
    if not any(needs_hub(n) for n in names):
        reason = None  # offline or not, nothing of this run comes from the hub: no word about it
    problems: list[str] = []
    hf_config, model_failed = None, False
    if check_model:
        try:
            hf_config = load_config(name, model.get("trust_remote_code", False), model.get("config_overrides"))
            if not model.get("random_init"):
                check_weights(name)
        except LitSFTError as err:
            problems.append(str(err))
            model_failed = hf_config is None
    loaded_tokenizer = None
    if not (model_failed and tokenizer == name):  # the tokenizer comes from the model's place: one message says it
        try:
            loaded_tokenizer = load_tokenizer(tokenizer, data.get("trust_remote_code", False))
        except LitSFTError as err:
            problems.append(str(err))
    vocab = getattr(hf_config, "vocab_size", None)
    if (
        loaded_tokenizer is not None
        and isinstance(vocab, int)
        and (model.get("random_init") or model.get("config_overrides"))
    ):
        tokens = len(loaded_tokenizer)
        if vocab < tokens:  # a pretrained model's own vocabulary is its tokenizer's business; an override is ours
            problems.append(
                f"the model's vocab_size ({vocab}) is below the tokenizer's {tokens} tokens: token ids {vocab} and up "
                f"would index past the embedding. Use --model.config_overrides '{{vocab_size: {tokens}}}' or more."
            )
    try:
        if source_kind(dataset) == "hub" and reason is not None:
            problems.append(_hub_dataset_problem(dataset, reason))
    except LitSFTError as err:
        problems.append(str(err))
    limit = context_length(hf_config) if hf_config is not None else None
    length = data.get("max_seq_length")
    if limit is not None and isinstance(length, int) and length > limit:
        problems.append(
            f"--data.max_seq_length={length} exceeds the context of '{name}' ({limit} positions). "
            f"Use --data.max_seq_length {limit} or less."
        )
    problems = [p for p in problems if p]
    if not problems:
        return
    header = f"Working offline ({reason}): only local files and the Hugging Face cache can be used.\n" if reason else ""
    if len(problems) == 1 and not header:
        raise LitSFTError(problems[0])
    count = f"{len(problems)} problems stop this run before it starts:" if len(problems) > 1 else "This stops the run:"
    hint = "\n(`python train.py fit -c configs/smoke.yaml` needs nothing from the hub: it checks an install offline.)"
    raise LitSFTError(header + count + "".join(f"\n  - {problem}" for problem in problems) + (hint if reason else ""))
