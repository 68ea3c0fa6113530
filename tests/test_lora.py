"""LoRA (`--model.lora`): settings, targets found from the model, exact step 0, frozen base, adapter-only
checkpoints, FLOPs, export merged and as an adapter, and every path training takes (fused head, gradient
checkpointing, compile, DDP, FSDP2, resume, NaN guard)."""

import math
import os
import subprocess
import sys

import pytest
import torch

from litsft.cli import cli_main
from litsft.errors import LitSFTError
from litsft.model.flops import ModelShape, training_flops
from litsft.model.lora import LoraSettings, default_target_modules
from litsft.model.module import SFTModule
from tests.helpers import (
    LEAN_ARGS,
    REPO,
    SMOKE_MODEL,
    SGDModule,
    cli_one_thread,
    csv_logger_args,
    cwd,
    lean_trainer,
    logged_metrics,
    save_pretrained_tiny_gpt2,
    tiny_datamodule,
    tiny_model_args,
    tiny_module,
    token_batch,
    write_rows,
)

pytest.importorskip("peft")  # the `lora` extra; litsft itself imports it only when LoRA is on


def adapter_names(module) -> list[str]:
    return [n for n, p in module.model.named_parameters() if p.requires_grad]


# -- settings ------------------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_cli_and_yaml_take_nested_settings(in_repo, capsys, tmp_path):
    import yaml

    cfg_file = tmp_path / "lora.yaml"
    cfg_file.write_text("model:\n  lora:\n    r: 4\n    target_modules: [c_attn]\n")
    for flags, expected in (
        (["--model.lora.r", "8"], {"r": 8, "alpha": None, "dropout": 0.05, "target_modules": None}),
        (["-c", str(cfg_file), "--model.lora.alpha", "32"], {"r": 4, "alpha": 32.0, "dropout": 0.05,
                                                             "target_modules": ["c_attn"]}),
        (["-c", str(cfg_file), "--model.lora", "null"], None),
        ([], None),
    ):  # fmt: skip
        with pytest.raises(SystemExit):
            cli_main(["fit", "-c", "configs/smoke.yaml", *flags, "--print_config"])
        assert yaml.safe_load(capsys.readouterr().out)["model"]["lora"] == expected, flags


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (LoraSettings(r=-1), "--model.lora.r must be an integer >= 0"),
        (LoraSettings(alpha=0.0), "--model.lora.alpha must be a positive number"),
        (LoraSettings(dropout=1.0), r"--model.lora.dropout must be in \[0, 1\)"),
        (LoraSettings(target_modules=[]), "--model.lora.target_modules is empty"),
    ],
)
def test_bad_settings_are_one_clear_message(settings, message):
    with pytest.raises(LitSFTError, match=message):
        SFTModule(model_name_or_path=str(SMOKE_MODEL), random_init=True, lora=settings)


def test_rank_zero_is_full_fine_tuning():
    module = tiny_module(lora=LoraSettings(r=0))
    assert module.lora is None and module.hparams.lora is None
    assert all(p.requires_grad for p in module.model.parameters())


