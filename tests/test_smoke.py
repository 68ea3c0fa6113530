"""The "does my install work" run, as a new user makes it: offline, CPU, validation loss falls, export loads."""

import csv

import pytest
import torch

from litsft.cli import cli_main


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    import os

    from tests.conftest import REPO

    run = tmp_path_factory.mktemp("smoke")
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        cli = cli_main(
            ["fit", "-c", "configs/smoke.yaml", "--trainer.default_root_dir", str(run),
             "--trainer.logger.init_args.save_dir", str(run), "--trainer.enable_progress_bar", "false"]
        )  # fmt: skip
    finally:
        os.chdir(cwd)
    return cli, run


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
