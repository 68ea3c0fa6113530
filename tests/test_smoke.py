"""The "does my install work" run, as a new user makes it: offline, CPU, validation loss falls, export loads."""

import csv

import pytest
import torch

from litsft.cli import cli_main
from tests.helpers import REPO, tiny_model_args

pytestmark = pytest.mark.integration  # every test here runs the CLI or a Trainer (tests/tiers.py)


@pytest.fixture(scope="module")
def smoke_run(smoke_wandb_run):
    """`fit -c configs/smoke.yaml` in a temp folder: the session's one smoke run (`helpers.run_smoke_config`)."""
    return smoke_wandb_run


def test_smoke_validation_loss_falls(smoke_run):
    cli, run = smoke_run
    metrics = next(run.rglob("metrics.csv"))
    rows = list(csv.DictReader(metrics.open()))
    val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    train = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(val) >= 4 and val[-1] < val[0] - 1.0, val
    assert all(torch.isfinite(torch.tensor(val + train)))
    assert {"lr", "val/ppl"} <= set(rows[0])


def test_export_loads_with_transformers_and_generates(smoke_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    from litsft.prompts import PromptTemplate

    cli, run = smoke_run
    folder = run / "export"
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    trained = cli.model.model.state_dict()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, trained[k])
    template = PromptTemplate.load(folder)
    assert template.name == "alpaca"
    generator = pipeline("text-generation", model=str(folder), tokenizer=AutoTokenizer.from_pretrained(str(folder)))
    prompt = template.render("What is the capital of France?")
    out = generator(prompt, max_new_tokens=12, do_sample=False)[0]["generated_text"]
    assert out.startswith(prompt) and len(out) > len(prompt)


def test_local_file_and_local_model_folder_train(smoke_run, tmp_path, alpaca_file, monkeypatch):
    """`--data.dataset FILE.json --model.model_name_or_path DIR`: a local HF folder's weights are loaded."""
    _, run = smoke_run
    monkeypatch.chdir(REPO)
    folder = str(run / "export")
    args = tiny_model_args(tmp_path, alpaca_file, "--model.model_name_or_path", folder, "--model.random_init", "false")
    loaded = cli_main(["validate", *args, "--samples.enabled", "false"]).trainer.callback_metrics["val/loss"]
    fresh = cli_main(["validate", *tiny_model_args(tmp_path, alpaca_file), "--samples.enabled", "false"])
    assert float(loaded) < float(fresh.trainer.callback_metrics["val/loss"]) - 0.5  # trained weights, not random
    cli = cli_main(["fit", *args, "--trainer.max_steps", "2", "--samples.enabled", "false"])
    assert cli.trainer.global_step == 2