@pytest.mark.integration
def test_missing_peft_names_the_extra(monkeypatch, in_repo, tmp_path, capsys, alpaca_file):
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` now raises ImportError, as when not installed
    with pytest.raises(LitSFTError, match=r'pip install -e "\.\[lora\]"'):
        SFTModule(model_name_or_path=str(SMOKE_MODEL), random_init=True, lora=LoraSettings())
    with pytest.raises(SystemExit) as exit_:
        cli_main(["fit", *tiny_model_args(tmp_path, alpaca_file), "--model.lora.r", "8"])
    assert exit_.value.code == 2
    assert 'pip install -e ".[lora]"' in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.integration
def test_adapter_export_without_lora_is_refused(in_repo, tmp_path, capsys, alpaca_file):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["fit", *tiny_model_args(tmp_path, alpaca_file), *LEAN_ARGS[:4], "--export.lora", "adapter"])
    assert exit_.value.code == 2
    assert "--export.lora adapter needs --model.lora" in capsys.readouterr().err


# -- which modules -------------------------------------------------------------------------------------------------


def small_model(family: str):
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, MixtralConfig, Qwen2Config

    common = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                  num_hidden_layers=2, vocab_size=128)  # fmt: skip
    config = {
        "gpt2": lambda: GPT2Config(n_embd=32, n_head=4, n_layer=2, vocab_size=128),
        "llama": lambda: LlamaConfig(**common),
        "qwen2": lambda: Qwen2Config(**common),
        "mixtral": lambda: MixtralConfig(**common, num_local_experts=4, num_experts_per_tok=2),
    }[family]()
    return AutoModelForCausalLM.from_config(config)


ALL_LLAMA = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


@pytest.mark.parametrize(
    ("family", "expected"),
    [
        ("gpt2", ["c_attn", "c_fc", "c_proj"]),  # Conv1D projections
        ("llama", ALL_LLAMA),
        ("qwen2", ALL_LLAMA),
        ("mixtral", ["k_proj", "o_proj", "q_proj", "v_proj"]),  # the router `gate` is no projection
    ],
)
def test_default_targets_are_the_block_projections_of_each_family(family, expected):
    from litsft.model.lora import apply_lora

    model = small_model(family)
    assert default_target_modules(model) == expected
    peft_model = apply_lora(model, LoraSettings(r=2))
    adapted = {n.removesuffix(".lora_A") for n, _ in peft_model.named_modules() if n.endswith(".lora_A")}
    assert adapted and all(any(n.endswith("." + t) for t in expected) for n in adapted)
    assert not any(p.requires_grad for n, p in peft_model.named_parameters() if "lora_" not in n)
    head, embeddings = peft_model.get_output_embeddings(), peft_model.get_input_embeddings()
    assert type(head) is torch.nn.Linear and type(embeddings) is torch.nn.Embedding  # never adapted


@pytest.mark.parametrize(
    ("targets", "message"),
    [(["q_proj"], "no module of GPT2LMHeadModel is named 'q_proj'. Its projections are: c_attn, c_fc, c_proj"),
     (["lm_head"], "'lm_head' is an embedding or the LM head"),
     (["attn"], "is a GPT2Attention, not a Linear/Conv1D projection")],
)  # fmt: skip
def test_bad_targets_are_refused(targets, message):
    with pytest.raises(LitSFTError, match=message):
        tiny_module(lora=LoraSettings(r=2, target_modules=targets))


def test_explicit_targets_adapt_only_those():
    module = tiny_module(lora=LoraSettings(r=2, target_modules=["c_attn"]))
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in adapter_names(module)} == {"c_attn"}


# -- exactness and what trains ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("gather_head", [True, False])
def test_step_zero_loss_equals_the_base_model(gather_head):
    """B starts at zero: the LoRA model computes exactly the base model (same seed -> same base weights)."""
    base, lora = tiny_module(gather_head=gather_head), tiny_module(lora=LoraSettings(r=8), gather_head=gather_head)
    for module in (base, lora):
        module.model.train()  # LoRA dropout is active; B A dropout(x) is still exactly 0
    b = token_batch()
    assert torch.equal(lora._loss_sum(b)[0], base._loss_sum(b)[0])


def test_gradients_reach_the_adapters_only_through_every_head_path():
    grads = {}
    for gather in (True, False):
        module = tiny_module(lora=LoraSettings(r=4), gather_head=gather)
        with torch.no_grad():  # non-zero B, so A gets a gradient too
            for name, p in module.model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.02)
        loss, _ = module._loss_sum(token_batch())
        loss.backward()
        grads[gather] = {n: p.grad for n, p in module.model.named_parameters() if p.grad is not None}
        assert set(grads[gather]) == set(adapter_names(module))  # frozen head, embeddings, base: no gradient
    for name in grads[True]:  # atol 1e-6: the fused head sums in another order (see tests/test_module.py)
        torch.testing.assert_close(grads[True][name], grads[False][name], rtol=1e-5, atol=1e-6)


def test_gradient_checkpointing_gives_the_same_adapter_gradients():
    """Frozen embeddings: checkpointed blocks still get gradients into the adapters (peft makes the embeddings'
    output require grad)."""
    results = []
    for checkpointing in (False, True):
        module = tiny_module(lora=LoraSettings(r=4), gradient_checkpointing=checkpointing)
        with torch.no_grad():
            for name, p in module.model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.02, generator=torch.Generator().manual_seed(len(name)))
        module.model.train()
        loss, _ = module._loss_sum(token_batch())
        loss.backward()
        results.append({n: p.grad.clone() for n, p in module.model.named_parameters() if p.grad is not None})
    assert results[0].keys() == results[1].keys() and results[0]
    for name in results[0]:
        assert results[0][name].abs().sum() > 0, name
        torch.testing.assert_close(results[1][name], results[0][name], rtol=1e-5, atol=1e-7)


@pytest.mark.slow  # compiling on a CPU takes about 30 s
def test_compiled_lora_equals_eager():
    plain, compiled = (
        tiny_module(lora=LoraSettings(r=4, dropout=0.0)),
        tiny_module(lora=LoraSettings(r=4, dropout=0.0), torch_compile=True),
    )
    with torch.no_grad():
        for (name, p), q in zip(plain.model.named_parameters(), compiled.model.parameters(), strict=True):
            if "lora_B" in name:
                p.normal_(0, 0.02)
            q.copy_(p)
    for width in (0, 4):
        losses = []
        for module in (plain, compiled):
            module.model.zero_grad()
            loss, _ = module._loss_sum(token_batch(width))
            loss.backward()
            losses.append(loss)
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
        for (name, p), q in zip(plain.model.named_parameters(), compiled.model.parameters(), strict=True):
            if p.requires_grad:
                torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)


# -- FLOPs -------------------------------------------------------------------------------------------------------------


def test_flops_count_no_weight_gradient_for_frozen_weights():
    module = tiny_module(lora=LoraSettings(r=4))
    shape = ModelShape.from_config(module.hf_config)
    # tiny GPT-2: d 64, 2 layers; adapters on c_attn (64->192), attn c_proj (64->64), c_fc (64->256), mlp c_proj
    # (256->64): r * (in + out) each = 4 * (256 + 128 + 320 + 320) = 4,096 per layer, 8,192 in all
    assert module.adapter_params == 8_192
    lora = shape.with_adapters(module.adapter_params)
    # 8 tokens, 21 causal pairs, head at 3 positions (tests/test_flops.py's hand count of the base terms)
    dense, attention, head = 8 * 196_608, 21 * 512, 3 * 131_072
    adapters = 8 * 2 * 8_192
    expected = 2 * (dense + head) + 3 * (attention + adapters)  # frozen: forward + input gradient
    assert training_flops(lora, tokens=8, attention_pairs=21, head_tokens=3) == expected
    assert expected < training_flops(shape, tokens=8, attention_pairs=21, head_tokens=3)  # full fine-tuning: 3x


@pytest.mark.integration
def test_throughput_callback_uses_the_lora_count(in_repo, tmp_path, alpaca_file):
    from litsft.callbacks.throughput import ThroughputCallback

    cli = cli_main(["fit", *tiny_model_args(tmp_path, alpaca_file), "--model.lora.r", "4", "--trainer.max_steps",
                    "3", "--samples.enabled", "false", "--export.enabled", "false"])  # fmt: skip
    s = next(c for c in cli.trainer.callbacks if isinstance(c, ThroughputCallback)).summary
    shape = ModelShape.from_config(cli.model.hf_config).with_adapters(cli.model.adapter_params)
    assert s["flops"] == training_flops(shape, s["total_tokens"], s["attention_pairs"], s["head_tokens"]) > 0


# -- a LoRA run on a pretrained base, as users make it ------------------------------------------------------------


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory):
    """A "pretrained" tiny GPT-2 folder (random weights, saved with save_pretrained; loads in eval mode), with the
    smoke model's 256 positions."""
    return save_pretrained_tiny_gpt2(tmp_path_factory.mktemp("base") / "tiny-gpt2", seed=1, n_positions=256)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, base_folder):
    from litsft.smoke_assets import synthetic_rows

    root = tmp_path_factory.mktemp("lora-run")
    data = write_rows(root / "rows.json", synthetic_rows(48, seed=2))
    with cwd(REPO):
        cli = cli_one_thread(
            ["fit", *tiny_model_args(root, data), *csv_logger_args(root), "--model.model_name_or_path",
             str(base_folder), "--model.random_init", "false", "--model.lora.r", "4", "--samples.enabled", "false",
             "--trainer.max_epochs", "2", "--model.learning_rate", "1e-2", "--export.from_best", "false"]
        )  # fmt: skip
    return cli, root, data


@pytest.mark.integration
def test_only_the_adapters_changed_and_the_optimizer_holds_only_them(lora_run, base_folder):
    from transformers import AutoModelForCausalLM

    cli, _, _ = lora_run
    base = AutoModelForCausalLM.from_pretrained(str(base_folder)).state_dict()
    trained = cli.model.model.get_base_model().state_dict()
    moved = 0
    for name, value in trained.items():
        if "lora_" in name:
            moved += "lora_B" in name and bool(value.abs().sum() > 0)
        else:
            assert torch.equal(value, base[name.replace(".base_layer", "")]), name  # the base is untouched
    assert moved == 8  # every B left zero: all 8 adapted modules trained
    optimizer = cli.trainer.optimizers[0]
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in cli.model.model.parameters() if p.requires_grad}


@pytest.mark.integration
def test_checkpoint_holds_the_adapters_and_their_optimizer_state_only(lora_run):
    cli, root, _ = lora_run
    last = next(root.rglob("last.ckpt"))
    checkpoint = torch.load(last, weights_only=True, map_location="cpu")
    assert set(checkpoint["state_dict"]) == cli.model.adapter_state_keys
    stored = sum(v.numel() for v in checkpoint["state_dict"].values())
    assert stored == cli.model.adapter_params == 8_192  # r 4
    moments = checkpoint["optimizer_states"][0]["state"]
    assert len(moments) == len(checkpoint["state_dict"])
    assert sum(s["exp_avg"].numel() + s["exp_avg_sq"].numel() for s in moments.values()) == 2 * stored
    # file: the adapters, two AdamW moments and the base fingerprint (a few KB), versus the full model's 190K weights
    full_bytes = 3 * 4 * sum(p.numel() for p in cli.model.model.parameters() if not p.requires_grad)
    assert last.stat().st_size < 4 * 3 * stored + 60_000 < full_bytes / 10
    assert checkpoint["hyper_parameters"]["lora"] == {"r": 4, "alpha": None, "dropout": 0.05, "target_modules": None}


@pytest.mark.integration
def test_validate_from_an_adapter_checkpoint(lora_run, monkeypatch):
    cli, root, data = lora_run
    monkeypatch.chdir(REPO)
    best = cli.trainer.checkpoint_callback.best_model_path
    expected = min(logged_metrics(root, "val/loss").values())  # the best checkpoint's val/loss, as logged
    validated = cli_main(["validate", *tiny_model_args(root / "validate", data), "--ckpt_path", best,
                          "--samples.enabled", "false"])  # fmt: skip
    assert validated.model.lora is not None  # the settings came back from the checkpoint
    assert float(validated.trainer.callback_metrics["val/loss"]) == pytest.approx(expected, rel=1e-6)


@pytest.mark.integration
def test_an_adapter_on_other_base_weights_is_refused(lora_run, tmp_path, monkeypatch, capsys, base_folder):
    import shutil

    from transformers import AutoModelForCausalLM

    cli, root, data = lora_run
    monkeypatch.chdir(REPO)
    last = next(root.rglob("last.ckpt"))
    other = tmp_path / "changed"
    shutil.copytree(base_folder, other)
    checkpoint = torch.load(last, weights_only=True, map_location="cpu")
    checkpoint["hyper_parameters"]["model_name_or_path"] = str(other)  # as if the user's base folder had changed
    moved = tmp_path / "moved.ckpt"
    torch.save(checkpoint, moved)
    torch.manual_seed(7)
    AutoModelForCausalLM.from_config(cli.model.hf_config).save_pretrained(other)
    with pytest.raises(SystemExit) as exit_:
        cli_main(["validate", *tiny_model_args(tmp_path, data), "--ckpt_path", str(moved), "--samples.enabled",
                  "false"])  # fmt: skip
    assert exit_.value.code == 2
    assert "trained on other base weights" in capsys.readouterr().err


def test_an_adapter_for_other_modules_is_refused():
    module = tiny_module(lora=LoraSettings(r=4))
    other = tiny_module(lora=LoraSettings(r=4, target_modules=["c_attn"]))
    adapters = {k: v for k, v in other.state_dict().items() if k in other.adapter_state_keys}
    with pytest.raises(LitSFTError, match="lacks 12 adapter tensors"):
        module.load_state_dict(adapters)
    full = tiny_module()
    with pytest.raises(LitSFTError, match="other --model.lora settings"):
        module.load_state_dict(full.state_dict())


@pytest.mark.integration
def test_merged_export_equals_base_plus_adapter_and_pipeline_generates(lora_run, base_folder, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, pipeline

    from litsft.callbacks.export import export_model
    from litsft.prompts import PromptTemplate

    cli, root, _ = lora_run
    merged_dir, adapter_dir = root / "run" / "export", tmp_path / "adapter"
    export_model(cli.model, cli.datamodule, adapter_dir, lora="adapter")
    assert (adapter_dir / "adapter_config.json").is_file() and (adapter_dir / "tokenizer.json").is_file()
    assert not (adapter_dir / "model.safetensors").exists()  # the adapters alone
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir))
    assert not any("lora" in k or "base_layer" in k for k in merged.state_dict())  # a plain model
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base_folder)), str(adapter_dir))
    ids = torch.randint(0, merged.config.vocab_size, (3, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = with_adapter(input_ids=ids).logits
        cli.model.model.eval()
        assert torch.allclose(cli.model.model(input_ids=ids).logits, reference, atol=1e-6)  # the adapter round-trips
        torch.testing.assert_close(merged(input_ids=ids).logits, reference, rtol=0, atol=1e-5)
        base_logits = AutoModelForCausalLM.from_pretrained(str(base_folder))(input_ids=ids).logits
    assert (reference - base_logits).abs().max() > 1e-3  # the adapters changed the model: equality is not trivial
    template = PromptTemplate.load(merged_dir)
    prompt = template.render("What is the capital of France?")
    out = pipeline("text-generation", model=str(merged_dir))(prompt, max_new_tokens=8, do_sample=False)
    assert out[0]["generated_text"].startswith(prompt)
    assert PromptTemplate.load(adapter_dir).name == template.name


# -- resume, NaN guard, scale-out -----------------------------------------------------------------------------------


@pytest.mark.integration
def test_resume_continues_the_uninterrupted_curve(in_repo, tmp_path, alpaca_file):
    """Adapters, their AdamW state and the RNG (LoRA dropout on) restore exactly: every later step's loss equals
    the uninterrupted run's."""

    def run(root, *extra):
        return cli_one_thread(
            ["fit", *tiny_model_args(root, alpaca_file), *LEAN_ARGS, *csv_logger_args(root), "--model.lora.r", "4",
             "--model.lora.dropout", "0.2", "--trainer.max_steps", "8", "--trainer.val_check_interval", "4",
             *extra]
        )  # fmt: skip

    reference = tmp_path / "reference"
    run(reference, "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.dirpath", str(reference / "ck"),
        "--trainer.callbacks.every_n_train_steps", "3", "--trainer.callbacks.save_top_k", "-1")  # fmt: skip
    resumed = tmp_path / "resumed"
    run(resumed, "--ckpt_path", str(reference / "ck" / "epoch=0-step=3.ckpt"))
    ref, got = logged_metrics(reference, "train/loss"), logged_metrics(resumed, "train/loss")
    assert set(got) == {s for s in ref if s >= 3} and len(got) >= 5
    assert got == {s: ref[s] for s in got}  # exactly


@pytest.mark.integration
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model.lora.r", "8"], r"--model.lora.r 4 -> 8 \(the trained adapters\)"),
        (["--model.lora.r", "0"], r"--model.lora.r 4 -> 0 \(the trained adapters\)"),
        (["--model.lora.r", "4", "--model.lora.target_modules", "[c_attn]"], r"--model.lora.target_modules null -> "),
    ],
    ids=["rank", "off", "targets"],
)
def test_changed_adapter_settings_on_resume_are_refused(in_repo, tmp_path, alpaca_file, capsys, flags, message):
    """An adapter checkpoint cannot be loaded into adapters of another shape, or into a model without them: the
    resume is refused with the flag named, not a load_state_dict traceback. The adapters' dropout may change."""
    import re

    args = ["fit", *tiny_model_args(tmp_path, alpaca_file), *LEAN_ARGS, "--model.lora.r", "4"]
    cli_one_thread([*args, "--trainer.max_steps", "2"])
    last = next(tmp_path.rglob("last.ckpt"))
    with pytest.raises(SystemExit) as exit_:
        cli_one_thread([*args, *flags, "--trainer.max_steps", "3", "--ckpt_path", str(last)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    text = err[err.index("litsft: error:") :]
    assert re.search(message, text) and "Traceback" not in text, text
    cli_one_thread([*args, "--model.lora.dropout", "0.1", "--trainer.max_steps", "3", "--ckpt_path", str(last)])
    newest = max(tmp_path.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    assert torch.load(newest, weights_only=True)["global_step"] == 3


@pytest.mark.integration
def test_nan_guard_keeps_the_adapters_finite(in_repo, tmp_path, alpaca_file, capsys, monkeypatch):
    import litsft.model.module

    real = litsft.model.module.masked_ce_sum
    calls = []

    def nan_on_third(model, *args, **kwargs):
        loss_sum, n = real(model, *args, **kwargs)
        if model.training:
            calls.append(1)
            if len(calls) == 3:
                loss_sum = loss_sum * math.nan
        return loss_sum, n

    monkeypatch.setattr(litsft.model.module, "masked_ce_sum", nan_on_third)
    with pytest.raises(SystemExit) as exit_:
        cli_main(["fit", *tiny_model_args(tmp_path, alpaca_file), *LEAN_ARGS, "--model.lora.r", "4",
                  "--trainer.max_steps", "6"])  # fmt: skip
    assert exit_.value.code == 2
    assert "non-finite training loss nan" in capsys.readouterr().err
    saved = next(tmp_path.rglob("nonfinite-step3.ckpt"))
    state = torch.load(saved, weights_only=True, map_location="cpu")["state_dict"]
    assert state and all("lora_" in k and torch.isfinite(v).all() for k, v in state.items())


def adapters_after(path, tmp_path, devices: int, batch_size: int, accumulate: int) -> dict:
    # plain SGD: equal weights mean equal gradients
    module = tiny_module(module_class=SGDModule, lora=LoraSettings(r=4, dropout=0.0))
    dm = tiny_datamodule(path, tmp_path / "cache", val_size=5, batch_size=batch_size, group_by_length=False)
    trainer = lean_trainer(
        devices=devices, strategy="ddp_spawn" if devices > 1 else "auto", max_steps=3,
        accumulate_grad_batches=accumulate, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(module, datamodule=dm)
    return {k: v.detach().clone() for k, v in module.model.state_dict().items()}


@pytest.mark.slow  # two training processes, ~12 s on 2 cores
@pytest.mark.integration
def test_ddp_two_ranks_train_the_adapters_like_one_process(alpaca_file, tmp_path):
    one = adapters_after(alpaca_file, tmp_path, devices=1, batch_size=8, accumulate=1)
    two = adapters_after(alpaca_file, tmp_path, devices=2, batch_size=2, accumulate=2)
    trained = [k for k in one if "lora_" in k]
    assert len(trained) == 16 and sum(float(one[k].abs().sum()) > 0 for k in trained if "lora_B" in k) == 8
    for k in one:
        err = (two[k] - one[k]).norm() / one[k].norm().clamp(min=1e-12)
        assert err <= 1e-5, (k, float(err))


def cli_run(tmp_path, name: str, devices: int, *flags) -> tuple:
    run = tmp_path / name
    csv_logger = f"[{{class_path: lightning.pytorch.loggers.CSVLogger, init_args: {{save_dir: {run}}}}}]"
    cmd = [
        sys.executable, "train.py", "fit", "-c", "configs/smoke.yaml", "--model.lora.r", "8",
        "--model.lora.dropout", "0", "--model.config_overrides", "{resid_pdrop: 0, embd_pdrop: 0, attn_pdrop: 0}",
        "--trainer.devices", str(devices), "--trainer.max_steps", "4", "--trainer.default_root_dir", str(run),
        "--trainer.enable_progress_bar", "false", "--trainer.logger", csv_logger, *flags,
    ]  # fmt: skip
    env = dict(os.environ, LITSFT_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run, proc.stdout + proc.stderr


@pytest.mark.integration
@pytest.mark.slow
def test_fsdp2_two_processes_export_what_one_process_exports(tmp_path):
    """Frozen base sharded, adapters trained over 2 ranks (batch 8 x 2 = one process's 16), exported merged from
    the best sharded checkpoint; the merged weights equal a one-process run's."""
    from transformers import AutoModelForCausalLM

    one, _ = cli_run(tmp_path, "one", 1, "--samples.enabled", "false")
    two, log = cli_run(tmp_path, "two", 2, "-c", "configs/strategy/fsdp.yaml", "--data.batch_size", "8")
    assert "litsft samples, step 0 (base)" in log  # sample generation under sharding
    sharded = [p for p in two.rglob("*.ckpt") if p.is_dir()]
    assert sharded  # sharded checkpoints (folders), loaded back for the export from the best one
    a = AutoModelForCausalLM.from_pretrained(str(one / "export")).state_dict()
    b = AutoModelForCausalLM.from_pretrained(str(two / "export")).state_dict()
    assert a.keys() == b.keys() and not any("lora" in k for k in a)
    for k in a:
        err = (b[k] - a[k]).norm() / a[k].norm().clamp(min=1e-12)
        assert err <= 1e-5, (k, float(err))
    base = AutoModelForCausalLM.from_config(AutoModelForCausalLM.from_pretrained(str(one / "export")).config)
    assert any(not torch.equal(a[k], v) for k, v in base.state_dict().items() if k in a)


@pytest.mark.integration
@pytest.mark.slow
def test_smoke_config_with_lora_learns_and_the_merged_export_generates(tmp_path):
    import csv

    from transformers import pipeline

    from litsft.prompts import PromptTemplate

    run = tmp_path / "smoke"
    cmd = [sys.executable, "train.py", "fit", "-c", "configs/smoke.yaml", "--model.lora.r", "8",
           "--trainer.default_root_dir", str(run), "--trainer.logger.init_args.save_dir", str(run),
           "--trainer.enable_progress_bar", "false"]  # fmt: skip
    env = dict(os.environ, LITSFT_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trainable parameters of" in proc.stdout + proc.stderr
    rows = list(csv.DictReader(next(run.rglob("metrics.csv")).open()))
    val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert len(val) >= 4 and val[-1] < val[0] - 0.1, val
    folder = run / "export"
    prompt = PromptTemplate.load(folder).render("Write the word in capital letters.", "river")
    out = pipeline("text-generation", model=str(folder))(prompt, max_new_tokens=8, do_sample=False)
    assert out[0]["generated_text"].startswith(prompt)
