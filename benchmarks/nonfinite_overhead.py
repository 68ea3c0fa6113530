"""What the non-finite check costs per optimizer step: off vs loss only vs loss + gradient norm, with and without
the copy of the last finite state (weights + AdamW moments) that a stop restores.

    python benchmarks/nonfinite_overhead.py                 # tiny GPT-2 and a 6-layer, 768-wide one, CPU
    python benchmarks/nonfinite_overhead.py --steps 40 --sizes tiny

Each variant trains the same model on the same synthetic rows with a plain Lightning Trainer (no logger, no
checkpoints); variants are interleaved round by round (order reversed every other round) so a busy machine slows them
alike. Printed: the median
wall time of an optimizer step (after warm-up) per variant, and the check's overhead against "off".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402
from lightning.pytorch import Callback, Trainer, seed_everything  # noqa: E402

from litsft.callbacks.nonfinite import NonFiniteLossCallback  # noqa: E402
from litsft.data.datamodule import AlpacaDataModule  # noqa: E402
from litsft.model.module import SFTModule  # noqa: E402
from litsft.smoke_assets import synthetic_rows  # noqa: E402

SIZES = {"tiny": None, "6x768": {"n_layer": 6, "n_embd": 768, "n_head": 12}}
VARIANTS = {
    "off": None,
    "loss only": {"check_gradients": False, "keep_last_finite": False},
    "loss + grad norm": {"check_gradients": True, "keep_last_finite": False},
    "+ last-finite copy": {"check_gradients": True, "keep_last_finite": True},  # the default
}


class StepTimer(Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, *args) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, *args) -> None:
        self.times.append(time.perf_counter() - self._start)


def run(size: str, check: dict | None, steps: int, data: Path, cache: Path) -> list[float]:
    seed_everything(0, verbose=False)
    model = SFTModule(
        model_name_or_path=str(REPO / "configs/smoke/tiny-gpt2"), random_init=True, config_overrides=SIZES[size]
    )
    dm = AlpacaDataModule(
        dataset=str(data), tokenizer_name_or_path=str(REPO / "configs/smoke/tiny-gpt2"), max_seq_length=256,
        val_size=0, batch_size=8, num_workers=0, cache_dir=str(cache),
    )  # fmt: skip
    timer = StepTimer()
    callbacks = [timer] + ([] if check is None else [NonFiniteLossCallback(**check)])
    trainer = Trainer(
        accelerator="cpu", devices=1, precision="32-true", max_steps=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    return timer.times[3:]  # warm-up steps out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=23)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "rows.json"
        data.write_text(json.dumps(synthetic_rows(400, seed=0)))
        threads = torch.get_num_threads()
        print(f"torch {torch.__version__}, {threads} threads, batch 8, {args.steps} steps x {args.rounds} rounds")
        for size in args.sizes:
            times: dict[str, list[float]] = {v: [] for v in VARIANTS}
            for round_ in range(args.rounds):
                order = list(VARIANTS) if round_ % 2 == 0 else list(VARIANTS)[::-1]  # no variant always goes first
                for variant in order:
                    times[variant] += run(size, VARIANTS[variant], args.steps, data, Path(tmp) / "cache")
            base = statistics.median(times["off"])
            for variant, values in times.items():
                median = statistics.median(values)
                print(f"{size:>6}  {variant:<17} {median * 1e3:8.2f} ms/step  {100 * (median / base - 1):+6.1f} %")


if __name__ == "__main__":
    main()
