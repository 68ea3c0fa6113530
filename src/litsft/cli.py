"""The one entry point: `python train.py fit|validate|test|predict`, configured by YAML and flags."""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from litsft.atomic_files import disk_full_in_chain, explain_disk_full
from litsft.callbacks.data_audit import DataAuditCallback
from litsft.callbacks.export import ExportCallback
from litsft.callbacks.graceful_stop import GracefulStopCallback, report_stop
from litsft.callbacks.nonfinite import NonFiniteLossCallback
from litsft.callbacks.prediction_writer import PredictionWriter
from litsft.callbacks.rng_state import RngStateCallback
from litsft.callbacks.samples import SampleGenerationCallback
from litsft.callbacks.throughput import ThroughputCallback
from litsft.callbacks.validation_schedule import ValidationSchedule
from litsft.data.datamodule import AlpacaDataModule
from litsft.errors import LitSFTError
from litsft.lightning_compat import LightningCLIHooks
from litsft.model.module import SFTModule
from litsft.run.checkpoint_io import use_atomic_checkpoints
from litsft.run.cli_help import HelpFormatter, parser_kwargs, retitle_trainer_group
from litsft.run.config_files import check_config_files
from litsft.run.console import (
    ModelLineCallback,
    quiet_libraries,
    quiet_logs,
    quiet_noise_warnings,
    quiet_warnings,
    run_summary,
)
from litsft.run.preflight import check_run
from litsft.run.resume import check_checkpoint, resolve_last_checkpoint
from litsft.run.resume_check import RunSettingsCallback, check_resume, read_saved_settings, run_settings
from litsft.run.threads import CpuThreadsCallback
from litsft.run.wandb_setup import LoggedConfigCallback, WandbRunIdCallback, finish_run, prepare_loggers

# configs/default.yaml in a source checkout (editable install); absent in a wheel, where the class defaults,
# which equal it (tests/test_cli.py checks), apply.
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "default.yaml"
SUBCOMMANDS = ("fit", "validate", "test", "predict")
DATA_LINK_TARGETS = ("tokenizer_name_or_path", "trust_remote_code")  # follow --model.* (linked)


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


