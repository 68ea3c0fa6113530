"""Out-of-range flags, broken config files and unusual data files, through the real CLI: exit status 2 and one
short message naming the flag, or the file and line; nothing trained or written. And the inputs that must work:
a CSV or JSON file with a UTF-8 BOM. Ctrl-C during tokenization exits 130."""

import csv
import json
import os
import re
import signal

import lightning.pytorch  # noqa: F401 - before any test captures stderr: its log handler keeps that stream
import pytest

from tests.helpers import LEAN_ARGS, cli_one_thread, tiny_model_args

pytestmark = pytest.mark.integration  # every test here runs the CLI or a Trainer (tests/tiers.py)


def config_file(tmp, name: str, text: str) -> list[str]:
    path = tmp / name
    path.write_text(text)
    return ["-c", str(path)]


def fifo(tmp) -> list[str]:
    path = tmp / "rows.jsonl"
    os.mkfifo(path)
    return ["--data.dataset", str(path)]


# (flags given a tmp folder, message regex)
CASES = [
    # range checks where the flags are declared
    (lambda t: ["--model.betas", "[1.5, 0.9]"], r"--model.betas must be a number in \[0, 1\), got 1.5"),
    (lambda t: ["--model.betas", "[0.9, 1.0]"], r"--model.betas must be a number in \[0, 1\), got 1.0"),
    (lambda t: ["--model.weight_decay", "-0.1"], r"--model.weight_decay must be a number >= 0, got -0.1"),
    (lambda t: ["--model.min_lr_ratio", "-0.1"], r"--model.min_lr_ratio must be a number in \[0, 1\], got -0.1"),
    (lambda t: ["--model.min_lr_ratio", "1.5"], r"--model.min_lr_ratio must be a number in \[0, 1\]"),
    (lambda t: ["--model.warmup_ratio", "1.5"], r"--model.warmup_ratio must be a number in \[0, 1\], got 1.5"),
    (lambda t: ["--model.warmup_ratio", "-0.1"], r"--model.warmup_ratio must be a number in \[0, 1\]"),
    (lambda t: ["--model.learning_rate", "nan"], r"model.learning_rate.*nan"),
    (lambda t: ["--data.seed", "-1"], r"--data.seed must be an integer in \[0, 2\^32\), got -1"),
    (lambda t: ["--seed_everything", "-1"], r"--seed_everything must be true, false or an integer in \[0, 2\^32\)"),
    (lambda t: ["--samples.seed", "-1"], r"--samples.seed must be an integer in \[0, 2\^32\)"),
    (lambda t: ["--data.tokenize_num_proc", "0"], r"--data.tokenize_num_proc must be >= 1"),
    (lambda t: ["--model.config_overrides", "{n_layer: -1}"], r"'n_layer' must be a positive integer, got -1"),
    (lambda t: ["--model.config_overrides", "{n_layer: 0}"], r"'n_layer' must be a positive integer, got 0"),
    (lambda t: ["--model.config_overrides", "{n_layer: true}"], r"'n_layer' must be of type int .* got bool"),
    (lambda t: ["--model.config_overrides", "{n_embd: 63}"], r"--model.config_overrides: the model .* cannot be "
     r"built with these values"),
    (lambda t: ["--model.config_overrides", "{vocab_size: 10}"], r"vocab_size \(10\) is below the tokenizer's 953 "
     r"tokens.*vocab_size: 953"),
    (lambda t: ["--model.config_overrides", "{no_such_field: 1}"], r"'no_such_field' is not a field of GPT2Config"),
    (lambda t: ["--model.config_overrides", "[1, 2]"], r"model.config_overrides"),
    # config files: the file and the line
    (lambda t: config_file(t, "bad.yaml", "trainer:\n  max_epochs: 3\n  devices: [1\nmodel:\n  learning_rate: 1\n"),
     r"bad.yaml, line 4, column 6: invalid YAML: .* flow sequence that starts at line 3, column 12"),
    (lambda t: config_file(t, "tabs.yaml", "trainer:\n\tmax_epochs: 3\n"), r"tabs.yaml, line 2: a tab in the indent"),
    (lambda t: config_file(t, "list.yaml", "model:\n  learning_rate: 1.0e-3\ntrainer:\n  - max_epochs: 3\n"),
     r"list.yaml, line 4: 'trainer' holds settings as a mapping .* not a list"),
    (lambda t: config_file(t, "top.yaml", "- trainer\n- model\n"), r"top.yaml, line 1: a config file is a mapping"),
    (lambda t: config_file(t, "args.yaml", "trainer:\n  logger:\n    class_path: lightning.pytorch.loggers.CSVLogger\n"
                                           "    init_args: [a, b]\n"), r"args.yaml, line 4: 'init_args' holds"),
    (lambda t: ["-c", str(t / "no-such.yaml")], r"-c .*no-such.yaml: the config file does not exist"),
    # data files
    (fifo, r"rows.jsonl' is not a regular file \(a named pipe or device\)"),
]  # fmt: skip


