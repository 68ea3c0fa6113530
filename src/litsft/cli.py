"""The one entry point: `python train.py fit|validate|test|predict`, configured by YAML and flags."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from litsft.callbacks.data_audit import DataAuditCallback
from litsft.callbacks.export import ExportCallback
from litsft.callbacks.interrupt import InterruptCallback, report_stop
from litsft.callbacks.nonfinite import NonFiniteLossCallback
from litsft.callbacks.prediction_writer import PredictionWriter
from litsft.callbacks.samples import SampleGenerationCallback
from litsft.callbacks.throughput import ThroughputCallback
from litsft.callbacks.validation_schedule import ValidationSchedule
from litsft.data.datamodule import AlpacaDataModule
from litsft.errors import LitSFTError
from litsft.hf_loading import check_weights, context_length
from litsft.module import SFTModule
from litsft.resume import check_checkpoint, resolve_last_checkpoint, search_roots
from litsft.wandb_setup import LoggedConfigCallback, WandbRunIdCallback, finish_run, prepare_loggers

# configs/default.yaml in a source checkout (editable install); absent in a wheel, where the class defaults,
# which equal it (tests/test_cli.py checks), apply.
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "default.yaml"
SUBCOMMANDS = ("fit", "validate", "test", "predict")


def _tokenizer_source(model_name_or_path: str, tokenizer_name_or_path: str | None) -> str:
    return tokenizer_name_or_path or model_name_or_path


def default_precision(accelerator: str | None) -> str:
    """bf16-mixed on a GPU that supports it, else 32-true (bf16 on a CPU is ~5x slower than fp32)."""
    on_cpu = str(accelerator) == "cpu" or not torch.cuda.is_available()
    return "32-true" if on_cpu or not torch.cuda.is_bf16_supported() else "bf16-mixed"


def check_strategy(strategy, accelerator) -> None:
    """Fail before any process starts for a strategy that cannot run here, saying what to use instead."""
    name = str(
        strategy.get("class_path", "") if isinstance(strategy, dict) else getattr(strategy, "class_path", strategy)
    )
    if "deepspeed" not in name.lower():
        return
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        raise LitSFTError(
            '--trainer.strategy: DeepSpeed is not installed. Install it with `pip install -e ".[deepspeed]"` '
            "(on a machine with CUDA), or use configs/strategy/fsdp.yaml, which needs no extra package."
        )
    if str(accelerator) == "cpu" or not torch.cuda.is_available():
        raise LitSFTError(
            "--trainer.strategy: DeepSpeed needs CUDA GPUs. On CPU use configs/strategy/ddp.yaml or "
            "configs/strategy/fsdp.yaml (FSDP2 runs on CPU with gloo)."
        )


def _is_zero_time(value) -> bool:
    """`--trainer.max_time` of zero: "00:00:00:00" (DD:HH:MM:SS), a dict of units, or a timedelta."""
    from datetime import timedelta

    if isinstance(value, str):
        try:
            return all(float(part) == 0 for part in value.split(":"))
        except ValueError:
            return False  # Lightning reports the bad format itself
    if isinstance(value, dict):
        return all(float(v) == 0 for v in value.values())
    return isinstance(value, timedelta) and value.total_seconds() == 0


def check_trains_something(trainer) -> None:
    """`fit` with a limit of zero would end at once and export the untrained model as the fine-tuned one: refuse."""
    zero = [
        f"--trainer.{key} {value}"
        for key, value in (
            ("max_steps", trainer.get("max_steps")),
            ("max_epochs", trainer.get("max_epochs")),
            ("limit_train_batches", trainer.get("limit_train_batches")),
        )
        if value is not None and not isinstance(value, bool) and value == 0
    ]
    if trainer.get("max_time") is not None and _is_zero_time(trainer.max_time):
        zero.append(f"--trainer.max_time {trainer.max_time}")
    if zero:
        raise LitSFTError(
            f"{' and '.join(zero)}: this run would train nothing (and export the untrained model as the fine-tuned "
            "one). Give a positive limit (--trainer.max_steps -1 lets --trainer.max_epochs decide), or evaluate "
            "without training with `python train.py validate`."
        )


def choose_validation_schedule(config) -> None:
    """litsft's schedule (`--validation.*`) unless a Lightning one is asked for; both at once is an error."""
    trainer, schedule = config.trainer, config.get("validation")
    if schedule is None:
        return
    lightning_flags = [
        f"--trainer.{key} {value}"
        for key, value in (
            ("val_check_interval", trainer.get("val_check_interval")),
            ("check_val_every_n_epoch", trainer.get("check_val_every_n_epoch")),
        )
        if value is not None and not (key == "check_val_every_n_epoch" and value == 1)
    ]
    if not lightning_flags:
        return
    if schedule.get("every_n_steps") is not None:
        raise LitSFTError(
            f"{' and '.join(lightning_flags)} and --validation.every_n_steps {schedule.every_n_steps} both say when "
            "to validate. Keep one: --validation.every_n_steps counts optimizer steps over the whole run."
        )
    schedule.enabled = False  # Lightning's val_check_interval / check_val_every_n_epoch, as given


class SFTCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(ExportCallback, "export")
        parser.add_lightning_class_args(NonFiniteLossCallback, "nonfinite")  # NaN/inf loss: stop, or skip
        parser.add_lightning_class_args(InterruptCallback, "interrupt")  # SIGTERM/Ctrl-C: last.ckpt, exact resume
        parser.add_lightning_class_args(ThroughputCallback, "throughput")  # always on: --throughput.enabled false
        parser.add_lightning_class_args(SampleGenerationCallback, "samples")  # always on: --samples.enabled false
        parser.add_lightning_class_args(ValidationSchedule, "validation")  # ~10 validations per run, step-aligned
        parser.add_lightning_class_args(PredictionWriter, "predictions")  # `predict` -> JSONL
        # One source of truth: the tokenizer follows the model unless --model.tokenizer_name_or_path is set.
        parser.link_arguments(
            ("model.model_name_or_path", "model.tokenizer_name_or_path"),
            "data.tokenizer_name_or_path",
            compute_fn=_tokenizer_source,
        )
        parser.link_arguments("model.trust_remote_code", "data.trust_remote_code")

    def _config(self):
        return self.config[self.subcommand] if self.subcommand else self.config

    def before_instantiate_classes(self) -> None:
        trainer = self._config().trainer
        if trainer.precision is None:
            trainer.precision = default_precision(trainer.accelerator)
        check_strategy(trainer.strategy, trainer.accelerator)
        accumulate = trainer.accumulate_grad_batches
        if not isinstance(accumulate, int) or accumulate < 1:  # 0 divides by zero later, -1 runs as if it were 1
            raise LitSFTError(f"--trainer.accumulate_grad_batches must be an integer >= 1, got {accumulate}.")
        if self.subcommand == "fit":
            check_trains_something(trainer)
        choose_validation_schedule(self._config())
        if self.subcommand:  # W&B offline fallback, save_dir under default_root_dir, run id on resume
            prepare_loggers(self._config(), self.subcommand)

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        if not self.model.hparams.random_init:
            check_weights(self.model.hparams.model_name_or_path)
        limit = context_length(self.model.hf_config)
        if limit is not None and self.datamodule.max_seq_length > limit:
            raise LitSFTError(
                f"--data.max_seq_length={self.datamodule.max_seq_length} exceeds the context of "
                f"'{self.model.hparams.model_name_or_path}' ({limit} positions). Use --data.max_seq_length {limit} "
                "or less."
            )

    def _parse_ckpt_path(self) -> None:
        # LightningCLI opens --ckpt_path right after parsing, to take the model's hyperparameters from it. First
        # resolve `last` (the newest last.ckpt of the run's folders: Lightning would look in this run's new logger
        # version only) and check the file, so a wrong path or file is one message, not a torch.load stack trace.
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else {}
        path, weights_only = config.get("ckpt_path"), config.get("weights_only") is not False
        if path == "last":
            roots = search_roots(config.trainer.as_dict())
            config.ckpt_path = resolve_last_checkpoint(roots, weights_only, subcommand)
        elif path and path not in ("best", "hpc") and not str(path).startswith("registry"):
            check_checkpoint(Path(path).expanduser(), weights_only, for_fit=subcommand == "fit")
        if weights_only:  # Lightning reads the hyperparameters with weights_only=True
            super()._parse_ckpt_path()

    def _default_weights_only(self) -> None:
        config = self.config_init[self.subcommand]
        if config.get("weights_only") is None:
            config["weights_only"] = True  # checkpoints never run code when loaded (torch < 2.6 defaulted to False)

    before_fit = before_validate = before_test = before_predict = _default_weights_only


class PreviewCLI(SFTCLI):
    """The training CLI without a subcommand, plus `--rows` and `--jsonl`: for `python -m litsft.preview`."""

    def add_arguments_to_parser(self, parser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_argument("--rows", type=int, default=10, help="Source rows to process and show.")
        parser.add_argument("--jsonl", type=str | None, default=None, help="Write the rows as JSON Lines here.")

    def instantiate_classes(self) -> None:
        # Only the data side is needed: no model weights, trainer or logger. So a tokenizer folder is enough
        # for --model.model_name_or_path here.
        self.datamodule = AlpacaDataModule(**self.config.data.as_dict())


def run_cli(cli_class: type[SFTCLI], args: list[str] | None, run: bool = True) -> SFTCLI:
    """Build `cli_class` on `args`; bad input exits with status 2 and a one-paragraph message."""
    defaults = [str(DEFAULT_CONFIG)] if DEFAULT_CONFIG.is_file() else []
    try:
        return cli_class(
            SFTModule,
            AlpacaDataModule,
            args=args,
            run=run,
            save_config_callback=LoggedConfigCallback,  # config.yaml (secrets redacted) + the W&B run config
            save_config_kwargs={"overwrite": True},
            trainer_defaults={
                "use_distributed_sampler": False,
                "callbacks": [DataAuditCallback(), WandbRunIdCallback()],  # always on, nothing to configure
            },
            parser_kwargs={name: {"default_config_files": defaults} for name in SUBCOMMANDS}
            if run
            else {"default_config_files": defaults},
        )
    except LitSFTError as err:
        print(f"litsft: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except MisconfigurationException as err:  # Lightning's word for a bad --trainer.* setting
        print(f"litsft: error: {err} (a --trainer.* setting; see `python train.py fit --help`)", file=sys.stderr)
        raise SystemExit(2) from None
    except SIGTERMException as stop:  # SIGTERM or Ctrl-C during training: stopped cleanly, last.ckpt saved
        raise SystemExit(report_stop(stop, args)) from None
    except KeyboardInterrupt:  # Ctrl-C before training started, or a second Ctrl-C
        print("litsft: interrupted.", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        finish_run()  # one W&B run per job, also when jobs share a process (tests, notebooks)


def cli_main(args: list[str] | None = None) -> SFTCLI:
    """`python train.py SUBCOMMAND ...` in-process: `cli_main(["fit", "-c", "configs/smoke.yaml"])`."""
    return run_cli(SFTCLI, args)
