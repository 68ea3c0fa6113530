"""What the data rules did to the rows: the counts printed at setup, logged, and kept in the cache."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RowCounts:
    """What the data rules did to the rows; printed at setup and logged."""

    rows: int = 0
    """Source rows read."""
    kept: int = 0
    """Rows that train (or validate)."""
    dropped: int = 0
    """Rows with no response token left after truncation (the prompt alone fills max_seq_length)."""
    truncated: int = 0
    """Kept rows whose response end was cut to fit max_seq_length (an Alpaca row loses its EOS with it)."""
    cut_mid_turn: int = 0
    """Chat: truncated conversations cut inside an assistant turn, losing its end-of-turn token."""
    empty_output: int = 0
    """Rows whose response is empty: they teach only the EOS (chat: rows with an empty assistant message)."""
    format: str = "alpaca"
    """'alpaca' (instruction rows) or 'messages' (conversations, `litsft.data.tokenize_chat`)."""
    no_assistant: int = 0
    """Conversations without an assistant message (dropped: nothing to learn)."""
    control_tokens: int = 0
    """Conversations with a control token (e.g. '<|im_end|>') written inside a message (dropped)."""
    turns: int = 0
    """Assistant turns learned, over the kept conversations."""
    turns_cut: int = 0
    """Assistant turns removed by truncation at a turn boundary."""

    def describe(self) -> str:
        if self.format == "messages":
            return (
                f"{self.rows:,} conversations read: {self.kept:,} kept, {self.dropped:,} dropped "
                f"({self.no_assistant:,} without an assistant message, {self.control_tokens:,} with a control token "
                f"inside a message, the rest with no assistant token within max_seq_length); {self.turns:,} assistant "
                f"turns learned; {self.truncated:,} truncated ({self.turns_cut:,} later turns cut at turn boundaries, "
                f"{self.cut_mid_turn:,} cut inside a turn, losing its end-of-turn token); {self.empty_output:,} "
                "with an empty assistant message"
            )
        return (
            f"{self.rows:,} rows read: {self.kept:,} kept, {self.dropped:,} dropped (prompt fills max_seq_length), "
            f"{self.truncated:,} truncated (response end and EOS cut), {self.empty_output:,} with empty output"
        )