@pytest.mark.parametrize(("flags", "message"), CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_a_bad_flag_or_config_file_is_one_message_naming_it(in_repo, tmp_path, alpaca_file, capsys, flags, message):
    args = ["fit", *tiny_model_args(tmp_path, alpaca_file), *LEAN_ARGS, *flags(tmp_path)]
    with pytest.raises(SystemExit) as exit_:
        cli_one_thread(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    text = err[err.index("error:") :] if "error:" in err else err
    assert "Traceback" not in err and re.search(message, text, re.DOTALL), err[-3000:]
    assert len(text.splitlines()) <= 8, "more than one short message"
    assert not (tmp_path / "run").exists(), "a bad input started a run"


def test_an_unreadable_data_file_is_one_message(in_repo, tmp_path, alpaca_file, capsys, monkeypatch):
    if os.geteuid() == 0:  # root reads any file: make the read itself fail as it does for a user without permission
        import builtins

        real_open = builtins.open

        def no_permission(file, *args, **kwargs):
            if str(file) == str(alpaca_file):
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", no_permission)
    else:
        alpaca_file.chmod(0)
    with pytest.raises(SystemExit) as exit_:
        cli_one_thread(["fit", *tiny_model_args(tmp_path, alpaca_file), *LEAN_ARGS])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert re.search(r"litsft: error: --data.dataset: '.*alpaca.json' cannot be read \([Pp]ermission denied", err), err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind", ["csv", "json"])
def test_a_data_file_with_a_utf8_bom_reads_its_first_column(in_repo, tmp_path, rows, kind):
    path = tmp_path / f"rows.{kind}"
    if kind == "csv":
        with open(path, "w", encoding="utf-8-sig", newline="") as f:  # Excel's "CSV UTF-8"
            writer = csv.DictWriter(f, fieldnames=["instruction", "input", "output"])
            writer.writeheader()
            writer.writerows({"input": "", **r} for r in rows)
    else:
        path.write_text(json.dumps(rows), encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    cli = cli_one_thread(["fit", *tiny_model_args(tmp_path, path), *LEAN_ARGS, "--trainer.max_steps", "1"])
    assert cli.datamodule.counts.rows == len(rows) and cli.trainer.global_step == 1


def test_ctrl_c_during_tokenization_exits_130(in_repo, tmp_path, alpaca_file, capsys, monkeypatch):
    import litsft.data.datamodule as datamodule

    real = datamodule.process_rows

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the rows are being tokenized
        return real(*args, **kwargs)

    monkeypatch.setattr(datamodule, "process_rows", interrupted)
    try:
        with pytest.raises(SystemExit) as exit_:
            cli_one_thread(["fit", *tiny_model_args(tmp_path, alpaca_file), *LEAN_ARGS, "--data.cache_dir",
                            str(tmp_path / "cache")])  # fmt: skip
    finally:  # Lightning ignores SIGINT from its KeyboardInterrupt handling on (a CLI process exits right after)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    assert exit_.value.code == 130
    assert "litsft: interrupted." in capsys.readouterr().err
