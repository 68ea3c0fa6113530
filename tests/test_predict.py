"""`predict` -> JSONL, `--ckpt_path` for validate/test/predict, and the export made from the best checkpoint."""

import json

import pytest
import torch

from litsft.callbacks.export import ExportCallback
from litsft.cli import cli_main
from tests.helpers import REPO, tiny_model_args, write_rows

pytestmark = pytest.mark.integration  # every test here runs the CLI or a Trainer (tests/tiers.py)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_predict_writes_jsonl_for_the_validation_rows(in_repo, tmp_path, alpaca_file, rows):
    out = tmp_path / "preds.jsonl"
    cli = cli_main(
        ["predict", *tiny_model_args(tmp_path, alpaca_file), "--predictions.path", str(out),
         "--model.max_new_tokens", "6"]
    )  # fmt: skip
    records = read_jsonl(out)
    val_rows = cli.datamodule.val_rows["row"][:]
    assert len(records) == len(val_rows) == 8
    assert all(set(r) == {"prompt", "response", "stopped"} for r in records)
    for r, i in zip(records, val_rows, strict=True):  # in the order of the validation rows
        assert r["prompt"].startswith("Below is an instruction") and rows[i]["instruction"] in r["prompt"]


def test_predict_answers_a_prompts_file_in_order(in_repo, tmp_path, alpaca_file):
    asked = [{"instruction": "Name a colour."}, {"instruction": "Add 2 and 3.", "input": "x"}]
    prompts = write_rows(tmp_path / "prompts.jsonl", asked, jsonl=True)
    out = tmp_path / "preds.jsonl"
    cli_main(
        ["predict", *tiny_model_args(tmp_path, alpaca_file), "--data.predict_file", str(prompts),
         "--predictions.path", str(out), "--model.max_new_tokens", "4"]
    )  # fmt: skip
    records = read_jsonl(out)
    instructions = [r["prompt"].split("### Instruction:\n")[1].split("\n")[0] for r in records]
    assert instructions == ["Name a colour.", "Add 2 and 3."]
    assert "### Input:\nx" in records[1]["prompt"] and records[0]["prompt"].endswith("### Response:\n")


def test_a_missing_predict_file_is_one_clear_message(in_repo, tmp_path, alpaca_file, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["predict", *tiny_model_args(tmp_path, alpaca_file, "--data.predict_file", "nope.txt")])
    assert exit_.value.code == 2 and "--data.predict_file: 'nope.txt' is not a file" in capsys.readouterr().err


def best_checkpoint(cli):
    return cli.trainer.checkpoint_callback.best_model_path, float(cli.trainer.checkpoint_callback.best_model_score)


def test_export_is_made_from_the_best_checkpoint(smoke_wandb_run):
    cli, run = smoke_wandb_run
    path, _ = best_checkpoint(cli)
    export = next(c for c in cli.trainer.callbacks if isinstance(c, ExportCallback))
    assert export.exported_from == path
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(str(run / "export")).state_dict()
    best = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    for k, v in exported.items():
        torch.testing.assert_close(v, best["model." + k])


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_evaluation_subcommands_accept_ckpt_path(smoke_wandb_run, monkeypatch, tmp_path, subcommand):
    cli, _ = smoke_wandb_run
    path, score = best_checkpoint(cli)
    monkeypatch.chdir(REPO)
    args = [subcommand, "-c", "configs/smoke.yaml", "--ckpt_path", path, "--trainer.default_root_dir", str(tmp_path)]
    args += ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--model.max_new_tokens", "4"]
    done = cli_main(args)
    trained = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    for k, v in done.model.state_dict().items():  # the checkpoint's weights, not the config's random init
        torch.testing.assert_close(v, trained[k])
    if subcommand == "predict":
        assert len(read_jsonl(tmp_path / "predictions.jsonl")) == 80
    else:
        prefix = "val" if subcommand == "validate" else "test"
        loss = float(done.trainer.callback_metrics[f"{prefix}/loss"])
        assert loss == pytest.approx(score, abs=1e-4)
