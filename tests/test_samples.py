import csv
import json
from pathlib import Path

import pytest

from litsft.callbacks.sample_prompts import TUTORIAL_PROMPTS
from litsft.callbacks.samples import SampleGenerationCallback
from litsft.cli import cli_main
from tests.helpers import (
    latest_table,
    lean_trainer,
    offline_run_folder,
    tiny_datamodule,
    tiny_model_args,
    tiny_module,
    write_rows,
)


@pytest.mark.integration
def test_smoke_run_has_the_samples_table_with_base_and_later_columns(smoke_wandb_run):
    """Done when: the offline run folder has the table (base first), and val/loss, val/ppl, val/eos_acc."""
    cli, run = smoke_wandb_run
    folder = offline_run_folder(run)
    table = latest_table(folder)
    columns = table["columns"]
    assert columns[:3] == ["prompt", "reference", "step 0 (base)"]
    assert len(columns) >= 5 and all(c.startswith("step ") for c in columns[3:]), columns
    rows = table["data"]
    assert [r[0] for r in rows[:2]] == [p.instruction for p in TUTORIAL_PROMPTS]
    val = rows[2:]
    assert len(val) == 3 and all("\n\nInput: " in r[0] and r[1] for r in val)  # validation rows with input
    assert all(len(r) == len(columns) for r in rows)
    history = (next(folder.glob("run-*.wandb"))).read_bytes()
    for key in (b"val/loss", b"val/ppl", b"val/eos_acc", b"samples/eos_rate", b"samples/mean_new_tokens"):
        assert key in history, key
    metrics = list(csv.DictReader(next(run.rglob("metrics.csv")).open()))
    assert {"val/loss", "val/ppl", "val/eos_acc", "samples/eos_rate", "samples/mean_new_tokens"} <= set(metrics[0])
    rates = [float(r["samples/eos_rate"]) for r in metrics if r["samples/eos_rate"]]
    assert len(rates) == len(columns) - 2 and all(0.0 <= x <= 1.0 for x in rates)


@pytest.mark.integration
def test_training_tokenizer_is_unchanged_by_generation(smoke_wandb_run, tiny_tokenizer):
    cli, _ = smoke_wandb_run
    tokenizer = cli.datamodule.tokenizer
    callback = next(c for c in cli.trainer.callbacks if isinstance(c, SampleGenerationCallback))
    assert len(callback.columns) >= 2  # it did generate with this tokenizer
    assert tokenizer.padding_side == tiny_tokenizer.padding_side == "right"
    assert tokenizer.pad_token_id == tiny_tokenizer.pad_token_id


def setup_callback(callback, alpaca_file, tmp_path):
    dm = tiny_datamodule(alpaca_file, tmp_path / "cache")
    dm.setup("fit")
    module = tiny_module(seed=None, configure=False, config_overrides=None)
    callback.setup(type("T", (), {"datamodule": dm})(), module, "fit")
    return dm


def test_default_prompts_are_the_seed_two_then_validation_rows_with_input(alpaca_file, rows, tmp_path):
    callback = SampleGenerationCallback(num_val_prompts=3)
    dm = setup_callback(callback, alpaca_file, tmp_path)
    assert callback.prompts[:2] == list(TUTORIAL_PROMPTS)
    val_sources = {rows[i]["instruction"] + rows[i]["input"] for i in dm.val_rows["row"][:]}
    for p in callback.prompts[2:]:
        assert p.input and p.instruction + p.input in val_sources and p.reference
    assert len(callback.prompts) == 5
    # rendered with the training template, tokenized like the training rows
    rendered = dm.template.render(callback.prompts[2].instruction, callback.prompts[2].input)
    assert dm.tokenizer.decode(callback._prompt_ids[2]) == rendered


def test_a_user_file_replaces_the_default_prompts(alpaca_file, tmp_path):
    path = write_rows(tmp_path / "p.jsonl", [{"instruction": "Name a colour.", "input": ""}, "Count to three."], True)
    callback = SampleGenerationCallback(prompts_file=str(path))
    setup_callback(callback, alpaca_file, tmp_path)
    assert [p.instruction for p in callback.prompts] == ["Name a colour.", "Count to three."]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "--samples.prompts_file: cannot read prompts file"),
        ('[{"instruction": "ok"}, {"input": "x"}]', "row 1: field 'instruction' is missing"),
        ("{not json", "not valid JSON"),
    ],
)
def test_a_bad_prompts_file_is_one_clear_message_before_training(
    in_repo, tmp_path, alpaca_file, capsys, content, message
):
    path = tmp_path / "prompts.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as exit_:
        cli_main(["fit", *tiny_model_args(tmp_path, alpaca_file, "--samples.prompts_file", str(path))])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.integration
