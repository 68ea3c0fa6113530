import csv
from types import SimpleNamespace

import pytest
import torch

from litsft.callbacks.throughput import ThroughputCallback, batch_counts
from litsft.cli import cli_main
from litsft.data.collate import SFTCollator
from litsft.data.packing import PackedCollator
from tests.helpers import tiny_model_args

# Two rows of 3 and 5 tokens; the first has 1 learned target, the second 2 (labels are not shifted).
ROWS = [
    {"input_ids": [5, 6, 7], "prompt_len": 2},
    {"input_ids": [1, 2, 3, 4, 9], "prompt_len": 3},
]


@pytest.mark.parametrize("collate", [SFTCollator(0), PackedCollator(0, capacity=16)], ids=["padded", "packed"])
def test_counts_are_those_of_the_actual_tokens(collate):
    counts, slots = batch_counts(collate(ROWS), gather_head=True)
    # learned 1 + 2; real 3 + 5; causal pairs 3*4/2 + 5*6/2 (packing adds none across rows); head at learned only
    assert counts.tolist() == [3, 8, 21, 3]
    assert slots == (10 if isinstance(collate, SFTCollator) else 8)
    assert batch_counts(collate(ROWS), gather_head=False)[0].tolist()[3] == 8  # full head: every real token


def test_counting_a_batch_never_reads_device_values(monkeypatch):
    """Between two logs the callback only adds on the device: no .item(), .tolist(), .cpu(), bool() or int()."""
    callback = ThroughputCallback(log_every_n_steps=10)
    module = SimpleNamespace(device=torch.device("cpu"), hf_config=None, gather_head=True, adapter_params=0)
    trainer = SimpleNamespace(
        global_step=0, log_every_n_steps=50, loggers=[], precision="32-true", world_size=1,
        strategy=SimpleNamespace(root_device=torch.device("cpu"), reduce=lambda t, reduce_op=None: t),
    )  # fmt: skip
    callback.on_train_start(trainer, module)
    batch = SFTCollator(0)(ROWS)

    def forbidden(*args, **kwargs):
        raise AssertionError("host-device sync in the per-step path")

    for name in ("item", "tolist", "cpu", "__bool__", "__int__", "__float__", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    for step in range(1, 10):  # optimizer steps 1..9: no log due before step 10
        callback.on_train_batch_start(trainer, module, batch, step)
        trainer.global_step = step
        callback.on_train_batch_end(trainer, module, None, batch, step)
    monkeypatch.undo()
    callback.on_train_batch_start(trainer, module, batch, 10)
    trainer.global_step = 10
    callback.on_train_batch_end(trainer, module, None, batch, 10)  # the log: one read of the counts
    assert callback.last_metrics["train/tokens_per_sec"] > 0
    assert callback.last_metrics["train/padding_share"] == pytest.approx(2 / 10)


@pytest.mark.integration
@pytest.mark.parametrize("packing", [False, True], ids=["grouped", "packed"])
def test_fit_logs_throughput_and_counts_every_learned_token(in_repo, tmp_path, alpaca_file, packing):
    args = tiny_model_args(tmp_path, alpaca_file, "--trainer.max_epochs", "1", "--export.enabled", "false")
    args += ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(tmp_path)]
    args += ["--throughput.log_every_n_steps", "2", "--throughput.peak_flops", "1e12"]
    args += ["--trainer.log_every_n_steps", "2"]  # 4 batches: Lightning warns about an interval of 5
    args += ["--data.packing", str(packing).lower(), "--data.max_seq_length", "128"]
    cli = cli_main(["fit", *args])
    callback = next(c for c in cli.trainer.callbacks if isinstance(c, ThroughputCallback))
    rows = cli.datamodule.train_rows
    summary = callback.summary
    # every learned token of the epoch was counted once, and every real token
    assert summary["supervised_tokens"] == sum(rows["num_labels"])
    assert summary["total_tokens"] == sum(len(x) for x in rows["input_ids"])
    assert 0 < summary["train/mfu"] < 1 and summary["train/tokens_per_sec"] > 0
    with open(next(tmp_path.rglob("metrics.csv"))) as f:
        logged = [r for r in csv.DictReader(f) if r.get("train/tokens_per_sec")]
    assert logged and all(0 <= float(r["train/padding_share"]) < 1 for r in logged)
    assert {"train/tokens_per_sec_total", "train/mfu"} <= set(logged[0])


@pytest.mark.integration
def test_no_mfu_without_a_known_peak(in_repo, tmp_path, alpaca_file, rank_zero_log):
    args = tiny_model_args(tmp_path, alpaca_file, "--trainer.max_steps", "2", "--export.enabled", "false")
    cli = cli_main(["fit", *args])
    callback = next(c for c in cli.trainer.callbacks if isinstance(c, ThroughputCallback))
    assert "train/mfu" not in callback.summary and "train/tokens_per_sec" in callback.summary
    assert "train/mfu is not logged: no peak FLOP/s known for 'cpu'" in rank_zero_log.text


@pytest.mark.integration
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("packing", ["false", "true"])
def test_mfu_on_a_gpu_in_bf16(in_repo, tmp_path, alpaca_file, packing):
    from litsft.model.flops import compute_dtype, peak_flops

    args = tiny_model_args(tmp_path, alpaca_file, "--trainer.max_steps", "4", "--export.enabled", "false")
    args += ["--trainer.accelerator", "gpu", "--trainer.precision", "bf16-mixed", "--data.packing", packing]
    cli = cli_main(["fit", *args])
    summary = next(c for c in cli.trainer.callbacks if isinstance(c, ThroughputCallback)).summary
    assert summary["supervised_tokens"] > 0
    if peak_flops(torch.cuda.get_device_name(), compute_dtype("bf16-mixed", False)) is not None:
        assert 0 < summary["train/mfu"] < 1
