"""A NaN or infinite loss never reaches the weights: the run stops naming the step and its batches, with a
checkpoint from before the bad update, or (when asked) skips the step and counts it."""

import math
import re

import pytest
import torch

import litsft.model.module
from litsft.data.tokenize_alpaca import tokenize_batch
from litsft.prompts import get_template
from tests.helpers import LEAN_ARGS, cli_one_thread, csv_logger_args, logged_metrics, tiny_model_args

pytestmark = pytest.mark.integration  # every test here runs the CLI or a Trainer (tests/tiers.py)


class BadLoss:
    """Wraps the module's loss: training calls listed in `bad` get a non-finite loss (`kind`); every training
    call first records the weights (the state after all earlier updates) and the batch."""

    def __init__(self, bad: set[int] | range, kind: str = "nan") -> None:
        self.real = litsft.model.module.masked_ce_sum
        self.bad, self.kind, self.calls = bad, kind, 0
        self.weights: dict[int, dict[str, torch.Tensor]] = {}
        self.input_ids: dict[int, torch.Tensor] = {}

    def __call__(self, model, input_ids, *args, **kwargs):
        loss_sum, n = self.real(model, input_ids, *args, **kwargs)
        if not model.training:
            return loss_sum, n
        self.calls += 1
        self.weights[self.calls] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.input_ids[self.calls] = input_ids.clone()
        if self.calls in self.bad:
            if self.kind == "nan":
                loss_sum = loss_sum * math.nan
            elif self.kind == "inf":
                loss_sum = loss_sum * math.inf
            else:  # a finite loss whose gradient overflows, as in a half-precision backward
                loss_sum.register_hook(lambda grad: grad * math.inf)
        return loss_sum, n


@pytest.fixture
def bad_loss(monkeypatch):
    def install(bad, kind="nan") -> BadLoss:
        wrapper = BadLoss(bad, kind)
        monkeypatch.setattr(litsft.model.module, "masked_ce_sum", wrapper)
        return wrapper

    return install


def args(tmp_path, data, *extra) -> list[str]:
    return ["fit", *tiny_model_args(tmp_path, data), *LEAN_ARGS, "--trainer.max_steps", "6", *extra]


def model_weights(checkpoint) -> dict[str, torch.Tensor]:
    state = torch.load(checkpoint, weights_only=True, map_location="cpu")["state_dict"]
    return {k.removeprefix("model."): v for k, v in state.items()}


@pytest.mark.parametrize("kind", ["nan", "inf", "gradient"])
def test_a_non_finite_step_stops_the_run_with_the_weights_from_before_it(
    in_repo, tmp_path, alpaca_file, rows, tiny_tokenizer, bad_loss, capsys, kind
):
    injected = bad_loss({3}, kind)
    with pytest.raises(SystemExit) as exit_:
        cli_one_thread(args(tmp_path, alpaca_file))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    message = err[err.index("litsft: error:") :]
    assert "Traceback" not in err
    what = {"nan": "loss nan", "inf": "loss (inf|nan)", "gradient": r"loss \d+\.\d+, gradient norm (inf|nan)"}[kind]
    assert re.search(rf"non-finite training {what}.* at step 3 \(epoch 0, micro-batch 2 of 8\)", message), message
    assert "The update was not applied" in message and "--nonfinite.action skip" in message
    assert injected.calls == 3  # stopped right after the bad step

    checkpoint = tmp_path / "run" / "checkpoints" / "nonfinite-step3.ckpt"
    assert f"--ckpt_path {checkpoint}" in message
    saved = model_weights(checkpoint)
    assert all(torch.isfinite(w).all() for w in saved.values())
    # The last state whose loss was finite: with a non-finite loss, the weights step 3 started from gave it, so
    # those step 2 started from (whose loss was finite); with only the gradient overflowing, step 3's own.
    kept = 3 if kind == "gradient" else 2
    before = injected.weights[kept]
    assert all(torch.equal(saved[k], before[k]) for k in before)
    if kind != "gradient":
        assert re.search(r"the weights after step 1 \(their loss at step 2 was \d+\.\d+\)", message), message

    # The source rows it names are the rows of that batch (as the data file numbers them).
    named = [int(r) for r in re.search(r"source rows ([\d, ]+) of", message).group(1).split(", ")]
    template = get_template("alpaca")
    batch = {k: [rows[r].get(k, "") for r in named] for k in ("instruction", "input", "output")}
    expected = tokenize_batch(batch, tiny_tokenizer, template, 256)["input_ids"]
    pad = tiny_tokenizer.pad_token_id
    for ids in injected.input_ids[3]:  # each trained row is one named row, right-padded
        match = [e for e in expected if ids[: len(e)].tolist() == e and bool((ids[len(e) :] == pad).all())]
        assert match, "a trained row is not among the named rows"
        expected.remove(match[0])
    assert not expected


def test_skip_leaves_the_weights_as_they_were_counts_and_goes_on(in_repo, tmp_path, alpaca_file, bad_loss):
    injected = bad_loss({3})
    with pytest.warns(UserWarning, match=r"at step 3 .*the update was skipped \(1 of at most 10"):
        cli = cli_one_thread(args(tmp_path, alpaca_file, "--nonfinite.action", "skip", *csv_logger_args(tmp_path)))
    assert cli.trainer.global_step == 6 and injected.calls == 6
    assert all(torch.equal(injected.weights[4][k], injected.weights[3][k]) for k in injected.weights[3])
    assert not all(torch.equal(injected.weights[3][k], injected.weights[2][k]) for k in injected.weights[2])
    assert all(torch.isfinite(p).all() for p in cli.model.parameters())
    skipped = logged_metrics(tmp_path, "train/skipped_steps")  # steps skipped so far, from the skip on
    assert min(skipped) == 2 and set(skipped.values()) == {1.0}


def test_skip_stops_once_more_steps_than_allowed_were_skipped(in_repo, tmp_path, alpaca_file, bad_loss, capsys):
    injected = bad_loss(range(3, 100))  # diverged for good from step 3 on
    with pytest.raises(SystemExit) as exit_:
        cli_one_thread(args(tmp_path, alpaca_file, "--nonfinite.action", "skip", "--nonfinite.max_skips", "2"))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "at step 5 " in err and "more than --nonfinite.max_skips=2 steps were skipped" in err
    saved = model_weights(tmp_path / "run" / "checkpoints" / "nonfinite-step5.ckpt")
    assert all(torch.equal(saved[k], injected.weights[3][k]) for k in saved)  # no update since step 2