def test_console_panel_when_wandb_is_off(in_repo, tmp_path, alpaca_file, capsys):
    cli_main(
        ["fit", *tiny_model_args(tmp_path, alpaca_file), "--trainer.max_steps", "4", "--samples.every_n_steps", "2",
         "--samples.max_new_tokens", "8", "--trainer.limit_val_batches", "0", "--export.enabled", "false"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "litsft samples, step 0 (base)" in out and "litsft samples, step 4" in out
    assert TUTORIAL_PROMPTS[0].instruction in out and "step 0 (base):" in out


@pytest.mark.integration
def test_generation_over_the_time_limit_is_skipped_and_training_goes_on(alpaca_file, tmp_path):
    callback = SampleGenerationCallback(max_time=1e-9, max_new_tokens=200, every_n_steps=1)
    trainer = lean_trainer(max_steps=2, callbacks=[callback], limit_val_batches=0, default_root_dir=str(tmp_path))
    dm = tiny_datamodule(alpaca_file, tmp_path / "cache")
    with pytest.warns(UserWarning, match="took longer than --samples.max_time=1e-09s and was skipped"):
        trainer.fit(tiny_module(seed=None, configure=False, config_overrides=None), datamodule=dm)
    assert trainer.global_step == 2 and callback.columns == []


def test_checkpoint_state_continues_the_table_only_for_the_same_prompts(alpaca_file, tmp_path):
    callback = SampleGenerationCallback()
    setup_callback(callback, alpaca_file, tmp_path)
    n = len(callback.prompts)
    state = {"prompts": [p.display() for p in callback.prompts], "columns": ["step 0 (base)"], "steps": [0]}
    callback.load_state_dict(state | {"answers": [["a"]] * n})
    trainer = type("T", (), {"global_step": 0})()
    callback._maybe_sample(trainer, None)  # step 0 is in the restored table: nothing to generate
    assert callback.columns == ["step 0 (base)"] and callback.answers == [["a"]] * n
    other = SampleGenerationCallback()
    setup_callback(other, alpaca_file, tmp_path)
    other.load_state_dict(state | {"prompts": ["different"], "answers": [["a"]]})
    other.enabled = False  # restore only
    other._maybe_sample(trainer, None)
    assert other.columns == [] and other.answers == [[] for _ in range(n)]


# -- ranks: spawned processes cannot hand the callback back, so each generation call writes a record file ----------


class RecordingSamples(SampleGenerationCallback):
    def __init__(self, marks: str, collective: bool, rank1_max_time: float | None = None, **kw) -> None:
        super().__init__(**kw)
        self.marks, self.collective, self.rank1_max_time = marks, collective, rank1_max_time

    def all_ranks_generate(self, trainer, pl_module) -> bool:
        return self.collective  # True stands in for FSDP/ZeRO-3, which need a GPU or DeepSpeed

    def sample(self, trainer, pl_module) -> None:
        import litsft.callbacks.samples as samples

        if self.rank1_max_time is not None and trainer.global_rank == 1:
            self.max_time = self.rank1_max_time  # rank 1's deadline fires at once: clocks never agree exactly
        real = samples.generate_ids

        def recording(*args, **kwargs):
            out = real(*args, **kwargs)
            record = {"synced": kwargs["synced_gpus"], "lengths": [len(ids) for ids, _ in out]}
            Path(self.marks, f"rank{trainer.global_rank}-step{trainer.global_step}.json").write_text(json.dumps(record))
            return out

        samples.generate_ids = recording
        try:
            super().sample(trainer, pl_module)
        finally:
            samples.generate_ids = real


@pytest.mark.integration
@pytest.mark.timeout(180)  # a hang in a collective fails here instead of eating the suite's time
@pytest.mark.parametrize(
    "collective",
    [
        pytest.param(False, id="ddp-rank0-only"),
        pytest.param(True, id="sharded-all-ranks-synced", marks=pytest.mark.slow),  # CI: ~15 s more
    ],
)
def test_generation_is_rank_safe_under_two_processes(alpaca_file, tmp_path, collective):
    from lightning.pytorch.loggers import CSVLogger

    marks = tmp_path / "marks"
    marks.mkdir()
    callback = RecordingSamples(
        str(marks), collective, rank1_max_time=1e-9 if collective else None, every_n_steps=1, max_new_tokens=12
    )
    trainer = lean_trainer(
        devices=2, strategy="ddp_spawn", max_steps=2, logger=CSVLogger(str(tmp_path), name="csv"),
        callbacks=[callback], limit_val_batches=0,
    )  # fmt: skip
    dm = tiny_datamodule(alpaca_file, tmp_path / "cache")
    trainer.fit(tiny_module(seed=None, configure=False, config_overrides=None), datamodule=dm)
    records = {p.stem: json.loads(p.read_text()) for p in marks.glob("*.json")}
    expected = {f"rank0-step{s}" for s in range(3)} | ({f"rank1-step{s}" for s in range(3)} if collective else set())
    assert set(records) == expected
    assert all(r["synced"] == collective for r in records.values())
    if collective:  # rank 1 stopped at its deadline, rank 0 went on: the synced loop kept them in step, no hang
        assert all(n <= 1 for s in range(3) for n in records[f"rank1-step{s}"]["lengths"])
        assert any(n > 1 for n in records["rank0-step0"]["lengths"])
    metrics = list(csv.DictReader(next(tmp_path.rglob("metrics.csv")).open()))
    logged = [r["step"] for r in metrics if r.get("samples/eos_rate")]
    assert logged == ["0", "1", "2"]  # rank 0 logged each round once