class SFTCLI(LightningCLIHooks):
    checks_model = True  # the preflight check loads the model's config (preview needs only the data side)

    def add_core_arguments_to_parser(self, parser) -> None:
        # Lightning's order, with litsft's own groups first: --help shows model, data and the callbacks' settings
        # before the ~60 Trainer flags (which Lightning puts first).
        parser.add_lightning_class_args(self.model_class, "model", subclass_mode=self.subclass_mode_model)
        parser.add_lightning_class_args(self.datamodule_class, "data", subclass_mode=self.subclass_mode_data)
        parser.add_lightning_class_args(SampleGenerationCallback, "samples")  # always on: --samples.enabled false
        parser.add_lightning_class_args(ExportCallback, "export")
        parser.add_lightning_class_args(NonFiniteLossCallback, "nonfinite")  # NaN/inf loss: stop, or skip
        parser.add_lightning_class_args(GracefulStopCallback, "interrupt")  # SIGTERM/Ctrl-C: stop, save last.ckpt
        parser.add_lightning_class_args(ThroughputCallback, "throughput")  # always on: --throughput.enabled false
        parser.add_lightning_class_args(ValidationSchedule, "validation")  # ~10 validations per run, step-aligned
        parser.add_lightning_class_args(PredictionWriter, "predictions")  # `predict` -> JSONL
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.set_defaults({"trainer." + k: v for k, v in self.trainer_defaults.items() if k != "callbacks"})
        retitle_trainer_group(parser)

    def add_arguments_to_parser(self, parser) -> None:
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
        # Model, tokenizer, dataset, max_seq_length: all problems at once, the hub's reachability decided once.
        check_run(self._config().model.as_dict(), self._config().data.as_dict(), check_model=self.checks_model)
        if self.subcommand:  # W&B offline fallback, save_dir under default_root_dir, run id on resume
            prepare_loggers(self._config(), self.subcommand)
            quiet_warnings(self.subcommand, resuming=bool(self._config().get("ckpt_path")))
            quiet_libraries()

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        use_atomic_checkpoints(self.trainer)  # temp file beside the target, fsync, rename

    def on_ckpt_path(self) -> None:
        # LightningCLI opens --ckpt_path right after parsing, to take the model's hyperparameters from it. First
        # resolve `last` (the newest last.ckpt of this run's checkpoint folders: Lightning would look in this run's new
        # logger version only) and check the file, so a wrong path or file is one message, not a torch.load trace.
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else {}
        path, weights_only = config.get("ckpt_path"), config.get("weights_only") is not False
        if path == "last":
            config.ckpt_path = resolve_last_checkpoint(config.trainer.as_dict(), weights_only, subcommand)
        elif path and path not in ("best", "hpc") and not str(path).startswith("registry"):
            check_checkpoint(Path(path).expanduser(), weights_only, for_fit=subcommand == "fit")
        # Lightning would put the checkpoint's model hyperparameters over this run's flags: for `fit` they are
        # compared instead (before_fit), so a changed flag takes effect or is refused, never silently replaced.
        if weights_only and subcommand != "fit":  # Lightning reads the hyperparameters with weights_only=True
            self.hparams_from_ckpt_path()
            if subcommand in ("validate", "test", "predict") and self.config[subcommand].get("ckpt_path"):
                self._data_from_checkpoint(subcommand)

    def _data_from_checkpoint(self, subcommand: str) -> None:
        """`validate|test|predict --ckpt_path X` evaluates X on the data it was trained on.

        Lightning takes only the model's hyperparameters from the checkpoint; with the data settings of the default
        config instead of the run's, a smoke checkpoint met Alpaca from the hub and a max_seq_length over its
        model's context. Here every `--data.*` setting the user left at its default comes from the checkpoint too;
        those set on the command line or in a -c config win, as for the model's. A mismatched pair was then
        "fixed" with advice that led to the next error.
        """
        checkpoint = torch.load(self.config[subcommand].ckpt_path, map_location="cpu", weights_only=True, mmap=True)
        saved = checkpoint.get("datamodule_hyper_parameters") or {}
        current = self.config[subcommand].data
        default = self.parser.parse_args([subcommand])[subcommand].data  # with the default config files
        taken = {
            key: value
            for key, value in saved.items()
            if key in current and key not in DATA_LINK_TARGETS and current[key] == default[key] != value
        }
        if taken:
            self.config = self.parser.parse_object({subcommand: {"data": taken}}, self.config)
            shown = ", ".join(f"{key}={value!r}" for key, value in taken.items())
            rank_zero_info(f"litsft: data settings of the checkpoint (pass --data.* to change them): {shown}")

    def before_seed(self) -> None:
        seed = self._config().get("seed_everything")
        if seed is not None and not isinstance(seed, bool) and not (isinstance(seed, int) and 0 <= seed < 2**32):
            # Lightning would warn and silently use seed 0 instead
            raise LitSFTError(f"--seed_everything must be true, false or an integer in [0, 2^32), got {seed!r}.")
        self._random_seed = seed is True  # a new random seed every run

    def _default_weights_only(self) -> None:
        config = self.config_init[self.subcommand]
        if config.get("weights_only") is None:
            config["weights_only"] = True  # checkpoints never run code when loaded (torch < 2.6 defaulted to False)

    before_validate = before_test = before_predict = _default_weights_only

    def before_fit(self) -> None:
        self._default_weights_only()
        config = self.config["fit"]
        settings = run_settings(config, self.trainer)
        if getattr(self, "_random_seed", False):
            settings["seed_everything"] = None
        ckpt_path = config.get("ckpt_path")
        if ckpt_path and ckpt_path not in ("best", "hpc") and Path(ckpt_path).exists():
            # Before anything is written: a refused resume leaves the run's folder exactly as it was.
            saved, hparams = read_saved_settings(ckpt_path, config.get("weights_only") is not False)
            changes = check_resume(saved, hparams, settings, ckpt_path)
            if changes:
                rank_zero_info("litsft: resuming with changed settings:\n  " + "\n  ".join(changes))
        self.trainer.callbacks.insert(0, RunSettingsCallback(settings))


