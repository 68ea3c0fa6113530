"""`python train.py fit --help` a user can read: litsft's own flags first, Lightning's Trainer flags last and short.

LightningCLI's help lists all ~90 options in the usage line, then the Trainer's flags, each with its full docstring,
type and every known subclass (the logger and callbacks entries alone take 90 lines), and only then the model and
data flags: 831 lines with litsft's first flag at line 522. Here the usage line is one line, the groups come in the
order a user needs them (model, data, litsft's callbacks, then the Trainer), and each Trainer flag shows the first
sentence of its docstring and its default; the full text is one `--trainer.<flag>.help` or link away.
"""

from __future__ import annotations

import re
from argparse import SUPPRESS, Action

from jsonargparse import DefaultHelpFormatter

TRAINER_DOCS = "https://lightning.ai/docs/pytorch/stable/common/trainer.html#trainer-flags"
USAGE = (
    "%(prog)s [-h] [-c CONFIG.yaml] [--print_config] [--model.* ...] [--data.* ...] [--samples.* ...]\n"
    "       [--export.* ...] [--trainer.* ...] [--ckpt_path PATH]"
)
TRAINER_TITLE = "Lightning Trainer (first sentence of each; full text: " + TRAINER_DOCS + ")"
# Lightning's docstrings for these run to 20 lines each, about features litsft does not use (model registry).
OWN_HELP = {
    "ckpt_path": "A checkpoint to resume (`fit`) or to evaluate: its path, or `last` (the newest last.ckpt of this "
    "run's own checkpoint folders; the file taken is printed).",
    "weights_only": "Load checkpoints as plain data (default: true); false only for a file you trust, as loading it "
    "may run code.",
}
_SENTENCE_END = re.compile(r"(?<!\be\.g)(?<!\bi\.e)(?<!\betc)\.(\s|$)")


def first_sentence(text: str) -> str:
    match = _SENTENCE_END.search(text)
    return text[: match.start() + 1] if match else text


def short_default(value) -> str:
    """A default fit for one line: class names instead of whole logger/callback configs."""
    items = value if isinstance(value, list) else [value]
    names = [getattr(item, "class_path", None) for item in items]
    if value is not None and names and all(names):
        return ", ".join(name.rsplit(".", 1)[-1] for name in names)
    text = "null" if value is None else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


class HelpFormatter(DefaultHelpFormatter):
    """jsonargparse's formatter, with each `--trainer.*` flag cut to its first sentence and default."""

    def _get_help_string(self, action: Action) -> str:
        if action.dest in OWN_HELP:
            return OWN_HELP[action.dest].replace("%", "%%")
        if not action.dest.startswith("trainer.") or not action.help or action.help == SUPPRESS:
            return super()._get_help_string(action)
        text = first_sentence(" ".join(action.help.split())).replace("%", "%%")
        if action.default is not SUPPRESS and not action.dest.endswith(".help"):
            text += f" (default: {short_default(action.default)})".replace("%", "%%")
        return text


def parser_kwargs(default_config_files: list[str], usage: str | None = USAGE) -> dict:
    """For each subcommand's parser (usage None: argparse's own, e.g. for `python -m litsft.preview`)."""
    return {"default_config_files": default_config_files, "formatter_class": HelpFormatter, "usage": usage}


def retitle_trainer_group(parser) -> None:
    """Lightning titles the Trainer's group with its docstring's first line ("Customize every aspect of training
    via flags"); say what it is and where the full text is."""
    group = getattr(parser, "groups", {}).get("trainer")
    if group is not None:
        group.title = TRAINER_TITLE
        group.description = None
