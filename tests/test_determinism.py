"""The same config and seed give the same run on CPU, run after run: every logged loss and the final weights
are equal bit for bit (dropout on, gradient accumulation, two epochs, validation mid-epoch)."""

import pytest
import torch

from tests.helpers import cli_one_thread, cwd, logged_metrics, resume_run_args

pytestmark = pytest.mark.integration  # every test here runs the CLI or a Trainer (tests/tiers.py)


def test_same_config_and_seed_give_the_same_losses_and_weights(tmp_path, resume_data, resume_reference):
    reference_root, reference_train, reference_val = resume_reference
    with cwd():  # the first run, `resume_reference`, is shared with tests/test_resume.py
        cli = cli_one_thread(resume_run_args(tmp_path, resume_data))
    train, val = logged_metrics(tmp_path, "train/loss"), logged_metrics(tmp_path, "val/loss")
    assert train == reference_train and val == reference_val  # exactly, at every step
    assert len(set(train.values())) > len(train) // 2  # a real curve, not a constant
    last = torch.load(reference_root / "by_epoch" / "epoch=1-step=24.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(p, last[k]) for k, p in cli.model.state_dict().items())