class PreviewCLI(SFTCLI):
    """The training CLI without a subcommand, plus `--rows` and `--jsonl`: for `python -m litsft.preview`."""

    checks_model = False

    def add_arguments_to_parser(self, parser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_argument("--rows", type=int, default=10, help="Source rows to process and show.")
        parser.add_argument("--jsonl", type=str | None, default=None, help="Write the rows as JSON Lines here.")

    def instantiate_classes(self) -> None:
        # Only the data side is needed: no model weights, trainer or logger. So a tokenizer folder is enough
        # for --model.model_name_or_path here.
        self.datamodule = AlpacaDataModule(**self.config.data.as_dict())


def refuse_optimizer_flags(args: list[str]) -> None:
    """LightningCLI's --optimizer / --lr_scheduler would replace SFTModule.configure_optimizers (the weight decay
    groups, warmup and cosine schedule); litsft leaves them out of the CLI and says where the settings are."""
    for arg in args:
        flag = arg.split("=", 1)[0].split(".", 1)[0]
        if flag in ("--optimizer", "--lr_scheduler"):
            raise LitSFTError(
                f"{flag}: litsft trains with AdamW and a linear warmup then cosine decay, set with "
                "--model.learning_rate, --model.weight_decay, --model.betas, --model.warmup_ratio and "
                "--model.min_lr_ratio (see `python train.py fit --help`); another optimizer needs a subclass of "
                "SFTModule."
            )


def run_cli(cli_class: type[SFTCLI], args: list[str] | None, run: bool = True) -> SFTCLI:
    """Build `cli_class` on `args`; bad input exits with status 2 and a one-paragraph message."""
    defaults = [str(DEFAULT_CONFIG)] if DEFAULT_CONFIG.is_file() else []
    started, cli, summary = time.monotonic(), None, None
    noise_filters = warnings.catch_warnings()  # console.quiet_warnings' filters end with the command
    noise_filters.__enter__()
    quiet_noise_warnings()
    quiet_logs()
    try:
        refuse_optimizer_flags(sys.argv[1:] if args is None else args)
        check_config_files(sys.argv[1:] if args is None else args, defaults)  # errors name the file and line
        cli = cli_class(
            SFTModule,
            AlpacaDataModule,
            args=args,
            run=run,
            save_config_callback=LoggedConfigCallback,  # config.yaml (secrets redacted) + the W&B run config
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,  # SFTModule.configure_optimizers is the one source (--model.*)
            trainer_defaults={
                "use_distributed_sampler": False,
                "enable_model_summary": False,  # a 15-line table; ModelLineCallback prints one line instead
                # always on, nothing to configure (CpuThreadsCallback: set OMP_NUM_THREADS to choose yourself)
                # RngStateCallback: every checkpoint holds the RNG state, a resumed run restores it (exact resume)
                "callbacks": [
                    RngStateCallback(),
                    DataAuditCallback(),
                    WandbRunIdCallback(),
                    CpuThreadsCallback(),
                    ModelLineCallback(),
                ],
            },
            # jsonargparse gives subcommands the main parser's formatter: both get litsft's
            parser_kwargs={"formatter_class": HelpFormatter, **{name: parser_kwargs(defaults) for name in SUBCOMMANDS}}
            if run
            else parser_kwargs(defaults, usage=None),
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
    except SystemExit as done:
        # Lightning turns a Ctrl-C outside the training loop (data preparation, tokenization, set-up) into
        # exit status 1, from inside its KeyboardInterrupt handler; the shell convention is 130.
        if done.code == 1 and isinstance(done.__context__, KeyboardInterrupt):
            print("litsft: interrupted.", file=sys.stderr)
            raise SystemExit(130) from None
        raise
    except Exception as err:
        full = disk_full_in_chain(err)  # a full disk is one message, whichever write met it first
        if full is None:
            raise
        print(f"litsft: error: {explain_disk_full(full)}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        summary = run_summary(cli, started) if cli is not None and run else None  # while the W&B run is open
        finish_run()  # one W&B run per job, also when jobs share a process (tests, notebooks)
        noise_filters.__exit__(None, None, None)
    if summary:  # the last lines of the command, after W&B's: where the run's outputs are
        print(summary, flush=True)
    return cli


def cli_main(args: list[str] | None = None) -> SFTCLI:
    """`python train.py SUBCOMMAND ...` in-process: `cli_main(["fit", "-c", "configs/smoke.yaml"])`."""
    return run_cli(SFTCLI, args)
