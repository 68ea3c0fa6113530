import pytest
import torch
from lightning.pytorch import Callback

from litsft.model.loss import masked_ce_sum
from litsft.model.module import SFTModule
from tests.helpers import NO_DROPOUT, SMOKE_MODEL, first_step_grads, lean_trainer, tiny_datamodule, tiny_module


@pytest.mark.parametrize("gather_head", [True, False])
def test_loss_equals_hf_loss_on_one_micro_batch(alpaca_file, tmp_path, gather_head):
    module = tiny_module()
    dm = tiny_datamodule(alpaca_file, tmp_path / "cache", val_size=0, group_by_length=False)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    loss_sum, n = masked_ce_sum(
        module.model, batch["input_ids"], batch["attention_mask"], batch["labels"], gather_head=gather_head
    )
    reference = module.model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
    ).loss
    assert n == (batch["labels"][:, 1:] != -100).sum()
    torch.testing.assert_close(loss_sum / n, reference, rtol=1e-5, atol=1e-6)


def test_gathered_head_gives_the_same_gradients(alpaca_file, tmp_path):
    dm = tiny_datamodule(alpaca_file, tmp_path / "cache", val_size=0, group_by_length=False)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    grads = []
    for gather in (True, False):
        module = tiny_module()
        loss, n = masked_ce_sum(module.model, batch["input_ids"], batch["attention_mask"], batch["labels"], gather)
        (loss / n).backward()
        grads.append({k: p.grad.clone() for k, p in module.model.named_parameters()})
    for k in grads[0]:
        # rtol 1e-4: the gathered head's fused chunked loss sums in another order, and each gradient entry is a
        # sum over every learned token, so fp32 rounding reaches a few 1e-5 relative (seen: 3.7e-5 on one entry of
        # 64). A wrong mask or a wrong position shifts whole rows by far more than that.
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-4, atol=1e-6)


@pytest.mark.integration
def test_accumulation_is_token_exact(alpaca_file, tmp_path):
    """Batch 2 x accumulate 4 gives the gradient of batch 8 x 1, although rows have different token counts."""
    big = first_step_grads(alpaca_file, tmp_path, batch_size=8, accumulate=1)
    small = first_step_grads(alpaca_file, tmp_path, batch_size=2, accumulate=4)
    for k in big:
        torch.testing.assert_close(small[k], big[k], rtol=1e-5, atol=1e-7)
    # and a per-micro-batch mean (what naive trainers do) would have differed: the test can fail
    assert len({len(r["output"]) for r in __import__("json").loads(alpaca_file.read_text())[:8]}) > 1


class StepLossReader(Callback):
    """Reads `SFTModule.step_loss` before the module's own `on_before_optimizer_step` (callbacks run first) and at
    every batch end (after it)."""

    def __init__(self):
        self.before_update, self.batch_ends, self.logged = [], [], []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.before_update.append(float(pl_module.step_loss()))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batch_ends.append(float(pl_module.step_loss()))
        self.logged.append(float(trainer.callback_metrics["train/loss"]) if "train/loss" in trainer.callback_metrics
                           else None)  # fmt: skip


@pytest.mark.integration
def test_step_loss_is_the_whole_steps_loss_in_any_hook_order(alpaca_file, tmp_path):
    module = SFTModule(model_name_or_path=str(SMOKE_MODEL), random_init=True, config_overrides=NO_DROPOUT)
    assert module.step_loss() is None  # no training step yet
    reader = StepLossReader()
    trainer = lean_trainer(max_steps=2, accumulate_grad_batches=2, callbacks=[reader], limit_val_batches=0)
    trainer.fit(module, datamodule=tiny_datamodule(alpaca_file, tmp_path / "cache", batch_size=2))
    assert len(reader.before_update) == 2 and len(reader.batch_ends) == 4
    # read before the module logs it and after: the same value, the one logged as train/loss
    assert reader.batch_ends[1] == reader.before_update[0] == reader.logged[1]
    assert reader.batch_ends[3] == reader.before_update[1] == reader.logged[3]
    assert reader.batch_ends[2] != reader.batch_ends[3]  # the next step's first micro-batch starts a new sum


def test_optimizer_groups_and_schedule():
    from litsft.model.optim import param_groups, warmup_cosine

    module = tiny_module(weight_decay=0.1)
    decay, no_decay = param_groups(module.model, 0.1)
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) > 0
    f = warmup_cosine(total_steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert f(0) < f(5) < f(9) <= 1.0
    assert f(10) == pytest.approx(1.0) and f(100) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(10, 100))


def forced_head(module, eos_token_id: int, predict_eos: bool) -> None:
    """Replace the LM head: zero weights, a bias that makes EOS the argmax everywhere, or never the argmax."""
    head = module.model.get_output_embeddings()
    linear = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    with torch.no_grad():
        linear.bias[eos_token_id] = 10.0 if predict_eos else -10.0
    module.model.set_output_embeddings(linear)


