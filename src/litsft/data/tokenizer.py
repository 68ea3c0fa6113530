"""Load the tokenizer a run trains with: a fast one (exact character offsets), with EOS and a pad token."""

from __future__ import annotations

from litsft.errors import LitSFTError
from litsft.hub import explain_load_error


def load_tokenizer(name: str, trust_remote_code: bool = False, flag: str = "--model.tokenizer_name_or_path"):
    """A fast tokenizer (we need character offsets) with an EOS token and a pad token."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except Exception as err:  # noqa: BLE001 - every failure mode of from_pretrained gets the same advice
        raise explain_load_error("tokenizer", name, flag, err) from err
    if not getattr(tokenizer, "is_fast", False):
        raise LitSFTError(
            f"{flag}: the tokenizer of '{name}' is a slow (Python) tokenizer; litsft needs a fast one for exact "
            "character offsets. Save the model with a tokenizer.json (tokenizers library) and try again."
        )
    if tokenizer.eos_token_id is None:
        raise LitSFTError(
            f"{flag}: the tokenizer of '{name}' has no EOS token, so the model could never learn to stop. "
            "Set `eos_token` in its tokenizer_config.json (for GPT-2: '<|endoftext|>')."
        )
    if tokenizer.pad_token_id is None:
        # Padding positions are masked by attention_mask and labels=-100, so which id pads does not matter;
        # labels are never derived from `input_ids != pad_token_id` (that would unlearn EOS).
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
