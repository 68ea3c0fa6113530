"""Bad input, as a new user makes it, through the real CLI: exit status 2 and one short message that names the
file, row, field or flag and the fix; no stack trace, no training, nothing written over."""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from tests.helpers import LEAN_ARGS, SMOKE_MODEL, cli_one_thread, tiny_model_args, write_rows

pytestmark = pytest.mark.integration  # every test here runs the CLI or a Trainer (tests/tiers.py)

GOOD = {"instruction": "Say hi.", "input": "", "output": "hi"}


def rows_file(tmp: Path, name: str, rows: list) -> Path:
    return write_rows(tmp / name, rows)


def text_file(tmp: Path, name: str, text: str | bytes) -> Path:
    path = tmp / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def tokenizer_without_eos(tmp: Path) -> Path:
    from transformers import AutoTokenizer

    folder = tmp / "no-eos-model"
    tokenizer = AutoTokenizer.from_pretrained(str(SMOKE_MODEL))
    tokenizer.eos_token = None
    tokenizer.save_pretrained(str(folder))
    shutil.copy(SMOKE_MODEL / "config.json", folder / "config.json")
    return folder


def config_without_weights(tmp: Path) -> Path:
    folder = tmp / "config-only"
    shutil.copytree(SMOKE_MODEL, folder)
    return folder


def not_a_model(tmp: Path) -> Path:
    folder = tmp / "my-notes"
    folder.mkdir()
    (folder / "README.txt").write_text("not a model")
    return folder


