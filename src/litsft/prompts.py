"""Prompt templates: the one object that turns a row into a prompt, for training and for generation alike."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from litsft.errors import LitSFTError

TEMPLATE_FILE = "litsft_template.json"


@dataclass(frozen=True)
class PromptTemplate:
    """Renders `(instruction, input)` into the prompt that precedes the response.

    The response itself is appended verbatim after the prompt, followed by the tokenizer's EOS token.
    """

    name: str
    with_input: str
    """Format string with `{instruction}` and `{input}`, used when the row's input is non-empty."""
    without_input: str
    """Format string with `{instruction}`, used when the row's input is empty."""

    def render(self, instruction: str, input: str = "") -> str:  # noqa: A002 - the Alpaca field is called input
        if input:
            return self.with_input.format(instruction=instruction, input=input)
        return self.without_input.format(instruction=instruction, input=input)

    def save(self, folder: str | Path) -> Path:
        """Write the template beside an exported model so generation uses the exact training prompt."""
        path = Path(folder) / TEMPLATE_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> PromptTemplate:
        path = Path(folder) / TEMPLATE_FILE
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, TypeError, json.JSONDecodeError) as err:
            raise LitSFTError(f"{path}: not a litsft prompt template ({err}).") from err


# Stanford Alpaca's two prompts, byte for byte (tatsu-lab/stanford_alpaca, train.py PROMPT_DICT).
ALPACA = PromptTemplate(
    name="alpaca",
    with_input=(
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
    ),
    without_input=(
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response:\n"
    ),
)

# The tutorial's format, byte for byte: `instr + (": " + inp if inp else "")`, the output appended directly
# after it. So a row without input reads "Give three tips for staying healthy.1.Eat a balanced diet...": no
# separator at all. Kept for comparisons with that tutorial; `alpaca` is the better template (its prompt ends on
# a clean "\n" boundary).
PLAIN = PromptTemplate(name="plain", with_input="{instruction}: {input}", without_input="{instruction}")

TEMPLATES: dict[str, PromptTemplate] = {t.name: t for t in (ALPACA, PLAIN)}


def get_template(name: str) -> PromptTemplate:
    try:
        return TEMPLATES[name]
    except KeyError:
        known = ", ".join(sorted(TEMPLATES))
        raise LitSFTError(f"--data.prompt_template: unknown template {name!r}; choose one of: {known}.") from None
