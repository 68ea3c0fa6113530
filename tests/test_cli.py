import inspect
from pathlib import Path

import pytest
import torch
import yaml

from litsft.cli import cli_main
from litsft.data.datamodule import AlpacaDataModule
from litsft.model.module import SFTModule
from tests.helpers import REPO, tiny_model_args

CONFIGS = sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("*.yaml"))


@pytest.mark.integration
@pytest.mark.parametrize("config", CONFIGS)
def test_every_config_prints(in_repo, config, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["fit", "-c", config, "--print_config"])
    assert exit_.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["model_name_or_path"] and printed["data"]["dataset"]
    assert Path(config).read_text().startswith("#"), "each YAML opens with a comment giving its command"


@pytest.mark.integration
def test_default_job_is_distilgpt2_on_alpaca_with_wandb(in_repo, capsys):
    with pytest.raises(SystemExit):
        cli_main(["fit", "--print_config"])
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["model_name_or_path"] == "distilgpt2"
    assert cfg["data"]["dataset"] == "tatsu-lab/alpaca"
    assert any("WandbLogger" in lg["class_path"] for lg in cfg["trainer"]["logger"])


@pytest.mark.parametrize(("section", "cls"), [("model", SFTModule), ("data", AlpacaDataModule)])
def test_default_yaml_matches_the_class_defaults(section, cls):
    """configs/default.yaml holds exactly the defaults, so an installed wheel (no configs/) behaves the same."""
    values = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())[section]
    params = inspect.signature(cls.__init__).parameters
    for key, value in values.items():
        assert params[key].default == value, key


@pytest.mark.integration
def test_tokenizer_follows_the_model_unless_set_apart(in_repo, tmp_path, alpaca_file):
    from litsft.cli import SFTCLI, run_cli

    model = "configs/smoke/tiny-gpt2"
    cli = run_cli(SFTCLI, tiny_model_args(tmp_path, alpaca_file), run=False)
    assert cli.datamodule.tokenizer_name_or_path == model
    other = str(tmp_path / "tok")
    cli.datamodule.tokenizer.save_pretrained(other)
    cli = run_cli(SFTCLI, tiny_model_args(tmp_path, alpaca_file, "--model.tokenizer_name_or_path", other), run=False)
    assert cli.datamodule.tokenizer_name_or_path == other


@pytest.mark.integration
@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
def test_subcommands_run_with_fast_dev_run(in_repo, tmp_path, alpaca_file, subcommand):
    cli = cli_main([subcommand, *tiny_model_args(tmp_path, alpaca_file, "--trainer.fast_dev_run", "true")])
    assert cli.trainer.state.finished
    if subcommand == "predict":
        assert cli.trainer.predict_loop.predictions and "response" in cli.trainer.predict_loop.predictions[0][0]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--data.max_seq_length", "4096"], "max_seq_length=4096 exceeds the context of .* \\(256 positions\\)"),
        (["--data.prompt_template", "vicuna"], "unknown template 'vicuna'"),
        (["--data.dataset", "missing/file.json"], "file 'missing/file.json' does not exist"),
        (["--model.model_name_or_path", "distilgpt2", "--model.random_init", "false"], "offline"),
        (["--model.model_name_or_path", "configs"], "'configs' is not a Hugging Face model folder"),
    ],
)
def test_bad_input_is_one_clear_message_before_training(in_repo, tmp_path, alpaca_file, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["fit", *tiny_model_args(tmp_path, alpaca_file, *flags)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("litsft: error:") and "Traceback" not in err
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written


# -- runs that would train nothing -------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize(
    "flags",
    [
        ["--trainer.max_steps", "0"],
        ["--trainer.max_epochs", "0"],
        ["--trainer.limit_train_batches", "0"],
        ["--trainer.limit_train_batches", "0.0"],
        ["--trainer.max_time", "00:00:00:00"],
    ],
    ids=["max_steps", "max_epochs", "limit_train_batches-int", "limit_train_batches-float", "max_time"],
)
def test_a_run_that_would_train_nothing_is_refused_before_it_starts(in_repo, tmp_path, alpaca_file, capsys, flags):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["fit", *tiny_model_args(tmp_path, alpaca_file, *flags)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"litsft: error: --trainer.{flags[0].split('.')[-1]} {flags[1]}: this run would train nothing" in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()  # nothing trained, nothing exported


@pytest.mark.integration
def test_limits_of_zero_are_fine_where_nothing_is_trained_anyway(in_repo, tmp_path, alpaca_file):
    cli = cli_main(["validate", *tiny_model_args(tmp_path, alpaca_file, "--trainer.max_steps", "0")])
    assert "val/loss" in cli.trainer.callback_metrics


@pytest.mark.integration
def test_a_finished_run_resumed_trains_nothing_and_exports_nothing(in_repo, tmp_path, smoke_wandb_run):
    _, run = smoke_wandb_run
    last = next(run.rglob("last.ckpt"))
    root = tmp_path / "again"
    with pytest.warns(UserWarning, match="this fit ran no training step, so nothing was exported"):
        cli = cli_main(
            ["fit", "-c", "configs/smoke.yaml", "--trainer.default_root_dir", str(root), "--trainer.logger", "false",
             "--samples.enabled", "false", "--ckpt_path", str(last)]
        )  # fmt: skip
    assert cli.trainer.global_step == torch.load(last, weights_only=True, map_location="cpu")["global_step"]
    assert not (root / "export").exists()