@pytest.mark.integration
@pytest.mark.parametrize("gather_head", [True, False])
@pytest.mark.parametrize("predict_eos", [True, False])
def test_eos_acc_is_one_when_eos_is_forced_and_zero_when_it_cannot_be(alpaca_file, tmp_path, gather_head, predict_eos):
    module = tiny_module(gather_head=gather_head)
    dm = tiny_datamodule(alpaca_file, tmp_path / "cache", val_size=12, group_by_length=False)
    forced_head(module, dm.tokenizer.eos_token_id, predict_eos)
    trainer = lean_trainer()
    metrics = trainer.validate(module, datamodule=dm, verbose=False)[0]
    assert metrics["val/eos_acc"] == (1.0 if predict_eos else 0.0)
    assert torch.isfinite(torch.tensor(metrics["val/loss"]))


@pytest.mark.integration
def test_val_loss_is_token_weighted_over_the_whole_set(alpaca_file, tmp_path):
    """Not a mean of batch means: batches with more learned tokens weigh more."""
    module = tiny_module()
    dm = tiny_datamodule(alpaca_file, tmp_path / "cache", val_size=11, group_by_length=False)
    trainer = lean_trainer()
    logged = trainer.validate(module, datamodule=dm)[0]["val/loss"]
    total, tokens, batch_means = 0.0, 0, []
    with torch.no_grad():
        for batch in dm.val_dataloader():
            loss_sum, n = masked_ce_sum(module.model, batch["input_ids"], batch["attention_mask"], batch["labels"])
            total, tokens = total + float(loss_sum), tokens + int(n)
            batch_means.append(float(loss_sum) / int(n))
    assert logged == pytest.approx(total / tokens, rel=1e-6)
    assert abs(sum(batch_means) / len(batch_means) - total / tokens) > 1e-4  # the two differ on this data


# -- train and eval mode, dropout (a pretrained folder loads in eval mode; random_init would hide it) -------------


@pytest.mark.integration
def test_a_pretrained_folder_trains_in_train_mode_and_validates_in_eval_mode(pretrained_model, alpaca_file, tmp_path):
    from transformers import AutoModelForCausalLM

    from tests.probes import ModeProbe, module_modes

    assert module_modes(AutoModelForCausalLM.from_pretrained(str(pretrained_model))) == {False}  # what loading does
    module = SFTModule(model_name_or_path=str(pretrained_model))
    dm = tiny_datamodule(alpaca_file, tmp_path / "cache", val_size=8, group_by_length=False)
    probe = ModeProbe()
    trainer = lean_trainer(max_steps=3, val_check_interval=2, callbacks=[probe], num_sanity_val_steps=2)
    trainer.fit(module, datamodule=dm)
    assert len(probe.train_batches) == 3 and probe.train_batches == [{True}] * 3  # also after the validation at 2
    assert len(probe.val_batches) >= 4 and all(m == {False} for m in probe.val_batches)  # sanity check + step 2
    dropouts = [m for m in module.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and {m.p for m in dropouts} == {0.1}  # the config's dropout, and it is on in training


def test_dropout_flag_sets_every_dropout_probability(pretrained_model):
    for p in (0.0, 0.25):
        module = SFTModule(model_name_or_path=str(pretrained_model), dropout=p)
        module.configure_model()
        config = module.model.config
        assert (config.resid_pdrop, config.embd_pdrop, config.attn_pdrop) == (p, p, p)
        assert {m.p for m in module.model.modules() if isinstance(m, torch.nn.Dropout)} == {p}
    module.model.train()
    batch = torch.randint(0, 1000, (2, 16))
    assert not torch.equal(module(batch).logits, module(batch).logits)  # 0.25 in train mode: two passes differ
    module.model.eval()
    assert torch.equal(module(batch).logits, module(batch).logits)


@pytest.mark.parametrize(
    ("family", "fields"),
    [
        ("GPT2Config", ["attn_pdrop", "embd_pdrop", "resid_pdrop", "summary_first_dropout"]),
        ("LlamaConfig", ["attention_dropout"]),
        ("OPTConfig", ["attention_dropout", "dropout"]),  # not `layerdrop` (skipping layers is not dropout)
        ("GPTNeoXConfig", ["attention_dropout", "classifier_dropout", "hidden_dropout"]),
    ],
)
def test_dropout_names_of_other_families(family, fields):
    import transformers

    from litsft.model.loading import set_dropout

    config = getattr(transformers, family)()
    assert set_dropout(config, 0.05) == fields
    assert all(getattr(config, f) == 0.05 for f in fields)


def test_dropout_flag_errors_name_the_flag(pretrained_model):
    from transformers import PretrainedConfig

    from litsft.errors import LitSFTError
    from litsft.model.loading import set_dropout

    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(LitSFTError, match=r"--model.dropout must be in \[0, 1\)"):
            SFTModule(model_name_or_path=str(pretrained_model), dropout=bad)
    with pytest.raises(LitSFTError, match="--model.dropout: the config of 'x' .* has no dropout field"):
        set_dropout(PretrainedConfig(), 0.1, "x")
