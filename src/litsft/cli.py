"""The one entry point: `python train.py fit|validate|test|predict`, configured by YAML and flags."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from litsft.atomic_files import disk_full_in_chain, explain_disk_full
from litsft.callbacks.data_audit import DataAuditCallback
from litsft.callbacks.export import ExportCallback
from litsft.callbacks.interrupt import InterruptCallback, report_stop
from litsft.callbacks.nonfinite import NonFiniteLossCallback
from litsft.callbacks.prediction_writer import PredictionWriter
from litsft.callbacks.samples import SampleGenerationCallback
from litsft.callbacks.throughput import ThroughputCallback
from litsft.checkpoint_io import use_atomic_checkpoints
from litsft.config_files import check_config_files
from litsft.data.datamodule import AlpacaDataModule
from litsft.errors import LitSFTError
from litsft.hf_loading import check_weights, context_length
from litsft.module import SFTModule
from litsft.resume import check_checkpoint, resolve_last_checkpoint, search_roots
from litsft.resume_check import RunSettingsCallback, check_resume, read_saved_settings, run_settings
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


class SFTCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(ExportCallback, "export")
        parser.add_lightning_class_args(NonFiniteLossCallback, "nonfinite")  # NaN/inf loss: stop, or skip
        parser.add_lightning_class_args(InterruptCallback, "interrupt")  # SIGTERM/Ctrl-C: last.ckpt, exact resume
        parser.add_lightning_class_args(ThroughputCallback, "throughput")  # always on: --throughput.enabled false
        parser.add_lightning_class_args(SampleGenerationCallback, "samples")  # always on: --samples.enabled false
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
        if self.subcommand:  # W&B offline fallback, save_dir under default_root_dir, run id on resume
            prepare_loggers(self._config(), self.subcommand)

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        use_atomic_checkpoints(self.trainer)  # temp file beside the target, fsync, rename
        if not self.model.hparams.random_init:
            check_weights(self.model.hparams.model_name_or_path)
        hp = self.model.hparams
        vocab, tokens = getattr(self.model.hf_config, "vocab_size", None), len(self.datamodule.tokenizer)
        if isinstance(vocab, int) and vocab < tokens and (hp.random_init or hp.config_overrides):
            raise LitSFTError(
                f"the model's vocab_size ({vocab}) is below the tokenizer's {tokens} tokens: token ids {vocab} and up "
                f"would index past the embedding. Use --model.config_overrides '{{vocab_size: {tokens}}}' or more."
            )
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
        # Lightning would put the checkpoint's model hyperparameters over this run's flags: for `fit` they are
        # compared instead (before_fit), so a changed flag takes effect or is refused, never silently replaced.
        if weights_only and subcommand != "fit":  # Lightning reads the hyperparameters with weights_only=True
            super()._parse_ckpt_path()

    def _set_seed(self) -> None:
        seed = self._get(self.config, "seed_everything")
        if seed is not None and not isinstance(seed, bool) and not (isinstance(seed, int) and 0 <= seed < 2**32):
            # Lightning would warn and silently use seed 0 instead
            raise LitSFTError(f"--seed_everything must be true, false or an integer in [0, 2^32), got {seed!r}.")
        self._random_seed = seed is True  # a new random seed every run
        super()._set_seed()

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
        check_config_files(sys.argv[1:] if args is None else args, defaults)  # errors name the file and line
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
        finish_run()  # one W&B run per job, also when jobs share a process (tests, notebooks)


def cli_main(args: list[str] | None = None) -> SFTCLI:
    """`python train.py SUBCOMMAND ...` in-process: `cli_main(["fit", "-c", "configs/smoke.yaml"])`."""
    return run_cli(SFTCLI, args)
