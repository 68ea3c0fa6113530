"""Load Hugging Face configs and models (tokenizers: `litsft.data.tokenizer`) with errors a user can act on.

`from_pretrained` on a hub id with no network raises a chain of HTTP and cache errors; a folder that is not a
model raises deep `OSError`s. Both become one `LitSFTError` that says what was tried and what to pass instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litsft.errors import LitSFTError
from litsft.hub import explain_load_error


def dropout_fields(config) -> list[str]:
    """The config's dropout probabilities: GPT-2's `resid_pdrop`, `embd_pdrop`, `attn_pdrop` (and
    `summary_first_dropout`), and the `dropout`, `attention_dropout`, `hidden_dropout`, `activation_dropout`,
    `hidden_dropout_prob`, `attention_probs_dropout_prob`, `resid_dropout`, `embed_dropout` ... of other families:
    every numeric field whose name says dropout. Unset (None) ones are left alone."""
    return sorted(
        key
        for key, value in config.to_dict().items()
        if ("dropout" in key or key.endswith("pdrop"))
        and isinstance(value, int | float)
        and not isinstance(value, bool)
    )


def set_dropout(config, p: float, name: str = "") -> list[str]:
    """Set every dropout probability of `config` to `p`; returns the fields set."""
    fields = dropout_fields(config)
    if not fields:
        raise LitSFTError(
            f"--model.dropout: the config of '{name}' ({type(config).__name__}) has no dropout field to set. "
            "Leave --model.dropout unset, or set the model's own fields with --model.config_overrides."
        )
    for key in fields:
        setattr(config, key, float(p))
    return fields


def load_config(
    name: str, trust_remote_code: bool = False, overrides: dict[str, Any] | None = None, dropout: float | None = None
):
    """The model's config, with `overrides` applied, then every dropout probability set to `dropout` (if not None)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except Exception as err:  # noqa: BLE001
        raise explain_load_error("model", name, "--model.model_name_or_path", err) from err
    for key, value in (overrides or {}).items():
        if not hasattr(config, key):
            raise LitSFTError(
                f"--model.config_overrides: '{key}' is not a field of {type(config).__name__} for '{name}'."
            )
        current = getattr(config, key)
        # Values are YAML data, never code; one of the wrong type would fail deep inside the model's constructor.
        expected = (int, float) if isinstance(current, float) else type(current)
        if current is not None and (
            not isinstance(value, expected) or isinstance(value, bool) != isinstance(current, bool)
        ):
            raise LitSFTError(
                f"--model.config_overrides: '{key}' must be of type {type(current).__name__} like the config's "
                f"({current!r}), got {type(value).__name__} {value!r:.60}."
            )
        # Sizes and counts (n_layer, n_head, vocab_size, ...) are positive; 0 or -1 would build an empty model.
        if isinstance(current, int) and not isinstance(current, bool) and current > 0 and value <= 0:
            if not key.endswith("_token_id"):
                raise LitSFTError(f"--model.config_overrides: '{key}' must be a positive integer, got {value}.")
        setattr(config, key, value)
    if dropout is not None:
        set_dropout(config, dropout, name)
    if overrides:
        check_buildable(config, name)
    return config


def check_buildable(config, name: str) -> None:
    """Build the model on the meta device (no memory, no weights): overrides that do not fit together (a width
    not divisible by the head count, ...) fail here with the model's own words instead of later in a traceback."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            AutoModelForCausalLM.from_config(config)
    except Exception as err:  # noqa: BLE001 - any construction failure is a bad override
        raise LitSFTError(
            f"--model.config_overrides: the model of '{name}' cannot be built with these values "
            f"({type(err).__name__}: {str(err)[:200]})."
        ) from err


WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def check_weights(name: str) -> None:
    """A local model folder must hold weights; checked before training starts (loading them comes later)."""
    path = Path(name).expanduser()
    if path.is_dir() and not any((path / file).is_file() for file in WEIGHT_FILES):
        raise LitSFTError(
            f"--model.model_name_or_path: '{name}' has a config but no weights ({' or '.join(WEIGHT_FILES[::2])}). "
            "Pass a folder written by `save_pretrained`, or add --model.random_init true to train from random weights."
        )


def load_pretrained(name: str, config, trust_remote_code: bool = False):
    """The pretrained causal LM in fp32 (mixed precision comes from the Trainer).

    Loading runs no code from the files: safetensors when the folder has them, else `torch.load` with
    weights_only=True (transformers' default, set here explicitly); model code only with trust_remote_code.
    """
    import torch
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(
            name,
            config=config,
            trust_remote_code=trust_remote_code,
            dtype=torch.float32,
            use_safetensors=None,
            weights_only=True,
        )
    except Exception as err:  # noqa: BLE001
        raise explain_load_error("model", name, "--model.model_name_or_path", err) from err


def context_length(config) -> int | None:
    """The longest sequence the model's position embeddings allow, when the config says so."""
    for key in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
