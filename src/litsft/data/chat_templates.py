"""Chat templates by name, for tokenizers that ship none (GPT-2, base models), and choosing the template to use.

A chat template is the Jinja template of Hugging Face's `apply_chat_template`: the tokenizer's own (in its
`tokenizer_config.json` or `chat_template.jinja`) unless `--data.chat_template` names one here, a `.jinja` file or
gives the template itself. The template used in training is saved with the exported tokenizer, so
`apply_chat_template`, `pipeline("text-generation")` and `python -m litsft.generate` render prompts exactly as
training did.
"""

from __future__ import annotations

from pathlib import Path

from litsft.errors import LitSFTError

# ChatML (Qwen, SmolLM2, many others): needs `<|im_start|>` and `<|im_end|>` as special tokens of the tokenizer.
CHATML = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)

# Zephyr's layout (`<|user|>\n...`), every turn closed by the tokenizer's own EOS: works with any tokenizer,
# no new token to learn (GPT-2: turns end with <|endoftext|>). The tokenizer's BOS opens the conversation
# when it has one, as models trained with a BOS expect (the text is tokenized without adding special tokens).
ZEPHYR = (
    "{%- if bos_token is defined and bos_token %}{{- bos_token }}{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>\n' }}{%- endif %}"
)

CHAT_TEMPLATES: dict[str, str] = {"chatml": CHATML, "zephyr": ZEPHYR}


def resolve_chat_template(tokenizer, chat_template: str | None, flag: str = "--data.chat_template") -> str:
    """The Jinja source to render conversations with: `chat_template` (a name above, a `.jinja` file or the
    template itself), else the tokenizer's own."""
    if chat_template is None:
        own = getattr(tokenizer, "chat_template", None)
        if isinstance(own, dict):  # several named templates (e.g. "default", "tool_use"): the default one
            own = own.get("default")
        if not own:
            names = ", ".join(CHAT_TEMPLATES)
            raise LitSFTError(
                f"the tokenizer '{tokenizer.name_or_path}' has no chat template, so chat data cannot be rendered. "
                f"Pass {flag} with one of: {names} (zephyr works with any tokenizer: each turn ends with its EOS), "
                "a .jinja file, or the template itself."
            )
        return own
    if chat_template in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[chat_template]
    if "{{" in chat_template or "{%" in chat_template:
        return chat_template
    path = Path(chat_template).expanduser()
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise LitSFTError(f"{flag}: cannot read '{chat_template}' ({err}).") from err
    names = ", ".join(CHAT_TEMPLATES)
    raise LitSFTError(
        f"{flag}: '{chat_template}' is neither a known chat template ({names}), nor a file, nor a Jinja template."
    )
