"""The sample generations as people read them: the table (a row per prompt, a column per evaluation step) and the
console panel (base model against now)."""

from __future__ import annotations

from litsft.data.prompts_to_answer import SamplePrompt

PANEL_WIDTH = 100
ANSWER_CHARS = 300  # longer answers are cut in the panel (the table keeps them whole)


def table(
    prompts: list[SamplePrompt], columns: list[str], answers: list[list[str]]
) -> tuple[list[str], list[list[str]]]:
    """Columns and rows of the samples table: prompt, reference, then one column per evaluation step.

    `columns`: a label per evaluation step; `answers[prompt][column]`.
    """
    header = ["prompt", "reference", *columns]
    rows = [[p.display(), p.reference, *a] for p, a in zip(prompts, answers, strict=True)]
    return header, rows


def panel(
    prompts: list[SamplePrompt], columns: list[str], answers: list[list[str]], metrics: dict[str, float], seconds: float
) -> str:
    """The console panel of the latest round: each prompt with its first (base) and latest answer."""
    lines = [
        "",
        f"== litsft samples, {columns[-1]}: {len(prompts)} prompts in {seconds:.1f} s, "
        f"{metrics['samples/eos_rate']:.0%} ended with EOS, {metrics['samples/mean_new_tokens']:.1f} new tokens "
        "on average ".ljust(PANEL_WIDTH, "="),
    ]
    shown = [0, len(columns) - 1] if len(columns) > 1 else [0]
    for i, (prompt, row) in enumerate(zip(prompts, answers, strict=True), start=1):
        lines.append(f"[{i}] " + prompt.display().replace("\n\n", " | "))
        for c in shown:
            answer = row[c].strip().replace("\n", " / ")
            answer = answer if len(answer) <= ANSWER_CHARS else answer[: ANSWER_CHARS - 3] + "..."
            lines.append(f"    {columns[c]:>16}: {answer or '(empty)'}")
    return "\n".join(lines)
