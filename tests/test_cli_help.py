"""`--help` a user can read, and no CLI flag that replaces litsft's optimizer (issue 14)."""

from __future__ import annotations

import pytest

from litsft.cli import cli_main
from litsft.run.cli_help import first_sentence


def help_lines(capsys, subcommand: str = "fit") -> list[str]:
    with pytest.raises(SystemExit) as exit_:
        cli_main([subcommand, "--help"])
    assert exit_.value.code in (0, None)
    return capsys.readouterr().out.splitlines()


def line_of(lines: list[str], flag: str) -> int:
    return next(i for i, line in enumerate(lines, start=1) if line.strip().startswith(flag))


@pytest.mark.integration
@pytest.mark.parametrize("subcommand", ["fit", "validate"])
def test_litsft_flags_come_first_and_the_help_is_short(in_repo, capsys, subcommand):
    """It was 831 lines, with litsft's first flag at line 522 (after a 100-line usage and the Trainer's flags)."""
    lines = help_lines(capsys, subcommand)
    assert len(lines) < 500  # litsft's own flags are ~290 lines of it
    trainer_title = next(i for i, line in enumerate(lines) if line.startswith("Lightning Trainer"))
    assert len(lines) - trainer_title < 180  # the Trainer's ~60 flags: ~390 lines before
    assert line_of(lines, "--model.model_name_or_path") < 40
    assert line_of(lines, "--data.dataset") < line_of(lines, "--samples.prompts_file") < line_of(lines, "--trainer.")
    assert line_of(lines, "--trainer.max_epochs") and line_of(lines, "--ckpt_path")  # nothing dropped
    usage = lines[: next(i for i, line in enumerate(lines) if not line.strip())]
    assert len(usage) <= 3 and "--model.*" in usage[0]
    trainer = [line for line in lines[line_of(lines, "--trainer.accelerator ") :] if line.startswith("  --trainer.")]
    assert len(trainer) > 40  # every Trainer flag is there, each in a few lines
    assert not any("known subclasses" in line or "Namespace(" in line for line in lines)


@pytest.mark.integration
def test_no_optimizer_or_scheduler_flags(in_repo, capsys):
    lines = help_lines(capsys)
    assert not any("--optimizer" in line or "--lr_scheduler" in line for line in lines)


@pytest.mark.integration
@pytest.mark.parametrize("flags", [["--optimizer", "SGD"], ["--optimizer=torch.optim.SGD", "--optimizer.lr", "0.1"],
                                   ["--lr_scheduler", "StepLR"]])  # fmt: skip
def test_optimizer_flags_say_where_the_settings_are(in_repo, capsys, flags):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["fit", "-c", "configs/smoke.yaml", *flags])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "litsft trains with AdamW" in err and "--model.learning_rate" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("text", "first"),
    [
        ("Stop training once this number of epochs is reached. Disabled by default.", "Stop training once this number "
         "of epochs is reached."),
        ("Runs n batch(es), e.g. 5. More text.", "Runs n batch(es), e.g. 5."),
        ("No full stop", "No full stop"),
    ],
)  # fmt: skip
def test_first_sentence(text, first):
    assert first_sentence(text) == first
