"""Prompts to answer: a user's prompts file (for sample generations, `predict` and `litsft.generate`), and
the choice of validation rows the sample callback asks.

Accepted: `.txt` (one instruction per non-empty line), `.json` (a list of strings or of objects) or `.jsonl`
(one string or object per line). Objects carry `instruction` and optionally `input` (and `output`, shown as
the reference answer), or, for chat models, `messages` (the conversation so far; a last assistant message is the
reference answer). Every problem names the file, the row and the field.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from litsft.errors import LitSFTError


@dataclass(frozen=True)
class SamplePrompt:
    """One prompt to answer: rendered with the training template before generation."""

    instruction: str
    input: str = ""
    reference: str = ""
    """The dataset's answer, when the prompt comes from a validation row (or the file gives `output`)."""
    messages: tuple[tuple[str, str], ...] = ()
    """Chat prompts: the conversation so far as (role, content) pairs, answered by the assistant's next turn
    (`instruction` then holds its last user message). Empty: one user message, the instruction (and input)."""

    def display(self) -> str:
        """What a person reads: the instruction and its input, without the template's boilerplate."""
        if len(self.messages) > 1:
            return "\n\n".join(f"{role}: {content}" for role, content in self.messages)
        return f"{self.instruction}\n\nInput: {self.input}" if self.input else self.instruction

    def conversation(self) -> list[dict[str, str]]:
        """The prompt as chat messages, for a chat template: the conversation, or one user message."""
        if self.messages:
            return [{"role": role, "content": content} for role, content in self.messages]
        return [{"role": "user", "content": f"{self.instruction}\n\n{self.input}" if self.input else self.instruction}]

    @classmethod
    def from_messages(cls, messages: list[dict[str, str]], reference: str = "") -> SamplePrompt:
        last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        return cls(last_user, "", reference, tuple((m["role"], m["content"]) for m in messages))


def _prompt_from(record, path: Path, row: int, flag: str) -> SamplePrompt:
    where = f"{flag}: {path}, row {row}"
    if isinstance(record, str):
        record = {"instruction": record}
    if not isinstance(record, dict):
        raise LitSFTError(f"{where}: expected a string or an object with 'instruction', got {type(record).__name__}.")
    if "messages" in record and "instruction" not in record:  # a chat prompt: the conversation so far
        from litsft.data.chat_format import prompt_part
        from litsft.data.conversations import MessageColumns, conversation

        given = conversation(record["messages"], f"{where}, field 'messages'", MessageColumns())
        messages, reference = prompt_part(given)
        if not messages:
            raise LitSFTError(f"{where}: the conversation has no message before its last assistant message.")
        return SamplePrompt.from_messages(messages, reference)
    instruction = record.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        raise LitSFTError(f"{where}: field 'instruction' is missing or empty. Give each row a non-empty instruction.")
    fields = {}
    for field in ("input", "output"):
        value = record.get(field) or ""
        if not isinstance(value, str):
            raise LitSFTError(f"{where}: field '{field}' must be a string, got {type(value).__name__}.")
        fields[field] = value
    return SamplePrompt(instruction, fields["input"], fields["output"])


def read_prompts(path: str | Path, flag: str = "--prompts_file") -> list[SamplePrompt]:
    """All prompts of `path`; a `LitSFTError` naming the file, row and field for anything unusable."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise LitSFTError(
            f"{flag}: cannot read prompts file '{path}' ({type(err).__name__}: {err}). "
            "Pass a UTF-8 .txt (one instruction per line), .json or .jsonl file."
        ) from None
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        records = []
        for line_no, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append((line_no, json.loads(line)))
            except json.JSONDecodeError as err:
                raise LitSFTError(f"{flag}: {path}, line {line_no}: not valid JSON ({err.msg}).") from None
    elif suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise LitSFTError(f"{flag}: {path}: not valid JSON ({err.msg}, line {err.lineno}).") from None
        if not isinstance(data, list):
            raise LitSFTError(f"{flag}: {path}: expected a JSON list of prompts, got {type(data).__name__}.")
        records = list(enumerate(data))
    elif suffix in (".txt", ""):
        records = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    else:
        raise LitSFTError(f"{flag}: {path}: unknown prompts file type '{suffix}'. Use .txt, .json or .jsonl.")
    prompts = [_prompt_from(record, path, row, flag) for row, record in records]
    if not prompts:
        raise LitSFTError(f"{flag}: {path} holds no prompt. Add at least one instruction.")
    return prompts


def choose_prompts(
    rows: list[int],
    source_prompts: Callable[[list[int]], list[SamplePrompt]],
    count: int,
    fits: Callable[[SamplePrompt], bool],
) -> list[SamplePrompt]:
    """The first `count` of the source rows `rows` (in that order) whose prompt `fits`, those with context first
    (an `input`; chat: earlier turns). Chat prompts are the conversation up to its last assistant turn."""
    chosen: list[SamplePrompt] = []
    for want_context in (True, False):
        for start in range(0, len(rows), 256):  # read in slices: stop early on a large validation set
            for prompt in source_prompts(rows[start : start + 256]):
                if not (prompt.instruction or prompt.messages):
                    continue  # a conversation that opens with the assistant: nothing to ask
                if bool(prompt.input or len(prompt.messages) > 1) == want_context and fits(prompt):
                    chosen.append(prompt)
                    if len(chosen) == count:
                        return chosen
    return chosen
