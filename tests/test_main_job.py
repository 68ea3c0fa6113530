"""An offline rehearsal of the main job as a user runs it: `configs/default.yaml` itself, a model folder written with
`save_pretrained` (dropout 0.1, loaded in eval mode, unlike `random_init`), their own 300-row Alpaca-format file,
the tutorial's `plain` template, and `--trainer.default_root_dir`. Only the model size and the data are small."""

import csv
import json
import warnings

import pytest
import torch

from litsft.cli import cli_main
from tests.helpers import REPO, write_rows
from tests.probes import ModeProbe
from tests.tutorial_format import tutorial_text

pytestmark = pytest.mark.integration  # every test here runs the CLI or a Trainer (tests/tiers.py)


@pytest.fixture(scope="module")
def main_job(tmp_path_factory, pretrained_model):
    """`python train.py fit -c configs/default.yaml --model.model_name_or_path FOLDER --data.dataset rows.json
    --data.prompt_template plain --trainer.default_root_dir X`, from an empty working folder."""
    from litsft.smoke_assets import synthetic_rows

    rows = synthetic_rows(300, seed=7)
    data = write_rows(tmp_path_factory.mktemp("user-data") / "rows.json", rows)
    cwd = tmp_path_factory.mktemp("cwd")
    root = cwd / "X"
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        patch.chdir(cwd)
        cli = cli_main(
            ["fit", "-c", str(REPO / "configs" / "default.yaml"), "--model.model_name_or_path", str(pretrained_model),
             "--data.dataset", str(data), "--data.prompt_template", "plain", "--trainer.default_root_dir", str(root),
             "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
             "--trainer.callbacks+=tests.probes.ModeProbe"]
        )  # fmt: skip
    return cli, rows, cwd, root, [str(w.message) for w in caught]


def test_the_model_trains_in_train_mode_and_evaluates_in_eval_mode(main_job):
    cli, _, _, _, warned = main_job
    probe = next(c for c in cli.trainer.callbacks if isinstance(c, ModeProbe))
    assert cli.trainer.global_step == 15  # 294 training rows, 16 x 4 per step (the default job's), 3 epochs
    assert len(probe.train_batches) == 57 and all(modes == {True} for modes in probe.train_batches)
    assert probe.val_batches and all(modes == {False} for modes in probe.val_batches)
    assert probe.generate_calls and all(modes == {False} for modes in probe.generate_calls)  # sample rounds
    assert not [w for w in warned if "in eval mode at the start of training" in w]
    dropouts = {m.p for m in cli.model.model.modules() if isinstance(m, torch.nn.Dropout)}
    assert dropouts == {0.1}  # the model config's dropout, on while training


def test_a_300_row_file_validates_about_10_times_and_samples_no_more_often(main_job):
    cli, _, _, root, _ = main_job
    metrics = next(root.rglob("metrics.csv"))
    val_steps = [int(r["step"]) for r in csv.DictReader(metrics.open()) if r.get("val/loss")]
    assert len(val_steps) == 10 and len(set(val_steps)) == 10  # not at every one of the 15 steps
    assert val_steps[-1] == 14  # the last step's (Lightning logs step N's validation as N - 1)
    samples = next(c for c in cli.trainer.callbacks if type(c).__name__ == "SampleGenerationCallback")
    assert samples.steps == [0] + [s + 1 for s in val_steps]  # the base model, then once per validation


def test_the_rows_trained_on_are_the_tutorials_plain_strings(main_job):
    cli, rows, _, _, _ = main_job
    dm = cli.datamodule
    tokenizer = dm.tokenizer
    trained = {}
    for split in (dm.train_rows, dm.val_rows):
        trained.update(zip(split["row"][:], split["input_ids"][:], strict=True))
    assert sorted(trained) == list(range(len(rows)))
    assert sum(1 for r in rows if not r["input"]) > 100  # rows without input, where `plain` used to differ
    for index, ids in trained.items():
        text = tutorial_text(rows[index])
        expected = tokenizer(text, split_special_tokens=True)["input_ids"] + [tokenizer.eos_token_id]
        assert list(ids) == expected, (index, text)


def test_every_output_is_under_the_root(main_job):
    _, _, cwd, root, _ = main_job
    assert [p.name for p in cwd.iterdir()] == ["X"]  # nothing in the working folder beside the run folder
    assert (root / "config.yaml").is_file()
    assert list(root.glob("csv/version_0/metrics.csv"))
    assert list(root.glob("wandb/offline-run-*"))
    assert list(root.glob("litsft/*/checkpoints/last.ckpt")) and list(root.glob("litsft/*/checkpoints/step*.ckpt"))
    assert (root / "export" / "model.safetensors").is_file()


def test_the_export_loads_in_a_pipeline_with_the_tutorials_template(main_job):
    from transformers import pipeline

    from litsft.prompts import PromptTemplate

    _, _, _, root, _ = main_job
    template = PromptTemplate.load(root / "export")
    assert template.name == "plain" and template.render("Name a colour.") == "Name a colour."
    assert json.loads((root / "export" / "config.json").read_text())["attn_pdrop"] == 0.1
    generate = pipeline("text-generation", model=str(root / "export"), device="cpu")
    out = generate("What is the capital of Peru?", max_new_tokens=8, do_sample=False)[0]["generated_text"]
    assert out.startswith("What is the capital of Peru?") and len(out) > len("What is the capital of Peru?")
