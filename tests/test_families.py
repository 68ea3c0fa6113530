"""Model families beyond GPT-2 (Llama, Qwen2, Phi, Gemma) with their tokenizer families, end to end on CPU.

Each model is a random-weight `save_pretrained` folder (as users pass), with a tokenizer unlike GPT-2's
(`tests/families.py`). Checked: the masked loss and its gradients equal Hugging Face's `model(labels=...)` for tied
and untied heads, with and without a head bias; `fit` through the CLI (Alpaca and chat data) logs the validation
loss Hugging Face computes on the exported model; export, `litsft.generate --chat`, FSDP2 blocks.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from litsft.cli import cli_main
from litsft.data.tokenizer import load_tokenizer
from litsft.generate import main as generate_main
from litsft.model.decoding import generate_ids
from litsft.model.loss import masked_ce_sum
from litsft.model.sharding import block_classes
from tests.families import chatml_tokenizer, sentencepiece_tokenizer, write_model
from tests.helpers import REPO, SMOKE_DATA, awkward_conversations, tiny_datamodule, tiny_model_args, write_rows

# family -> (tokenizer family, data format, chat template flag); head: (tied, bias)
FAMILIES = {
    "llama": ("sentencepiece", "alpaca", None),
    "qwen2": ("chatml", "messages", None),  # the tokenizer's own ChatML template
    "phi": ("sentencepiece", "messages", "zephyr"),  # no template of its own: a named one
    "gemma": ("chatml", "alpaca", None),
}
HEADS = {"llama": (False, False), "qwen2": (True, False), "phi": (False, True), "gemma": (True, False)}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    tokenizers = {"sentencepiece": sentencepiece_tokenizer(root / "sp"), "chatml": chatml_tokenizer(root / "chatml")}
    models = {}
    for family, (tok, _, _) in FAMILIES.items():
        models[family] = write_model(root / family, family, load_tokenizer(str(tokenizers[tok])))
    data = {"alpaca": SMOKE_DATA, "messages": write_rows(root / "chat.jsonl", chat_rows(), jsonl=True)}
    return models, data


def chat_rows() -> list[dict]:
    """Learnable multi-turn rows (a system prompt, two turns) plus the awkward ones."""
    rows = []
    for i in range(40):
        a, b = i % 7, i % 5
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": "Answer with a number."},
                    {"role": "user", "content": f"Add {a} and {b}."},
                    {"role": "assistant", "content": f"{a + b}"},
                    {"role": "user", "content": "And doubled?"},
                    {"role": "assistant", "content": f"{2 * (a + b)}"},
                ]
            }
        )
    return rows + [{"messages": m} for m in awkward_conversations(10)]


def datamodule(assets, family, tmp_path, **kw):
    models, data = assets
    _, data_format, template = FAMILIES[family]
    settings = dict(
        tokenizer_name_or_path=str(models[family]), val_size=6, batch_size=6, max_seq_length=256,
        chat_template=template,
    ) | kw  # fmt: skip
    return tiny_datamodule(data[data_format], tmp_path / "cache", **settings)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_masked_loss_and_gradients_equal_hugging_face_for_every_head_kind(assets, family, tmp_path):
    from transformers import AutoModelForCausalLM

    models, _ = assets
    dm = datamodule(assets, family, tmp_path)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert (dm.chat is not None) == (FAMILIES[family][1] == "messages")
    model = AutoModelForCausalLM.from_pretrained(str(models[family]), dtype=torch.float32)
    head = model.get_output_embeddings()
    tied, bias = HEADS[family]
    assert (head.weight is model.get_input_embeddings().weight) == tied and (head.bias is not None) == bias
    if bias:  # a zero-initialised bias would not test anything
        torch.nn.init.normal_(head.bias, std=1.0)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]

    def grads_of(loss):
        model.zero_grad()
        loss.backward()
        return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    reference = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    expected = grads_of(reference)
    n = (labels[:, 1:] != -100).sum()
    # training: the fused chunked head + cross-entropy; the plain full head; evaluation: the gathered head
    for gather, loss_index in ((True, batch["loss_index"]), (False, None)):
        loss_sum, count = masked_ce_sum(model, ids, None, labels, gather_head=gather, loss_index=loss_index)
        assert count == n
        torch.testing.assert_close(loss_sum / n, reference, rtol=1e-5, atol=1e-6)
        got = grads_of(loss_sum / n)
        assert got.keys() == expected.keys()
        for k in expected:
            torch.testing.assert_close(got[k], expected[k], rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        loss_sum, _ = masked_ce_sum(model, ids, mask, labels, gather_head=True)
    torch.testing.assert_close(loss_sum / n, reference.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_fsdp2_finds_each_family_blocks(assets, family):
    from transformers import AutoModelForCausalLM

    models, _ = assets
    model = AutoModelForCausalLM.from_pretrained(str(models[family]))
    classes = tuple(block_classes(model))
    assert {c.__name__ for c in classes} == set(model._no_split_modules)
    assert sum(isinstance(m, classes) for m in model.modules()) == 2  # one FSDP unit per layer


def fit_args(assets, family, tmp_path, *extra):
    models, data = assets
    _, data_format, template = FAMILIES[family]
    flags = ["--model.model_name_or_path", str(models[family]), "--model.random_init", "false"]
    flags += ["--data.chat_template", template] if template else []
    return tiny_model_args(
        tmp_path, data[data_format], *flags, "--data.batch_size", "4", "--trainer.max_steps", "4",
        "--trainer.val_check_interval", "4", "--trainer.max_epochs", "1", "--samples.max_new_tokens", "8", *extra,
    )  # fmt: skip


@pytest.mark.integration
@pytest.mark.parametrize("family", ["llama", "qwen2", "phi"])
def test_each_family_trains_end_to_end_through_the_cli(assets, family, tmp_path, in_repo):
    from transformers import AutoModelForCausalLM

    cli = cli_main(["fit", *fit_args(assets, family, tmp_path)])
    assert cli.trainer.global_step == 4
    export = tmp_path / "run" / "export"
    model = AutoModelForCausalLM.from_pretrained(str(export))
    dm = cli.datamodule
    # the logged val/loss is Hugging Face's own loss of the exported model on the validation rows, token-weighted
    total, tokens = 0.0, 0
    with torch.no_grad():
        for batch in dm.val_dataloader():
            n = int((batch["labels"][:, 1:] != -100).sum())
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
            total, tokens = total + float(out.loss) * n, tokens + n
    assert float(cli.trainer.callback_metrics["val/loss"]) == pytest.approx(total / tokens, rel=1e-5)
    stops = model.generation_config.eos_token_id
    assert (stops if isinstance(stops, list) else [stops]) == dm.stop_token_ids
    if dm.chat is None:
        return
    # chat: the exported tokenizer holds the template trained with; generate --chat renders and stops alike
    tokenizer = load_tokenizer(str(export))
    assert tokenizer.chat_template == dm.chat.format.template
    assert json.loads((export / "litsft_chat.json").read_text())["end_of_turn"] == dm.chat.format.end_of_turn
    records = generate_main(["--model", str(export), "--max_new_tokens", "6", "--system", "Be brief.", "Add 2 and 3."])
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Add 2 and 3."}]
    prompt = tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    assert records[0]["prompt"] == prompt
    ids = tokenizer.apply_chat_template(conv, add_generation_prompt=True, return_dict=False)
    [(new, _)] = generate_ids(model, [ids], dm.stop_token_ids, tokenizer.pad_token_id, 6)
    assert records[0]["fine-tuned"] == tokenizer.decode(new)


@pytest.mark.integration
def test_chat_samples_and_predict_use_the_chat_template(assets, tmp_path, in_repo):
    from litsft.callbacks.samples import SampleGenerationCallback

    cli = cli_main(["fit", *fit_args(assets, "qwen2", tmp_path, "--export.enabled", "false")])
    callback = next(c for c in cli.trainer.callbacks if isinstance(c, SampleGenerationCallback))
    dm = cli.datamodule
    val = next(p for p in callback.prompts if len(p.messages) > 1)  # a validation conversation
    source = [json.loads(line)["messages"] for line in (assets[1]["messages"]).read_text().splitlines()]
    row = next(m for m in source if m[-1]["content"] == val.reference and [tuple(x.values()) for x in m[:-1]] ==
               [tuple(x) for x in val.messages])  # fmt: skip
    expected = dm.tokenizer.apply_chat_template(row[:-1], add_generation_prompt=True, return_dict=False)
    assert callback._prompt_ids[callback.prompts.index(val)] == expected
    seed = callback._prompt_ids[0]  # the seed tutorial's prompt, as a user message
    conv = [{"role": "user", "content": callback.prompts[0].instruction}]
    assert seed == dm.tokenizer.apply_chat_template(conv, add_generation_prompt=True, return_dict=False)
    assert len(callback.columns) >= 2  # base and after training
    # predict answers each validation conversation's last assistant turn, from the same rendered prompt
    first = source[sorted(dm.val_rows["row"][:])[0]]
    last = max(i for i, m in enumerate(first) if m["role"] == "assistant")
    prompt = dm.tokenizer.apply_chat_template(first[:last], add_generation_prompt=True, return_dict=False)
    assert next(iter(dm.predict_dataloader()))["input_ids"][0].tolist() == prompt
    predicted = cli_main(["predict", *fit_args(assets, "qwen2", tmp_path, "--trainer.fast_dev_run", "true")])
    answer = predicted.trainer.predict_loop.predictions[0][0]
    assert answer["prompt"] == dm.tokenizer.decode(prompt) and isinstance(answer["stopped"], bool)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "qwen2", "phi"])
def test_fsdp2_two_processes_train_each_family_and_export(assets, family, tmp_path):
    from transformers import AutoModelForCausalLM

    models, data = assets
    _, data_format, template = FAMILIES[family]
    run = tmp_path / "run"
    cmd = [
        sys.executable, "train.py", "fit", "-c", "configs/smoke.yaml", "-c", "configs/strategy/fsdp.yaml",
        "--trainer.devices", "2", "--trainer.max_steps", "4", "--trainer.max_epochs", "1",
        "--trainer.val_check_interval", "2", "--trainer.default_root_dir", str(run), "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", "--model.model_name_or_path", str(models[family]),
        "--model.random_init", "false", "--data.dataset", str(data[data_format]), "--data.val_size", "8",
        "--data.batch_size", "4", "--samples.max_new_tokens", "4",
        *(["--data.chat_template", template] if template else []),
    ]  # fmt: skip
    env = dict(os.environ, LITSFT_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = AutoModelForCausalLM.from_pretrained(str(run / "export"))
    reference = AutoModelForCausalLM.from_pretrained(str(models[family]))
    moved = max(float((v - reference.state_dict()[k]).abs().max()) for k, v in model.state_dict().items())
    assert moved > 0 and all(torch.isfinite(v).all() for v in model.state_dict().values())
    assert "litsft samples, step 0 (base)" in proc.stdout + proc.stderr


@pytest.mark.integration
def test_the_chat_config_runs_with_local_stand_ins(assets, tmp_path, in_repo):
    """configs/chat-smollm2.yaml as shipped, with a local SmolLM2-like model (Llama, byte-level ChatML tokenizer)
    and local conversations in place of the hub ids."""
    models, data = assets
    folder = write_model(tmp_path / "smollm2-like", "llama", load_tokenizer(str(models["qwen2"])))
    cli = cli_main(
        ["fit", "-c", "configs/chat-smollm2.yaml", "--model.model_name_or_path", str(folder),
         "--data.dataset", str(data["messages"]), "--data.val_size", "6", "--data.max_seq_length", "256",
         "--data.batch_size", "4", "--data.num_workers", "0", "--trainer.accumulate_grad_batches", "1",
         "--trainer.max_steps", "3", "--trainer.val_check_interval", "3", "--trainer.default_root_dir",
         str(tmp_path / "run"), "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
         "--samples.max_new_tokens", "4"]
    )  # fmt: skip
    assert cli.datamodule.chat is not None and cli.datamodule.chat.format.end_of_turn == "<|im_end|>"
    assert cli.trainer.global_step == 3 and (tmp_path / "run" / "export" / "litsft_chat.json").is_file()


def test_generate_chat_flag_for_models_not_trained_here(assets, capsys):
    models, _ = assets
    records = generate_main(["--model", str(models["qwen2"]), "--chat", "--max_new_tokens", "3", "Hi there"])
    tokenizer = load_tokenizer(str(models["qwen2"]))
    conv = [{"role": "user", "content": "Hi there"}]
    assert records[0]["prompt"] == tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    records = generate_main(["--model", str(models["llama"]), "--chat_template", "zephyr", "--max_new_tokens", "3",
                             "Hi there"])  # fmt: skip
    assert records[0]["prompt"] == "<s><|user|>\nHi there</s>\n<|assistant|>\n"
    with pytest.raises(SystemExit) as exit_:
        generate_main(["--model", str(models["llama"]), "--chat", "Hi"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "has no chat template" in err and "--chat_template" in err
