"""Which prompts the sample callback asks: the tutorial's two and a few validation rows, or the user's file.

Every prompt must leave room for `--samples.max_new_tokens` in the model's context: a default prompt that does not
is left out; a user's prompt that does not is an error before training.
"""

from __future__ import annotations

from litsft.data.datamodule import AlpacaDataModule
from litsft.data.prompts_to_answer import SamplePrompt
from litsft.errors import LitSFTError

# The tutorial's two prompts: always asked, so runs are comparable with each other and with the tutorial.
TUTORIAL_PROMPTS = (
    SamplePrompt("Explain machine learning in few words."),
    SamplePrompt("Explain supervised fine-tuning simply."),
)


def prompts_for_samples(
    datamodule: AlpacaDataModule,
    user_prompts: list[SamplePrompt] | None,
    num_val_prompts: int,
    max_new_tokens: int,
    context: int | None,
) -> list[SamplePrompt]:
    """`user_prompts` (all of them, or a `LitSFTError` for one too long), else the tutorial's prompts and the first
    `num_val_prompts` validation rows (`datamodule.sample_prompts`) that leave room for `max_new_tokens` in a context
    of `context` tokens (None: no limit known)."""
    room = (context - max_new_tokens) if context else None

    def fits(prompt: SamplePrompt) -> bool:
        return room is None or len(datamodule.encode_prompt(prompt)) <= room

    if user_prompts is not None:
        too_long = [i for i, p in enumerate(user_prompts) if not fits(p)]
        if too_long:
            raise LitSFTError(
                f"--samples.prompts_file: prompt {too_long[0]} is too long: with --samples.max_new_tokens "
                f"{max_new_tokens} it exceeds the model's context ({context} tokens). Shorten it or lower "
                "max_new_tokens."
            )
        return list(user_prompts)
    return [p for p in TUTORIAL_PROMPTS if fits(p)] + datamodule.sample_prompts(num_val_prompts, fits)
