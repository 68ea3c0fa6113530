"""The datamodule's chat side: where the conversations come from, how they are rendered, what generation asks.

`AlpacaDataModule` holds one `ChatData` when its data is in `messages` form (`--data.format messages`, or detected),
and asks it for the rows, their cache key, their tokenization and the prompts of sample generations; Alpaca rows
never go through here.
"""

from __future__ import annotations

from litsft.data.chat_format import ChatFormat, prompt_part, trained_part
from litsft.data.conversations import MessageColumns, load_conversations
from litsft.data.prompts_to_answer import SamplePrompt
from litsft.data.tokenize_chat import process_conversations


class ChatData:
    def __init__(self, dataset: str, split: str, columns: MessageColumns, tokenizer, chat_template: str | None):
        self.dataset = dataset
        self.split = split
        self.columns = columns
        self.format = ChatFormat(tokenizer, chat_template)  # fails now for a tokenizer without a usable template
        self._source = None

    @property
    def stop_token_ids(self) -> list[int]:
        return self.format.stop_token_ids

    def load(self):
        """(checked conversations, fingerprint of the data); kept for the sample prompts."""
        rows, fingerprint = load_conversations(self.dataset, self.columns, self.split)
        self._source = rows
        return rows, fingerprint

    def cache_settings(self) -> dict:
        """What the tokenized rows depend on, besides the data, tokenizer and length settings."""
        return {"format": "messages", "messages": self.columns.settings(), "chat_template": self.format.template}

    def process(self, rows, max_seq_length: int, mask_prompt: bool, num_proc: int | None):
        return process_conversations(rows, self.format, max_seq_length, mask_prompt, num_proc, where=self.dataset)

    def encode(self, prompt: SamplePrompt) -> list[int]:
        return self.format.encode_prompt(prompt.conversation())

    def prompts(self, rows: list[int]) -> list[SamplePrompt]:
        """Sample prompts of source rows: each conversation up to its last assistant turn, that turn the reference."""
        if self._source is None:
            self.load()
        prompts = []
        for messages in self._source.select(rows)["messages"]:
            before, reference = prompt_part(trained_part(messages))
            prompts.append(SamplePrompt.from_messages(before, reference))
        return prompts