class RunsCode:
    """Unpickling this would create the file `marker`: a checkpoint must never run code when loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def unsafe_checkpoint(tmp: Path) -> Path:
    path = tmp / "downloaded.ckpt"
    torch.save({"state_dict": {}, "loops": {}, "optimizer_states": [], "x": RunsCode(tmp / "code-ran")}, path)
    return path


# (flags given a tmp folder, message regex); data flags replace the good default --data.dataset.
CASES = [
    pytest.param(
        lambda t: ["--data.dataset", str(t / "alpaca_data.json")],
        r"file '.*alpaca_data.json' does not exist",
        id="missing-file",
    ),
    pytest.param(
        lambda t: ["--data.dataset", str(text_file(t, "d.txt", "x"))],
        r"use .json, .jsonl, .parquet or .csv",
        id="unknown-extension",
    ),
    pytest.param(
        lambda t: ["--data.dataset", str(text_file(t, "d.json", ""))],
        r"d.json: the file is empty",
        id="empty-json",
    ),
    pytest.param(
        lambda t: ["--data.dataset", str(text_file(t, "d.jsonl", "\n \n"))],
        r"d.jsonl: the file is empty",
        id="empty-jsonl",
    ),
    pytest.param(
        lambda t: ["--data.dataset", str(text_file(t, "d.csv", "instruction,output\n"))],
        r"d.csv: the file is empty",
        id="empty-csv",
    ),
    pytest.param(
        lambda t: [
            "--data.dataset",
            str(
                text_file(t, "d.json", '[\n{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "d"}\n]')
            ),
        ],
        r"d.json: invalid JSON at line 3",
        id="invalid-json",
    ),
    pytest.param(
        lambda t: [
            "--data.dataset",
            str(
                text_file(
                    t, "d.jsonl", json.dumps(GOOD) + "\n{'instruction': 'single quotes'}\n" + json.dumps(GOOD) + "\n"
                )
            ),
        ],
        r"d.jsonl: line 2 is not valid JSON .*Fix or delete that line",
        id="jsonl-one-bad-line",
    ),
    pytest.param(
        lambda t: ["--data.dataset", str(text_file(t, "d.json", json.dumps({"data": [GOOD] * 3}, indent=2)))],
        r"rows are inside it, under 'data'",
        id="rows-inside-an-object",
    ),
    pytest.param(
        lambda t: ["--data.dataset", str(rows_file(t, "d.json", [GOOD, {"output": "x"}]))],
        r"d.json: row 1 has no field 'instruction'",
        id="row-missing-instruction",
    ),
    pytest.param(
        lambda t: ["--data.dataset", str(rows_file(t, "d.json", [GOOD, {"instruction": "x"}]))],
        r"d.json: row 1 has no field 'output'",
        id="row-missing-output",
    ),
    pytest.param(
        lambda t: ["--data.dataset", str(rows_file(t, "d.json", [{"instruction": "a", "output": None}]))],
        r"row 0, field 'output' is NoneType",
        id="null-output",
    ),
    pytest.param(
        lambda t: ["--data.dataset", str(rows_file(t, "d.json", [GOOD, {"instruction": 42, "output": "x"}]))],
        r"row 1, field 'instruction' is int \(42\), not a string",
        id="number-instruction",
    ),
    pytest.param(
        lambda t: ["--data.dataset", str(rows_file(t, "d.json", [GOOD, {"instruction": "  ", "output": "x"}]))],
        r"row 1, field 'instruction' is empty",
        id="empty-instruction",
    ),
    pytest.param(
        lambda t: ["--data.instruction_column", "question"],
        r"no column 'question' \(for instruction\).*Set --data.instruction_column",
        id="absent-instruction-column",
    ),
    pytest.param(
        lambda t: ["--data.input_column", "context"],
        r"no column 'context' \(for input\).*Set --data.input_column",
        id="absent-input-column",
    ),
    pytest.param(
        lambda t: ["--data.dataset", str(text_file(t, "d.json", b'[{"instruction": "caf\xe9", "output": "x"}]'))],
        r"d.json: not UTF-8 text \(byte 21\)",
        id="not-utf8",
    ),
    pytest.param(
        lambda t: ["--data.prompt_template", "vicuna"],
        r"unknown template 'vicuna'",
        id="unknown-template",
    ),
    pytest.param(
        lambda t: ["--data.max_seq_length", "0"],
        r"--data.max_seq_length must be a positive integer, got 0",
        id="max-seq-length-zero",
    ),
    pytest.param(
        lambda t: ["--data.max_seq_length", "4096"],
        r"max_seq_length=4096 exceeds the context .* \(256 positions\)\. Use --data.max_seq_length 256",
        id="max-seq-length-above-context",
    ),
    pytest.param(
        lambda t: ["--data.max_seq_length", "8"],
        r"all 40 rows were dropped.*Raise max_seq_length",
        id="every-row-too-long",
    ),
    pytest.param(
        lambda t: ["--data.val_size", "40"],
        r"--data.val_size=40 asks for 40 validation rows but the data has only 40",
        id="val-size-whole-dataset",
    ),
    pytest.param(
        lambda t: ["--data.val_size", "1.0"],
        r"--data.val_size: a fraction must be in \[0, 1\)",
        id="val-size-fraction-one",
    ),
    pytest.param(
        lambda t: ["--data.batch_size", "0"],
        r"--data.batch_size must be a positive integer, got 0",
        id="batch-size-zero",
    ),
    pytest.param(
        lambda t: ["--trainer.accumulate_grad_batches", "0"],
        r"--trainer.accumulate_grad_batches must be an integer >= 1, got 0",
        id="accumulate-zero",
    ),
    pytest.param(
        lambda t: ["--trainer.devices", "0"],
        r"devices=.*not a valid input.*--trainer\.\* setting",
        id="devices-zero",
    ),
    pytest.param(
        lambda t: ["--model.learning_rate", "0"],
        r"--model.learning_rate must be a positive number",
        id="learning-rate-zero",
    ),
    pytest.param(
        lambda t: ["--model.model_name_or_path", str(not_a_model(t))],
        r"'.*my-notes' is not a Hugging Face model folder",
        id="folder-not-a-model",
    ),
    pytest.param(
        lambda t: ["--model.model_name_or_path", str(config_without_weights(t)), "--model.random_init", "false"],
        r"has a config but no weights .*--model.random_init true",
        id="model-without-weights",
    ),
    pytest.param(
        lambda t: ["--model.model_name_or_path", str(tokenizer_without_eos(t))],
        r"has no EOS token.*Set `eos_token`",
        id="tokenizer-without-eos",
    ),
    pytest.param(
        lambda t: ["--ckpt_path", str(t / "last.ckpt")],
        r"--ckpt_path: '.*last.ckpt' does not exist",
        id="checkpoint-missing",
    ),
    pytest.param(
        lambda t: ["--ckpt_path", str(rows_file(t, "model.ckpt", [GOOD]))],
        r"is not a checkpoint written by `python train.py fit`",
        id="checkpoint-not-a-checkpoint",
    ),
    pytest.param(
        lambda t: ["--ckpt_path", "last"],
        r"--ckpt_path last: no last.ckpt under .*leave --ckpt_path out",
        id="checkpoint-last-none",
    ),
    pytest.param(
        lambda t: ["--ckpt_path", str(unsafe_checkpoint(t))],
        r"holds Python objects that loading would have to run as code.*--weights_only false",
        id="checkpoint-would-run-code",
    ),
]


@pytest.mark.parametrize(("flags", "message"), CASES)
def test_bad_input_is_one_clear_message_and_nothing_runs(in_repo, tmp_path, alpaca_file, capsys, flags, message):
    args = ["fit", *tiny_model_args(tmp_path, alpaca_file), *LEAN_ARGS, *flags(tmp_path)]
    with pytest.raises(SystemExit) as exit_:
        cli_one_thread(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "litsft: error:" in err and "Traceback" not in err, err
    message_text = err[err.index("litsft: error:") :]  # after any progress bars of the data preparation
    assert re.search(message, message_text, re.DOTALL), err
    assert len(message_text.splitlines()) <= 6, "more than one short message"
    assert not (tmp_path / "run").exists(), "a bad input started a run"
    assert not (tmp_path / "code-ran").exists(), "loading a checkpoint ran code from it"


def test_a_mistyped_choice_is_refused_by_the_parser(in_repo, tmp_path, alpaca_file, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_one_thread(["fit", *tiny_model_args(tmp_path, alpaca_file), "--nonfinite.action", "ignore"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "nonfinite.action" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_resuming_with_other_data_is_refused_and_the_checkpoint_kept(in_repo, tmp_path, alpaca_file, rows, capsys):
    run = ["fit", *tiny_model_args(tmp_path, alpaca_file), *LEAN_ARGS, "--trainer.max_steps", "4"]
    cli_one_thread(run)
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    saved = checkpoint.read_bytes()
    other = write_rows(tmp_path / "other.json", rows[:-1])  # one row fewer: another order
    with pytest.raises(SystemExit) as exit_:
        cli_one_thread(["fit", *tiny_model_args(tmp_path, other), *LEAN_ARGS, "--ckpt_path", str(checkpoint)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert re.search(r"--data.dataset .*alpaca.json -> .*other.json \(the data\)", err), err
    assert "Traceback" not in err
    assert checkpoint.read_bytes() == saved  # nothing written over


def test_an_empty_output_is_allowed_and_teaches_the_eos_alone(in_repo, tmp_path, rows):
    rows[5]["output"] = ""
    data = write_rows(tmp_path / "d.json", rows)
    cli = cli_one_thread(["fit", *tiny_model_args(tmp_path, data), *LEAN_ARGS, "--trainer.max_steps", "1"])
    dm = cli.datamodule
    assert dm.counts.empty_output == 2  # the fixture's row 3 and this one
    learned = {r["row"]: r["num_labels"] for r in [*dm.train_rows, *dm.val_rows]}
    assert learned[5] == learned[3] == 1  # only the EOS


# -- safety: nothing from a file or a flag runs as code ---------------------------------------------------------


def test_trust_remote_code_is_off_unless_asked_and_covers_the_tokenizer(in_repo, tmp_path, alpaca_file):
    from litsft.cli import SFTCLI, run_cli

    cli = run_cli(SFTCLI, tiny_model_args(tmp_path, alpaca_file), run=False)
    assert cli.model.hparams.trust_remote_code is False and cli.datamodule.trust_remote_code is False
    cli = run_cli(SFTCLI, [*tiny_model_args(tmp_path, alpaca_file), "--model.trust_remote_code", "true"], run=False)
    assert cli.datamodule.trust_remote_code is True  # one flag for model and tokenizer


def test_model_weights_that_would_run_code_are_refused(in_repo, tmp_path, alpaca_file, capsys):
    folder = tmp_path / "pickled-model"
    shutil.copytree(SMOKE_MODEL, folder)
    torch.save({"transformer.wte.weight": RunsCode(tmp_path / "code-ran")}, folder / "pytorch_model.bin")
    with pytest.raises(SystemExit) as exit_:
        cli_one_thread(
            ["fit", *tiny_model_args(tmp_path, alpaca_file), *LEAN_ARGS,
             "--model.model_name_or_path", str(folder), "--model.random_init", "false"]
        )  # fmt: skip
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "litsft: error: --model.model_name_or_path" in err and "Traceback" not in err
    assert not (tmp_path / "code-ran").exists()


def test_flag_values_are_data_never_code(in_repo, tmp_path, alpaca_file):
    marker = tmp_path / "code-ran"
    code = f"__import__('pathlib').Path('{marker}').touch()"
    for flags in (["--model.learning_rate", code], ["--model.config_overrides", f'{{n_layer: "{code}"}}']):
        with pytest.raises(SystemExit) as exit_:
            cli_one_thread(["fit", *tiny_model_args(tmp_path, alpaca_file), *LEAN_ARGS, *flags])
        assert exit_.value.code == 2
    assert not marker.exists()


def test_the_exported_model_is_safetensors(in_repo, tmp_path, alpaca_file):
    args = ["fit", *tiny_model_args(tmp_path, alpaca_file), "--samples.enabled", "false", "--trainer.max_steps", "1"]
    cli_one_thread([*args, "--throughput.enabled", "false"])
    export = tmp_path / "run" / "export"
    assert (export / "model.safetensors").is_file() and not list(export.glob("*.bin"))
