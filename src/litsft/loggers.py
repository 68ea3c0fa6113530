"""Lightning's `CSVLogger`, with `save_dir` optional: left out, it is the run folder (`--trainer.default_root_dir`).

Lightning's own requires `save_dir`, so a YAML listing it must fix a path, and `--trainer.default_root_dir X`
would then leave the metrics behind in that path. The CLI fills an absent `save_dir` with the run folder
(`litsft.run.wandb_setup.prepare_loggers`); a `save_dir` you give, in a YAML or on the command line, is kept.
"""

from __future__ import annotations

from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger


class CSVLogger(LightningCSVLogger):
    """Metrics as `<save_dir>/<name>/version_N/metrics.csv`."""

    def __init__(self, save_dir: str | None = None, **kwargs) -> None:
        """
        Args:
            save_dir: Folder of the CSV files; default (null): the run folder, `--trainer.default_root_dir` (the
                current folder outside the CLI).
        """
        super().__init__(save_dir="." if save_dir is None else save_dir, **kwargs)
