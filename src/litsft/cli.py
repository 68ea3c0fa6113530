"""The one entry point: `python train.py fit|validate|test|predict`, configured by YAML and flags."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from lightning.pytorch.cli import LightningCLI

from litsft.callbacks.export import ExportCallback
from litsft.data.datamodule import AlpacaDataModule
from litsft.errors import LitSFTError
from litsft.hf_loading import context_length
from litsft.module import SFTModule

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


class SFTCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(ExportCallback, "export")
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

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        limit = context_length(self.model.hf_config)
        if limit is not None and self.datamodule.max_seq_length > limit:
            raise LitSFTError(
                f"--data.max_seq_length={self.datamodule.max_seq_length} exceeds the context of "
                f"'{self.model.hparams.model_name_or_path}' ({limit} positions). Use --data.max_seq_length {limit} "
                "or less."
            )


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
            save_config_kwargs={"overwrite": True},
            trainer_defaults={"use_distributed_sampler": False},
            parser_kwargs={name: {"default_config_files": defaults} for name in SUBCOMMANDS}
            if run
            else {"default_config_files": defaults},
        )
    except LitSFTError as err:
        print(f"litsft: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def cli_main(args: list[str] | None = None) -> SFTCLI:
    """`python train.py SUBCOMMAND ...` in-process: `cli_main(["fit", "-c", "configs/smoke.yaml"])`."""
    return run_cli(SFTCLI, args)
