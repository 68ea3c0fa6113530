"""Rendering conversations with a chat template, and where each assistant message lies in the rendered text.

The loss is learned on assistant turns only, decided by character offsets (as for Alpaca rows): a token is
learned when it covers a character of an assistant message or of the text after it up to and including the
end-of-turn token (the first control token after the message: `<|im_end|>`, `<|eot_id|>`, `</s>`, ...), so the
model learns to end its turn. System, user and tool turns, role headers and the generation prompt are never
learned.

Where is each assistant message? Not guessed from role markers (which differ per template) and not from
`{% generation %}` tags (which most templates lack): the conversation is rendered once more with each message's
content replaced by a unique marker. The marked rendering splits into the template's own text around each message;
the real rendering must then be exactly that text with each message's content (or the content stripped, for
templates that `trim`) in between: checked character for character. Templates whose layout depends on the content
fall back to rendering the conversation up to each assistant message (with the generation prompt), which must be
a prefix of the whole. A row that neither explains is an error naming it, never a guessed mask.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from litsft.data.chat_templates import CHAT_TEMPLATES, resolve_chat_template
from litsft.errors import LitSFTError

CHAT_FILE = "litsft_chat.json"
# Private-use characters: a marker cannot be confused with text a template writes.
MARK_START, MARK_END = "\ue000", "\ue001"
_MARK_RE = re.compile(f"{MARK_START}(\\d+){MARK_END}")


class ChatRowError(LitSFTError):
    """A conversation the template cannot render, or whose assistant messages cannot be located (row-level)."""


class ChatFormat:
    """A tokenizer's chat template (or a named one): renders conversations, finds assistant spans, renders prompts.

    `stop_token_ids`: the end-of-turn token (found by rendering a probe conversation) and the tokenizer's EOS:
    generation stops at either, and `val/eos_acc` scores the end of turn.
    """

    def __init__(self, tokenizer, chat_template: str | None = None, flag: str = "--data.chat_template") -> None:
        self.tokenizer = tokenizer
        self.template = resolve_chat_template(tokenizer, chat_template, flag)
        self.name = "tokenizer" if chat_template is None else chat_template
        if chat_template not in (None, *CHAT_TEMPLATES):
            self.name = "custom"
        specials = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
        specials |= set(tokenizer.all_special_tokens)
        self.control_tokens = tuple(sorted((s for s in specials if s and not s.isspace()), key=len, reverse=True))
        self._control_re = re.compile("|".join(map(re.escape, self.control_tokens)) or "(?!)")
        self.end_of_turn = self._probe_end_of_turn(flag)
        end_id = tokenizer.convert_tokens_to_ids(self.end_of_turn)
        self.stop_token_ids = [end_id] + ([tokenizer.eos_token_id] if tokenizer.eos_token_id != end_id else [])

    # -- rendering ---------------------------------------------------------------------------------------------

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        try:
            return self.tokenizer.apply_chat_template(
                list(messages), chat_template=self.template, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except Exception as err:  # noqa: BLE001 - a template's raise_exception, or a Jinja error: per row
            raise ChatRowError(f"the chat template refused it ({type(err).__name__}: {err})") from err

    def encode_prompt(self, messages: list[dict]) -> list[int]:
        """Token ids of `messages` followed by the generation prompt (the assistant's header), for generation.

        Tokenized like the training rows: the template writes the special tokens, none are added."""
        text = self.render(messages, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def control_token_in(self, messages: list[dict]) -> str | None:
        """A control token written inside a message (e.g. '<|im_end|>' as text), which tokenizing the rendered
        conversation would turn into the real token: such rows are dropped and counted."""
        for m in messages:
            found = self._control_re.search(m["content"])
            if found:
                return found.group(0)
        return None

    # -- where the assistant messages are --------------------------------------------------------------------

    def locate(self, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and, per assistant message, the characters to learn: [start, end) from the
        message's first character to the end of its end-of-turn token. Raises `ChatRowError`."""
        text = self.render(messages)
        contents = self._from_marked(text, messages)
        if contents is None:
            contents = self._from_prefixes(text, messages)
        if contents is None:
            raise ChatRowError(
                "the chat template does not write the messages verbatim (it changes their text, or its layout "
                "depends on it), so the assistant's tokens cannot be told apart. Check the row, or choose another "
                "template with --data.chat_template"
            )
        return text, [(start, self._turn_end(text, end, limit)) for start, end, limit in contents]

    def _turn_end(self, text: str, content_end: int, limit: int) -> int:
        found = self._control_re.search(text, content_end, limit)
        if found is None:
            raise ChatRowError(
                "no control token follows an assistant message in the rendered text, so the model could not learn "
                "to end its turn. Use a template whose turns end with a special token (--data.chat_template zephyr "
                "ends them with the tokenizer's EOS)"
            )
        return found.end()

    def _from_marked(self, text: str, messages: list[dict]) -> list[tuple[int, int, int]] | None:
        """(start, end, limit) of each assistant content from the marked rendering, or None if it does not explain
        `text`. `limit`: where the template's text after the message ends (the end-of-turn token lies before)."""
        marked = [dict(m, content=f"{MARK_START}{i}{MARK_END}") for i, m in enumerate(messages)]
        parts = _MARK_RE.split(self.render(marked))
        pieces, order = parts[0::2], [int(i) for i in parts[1::2]]
        assistants = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if order != sorted(set(order)) or not set(assistants) <= set(order):
            return None
        found: dict[int, tuple[int, int, int]] = {}
        pos = 0
        for k, index in enumerate(order):
            if not text.startswith(pieces[k], pos):
                return None
            pos += len(pieces[k])
            after = pieces[k + 1]
            content = messages[index]["content"]
            for candidate in dict.fromkeys((content, content.strip())):  # verbatim, or trimmed by the template
                end = pos + len(candidate)
                if text.startswith(candidate, pos) and text.startswith(after, end):
                    found[index] = (pos, end, end + len(after))
                    pos = end
                    break
            else:
                return None
        if pos + len(pieces[-1]) != len(text):
            return None
        return [found[i] for i in assistants]

    def _from_prefixes(self, text: str, messages: list[dict]) -> list[tuple[int, int, int]] | None:
        """Fallback: render(messages[:k + 1]) must be a prefix of `text`; assistant message k lies in it after the
        part it shares with render(messages[:k], generation prompt). (Shares, not equals: Qwen2.5 writes the header's
        newline only before a non-empty message.)"""
        out = []
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            if k == 0:
                return None
            prompt = self.render(messages[:k], add_generation_prompt=True)
            upto = self.render(messages[: k + 1])
            if not text.startswith(upto):
                return None
            shared = len(os.path.commonprefix([prompt, upto]))
            for candidate in dict.fromkeys((message["content"], message["content"].strip())):
                start = text.find(candidate, shared, len(upto))
                if start >= 0:
                    out.append((start, start + len(candidate), len(upto)))
                    break
            else:
                return None
        return out

    def _probe_end_of_turn(self, flag: str) -> str:
        probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
        try:
            text, [(start, end)] = self.locate(probe)
        except ChatRowError as err:
            raise LitSFTError(f"{flag}: the chat template '{self.name}' cannot be used for training: {err}.") from err
        token = self._control_re.search(text, start + len("Hello"), end)
        return token.group(0)

    # -- saved with the export ---------------------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        """Beside an exported model (whose tokenizer is saved with `template`): how it was trained to chat."""
        path = Path(folder) / CHAT_FILE
        info = {"chat_template": self.name, "end_of_turn": self.end_of_turn, "stop_token_ids": self.stop_token_ids}
        path.write_text(json.dumps(info, indent=2) + "\n")
        return path


def trained_part(messages: list[dict]) -> list[dict]:
    """The conversation up to and including its last assistant message: later messages have no learned token
    and, the model being causal, no effect on the loss. Empty when there is no assistant message."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    return list(messages[: last + 1])


def prompt_part(messages: list[dict]) -> tuple[list[dict], str]:
    """A conversation as a prompt: without its last message when that is the assistant's (returned as the reference
    answer), else whole (the assistant answers next)."""
    if messages and messages[-1]["role"] == "assistant":
        return list(messages[:-1]), messages[-1]["content"]
    return list(messages), ""
