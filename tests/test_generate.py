"""litsft.model.decoding (left-padded batched generation) and `python -m litsft.generate`."""

import pytest
import torch

from litsft.generate import main
from litsft.model.decoding import Deadline, generate_ids
from litsft.prompts import ALPACA
from tests.helpers import SMOKE_MODEL, tiny_gpt2_config


@pytest.fixture(scope="module")
def sharp_model():
    """A tiny random GPT-2 with large weights: well-separated logits, so greedy argmax has no near-ties."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(tiny_gpt2_config(initializer_range=0.5)).eval()


def encode(tokenizer, instructions):
    return [tokenizer(ALPACA.render(i))["input_ids"] for i in instructions]


def test_batched_generation_with_mixed_lengths_equals_one_by_one(sharp_model, tiny_tokenizer):
    instructions = ["Hi.", "Sort these numbers from smallest to largest, please: 5, 3, 9.", "Why is the sky blue?"]
    prompts = encode(tiny_tokenizer, instructions)
    assert len({len(p) for p in prompts}) == 3  # really mixed lengths: the batch needs left padding
    eos, pad = tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id
    batched = generate_ids(sharp_model, prompts, eos, pad, max_new_tokens=16)
    single = [generate_ids(sharp_model, [p], eos, pad, max_new_tokens=16)[0] for p in prompts]
    assert batched == single
    assert any(len(ids) > 3 for ids, _ in batched)  # non-trivial answers were compared
    # in batches of 2 as well (the last batch has one prompt)
    assert generate_ids(sharp_model, prompts, eos, pad, max_new_tokens=16, batch_size=2) == single


def test_seeded_sampling_repeats_and_leaves_the_training_rng_alone(sharp_model, tiny_tokenizer):
    prompts = encode(tiny_tokenizer, ["Name a colour.", "Add 2 and 2."])
    eos, pad = tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id
    torch.manual_seed(7)
    before = torch.get_rng_state()
    kw = {"max_new_tokens": 12, "do_sample": True, "temperature": 1.0, "seed": 3}
    first = generate_ids(sharp_model, prompts, eos, pad, **kw)
    assert torch.equal(torch.get_rng_state(), before)
    assert generate_ids(sharp_model, prompts, eos, pad, **kw) == first
    assert generate_ids(sharp_model, prompts, eos, pad, **(kw | {"seed": 4})) != first


def test_deadline_cuts_generation_and_says_so(sharp_model, tiny_tokenizer):
    prompts = encode(tiny_tokenizer, ["Tell a long story."])
    eos, pad = tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id
    deadline = Deadline(1e-9)
    [(ids, stopped)] = generate_ids(sharp_model, prompts, eos, pad, max_new_tokens=200, deadline=deadline)
    assert deadline.expired and len(ids) <= 1 and not stopped
    relaxed = Deadline(60.0)
    generate_ids(sharp_model, prompts, eos, pad, max_new_tokens=4, deadline=relaxed)
    assert not relaxed.expired


def test_generation_runs_on_the_asked_cpu_threads_and_restores_the_process_setting(sharp_model, tiny_tokenizer):
    """A sample round runs on one CPU thread (`--samples.cpu_threads`); training's thread count comes back after."""
    seen = []
    hook = sharp_model.register_forward_pre_hook(lambda module, args: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        prompts = encode(tiny_tokenizer, ["Hi.", "Why is the sky blue?"])
        eos, pad = tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id
        one = generate_ids(sharp_model, prompts, eos, pad, max_new_tokens=8, num_threads=1)
        assert seen and set(seen) == {1} and torch.get_num_threads() == 2
        seen.clear()
        assert generate_ids(sharp_model, prompts, eos, pad, max_new_tokens=8) == one  # None: the process's threads
        assert set(seen) == {2}
    finally:
        hook.remove()
        torch.set_num_threads(before)


@pytest.mark.integration
def test_generate_compare_prints_base_and_fine_tuned_answers(smoke_wandb_run, tmp_path, capsys):
    _, run = smoke_wandb_run
    export = run / "export"
    records = main(
        ["--model", str(export), "--compare", str(SMOKE_MODEL), "--max_new_tokens", "16", "--width", "100",
         "What is the capital of Peru?", "Add 3 and 4."]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert f"base:       {SMOKE_MODEL}" in out and f"fine-tuned: {export}" in out
    for block in out.split("\n=== ")[1:]:  # each prompt: a base column beside a fine-tuned column
        assert block.splitlines()[1].split(" | ") == ["base".ljust(48), "fine-tuned"]
    assert "holds a config but no weights: using random weights" in out  # the smoke base is a config only
    # the fine-tuned answers are what the export generates on the template-rendered prompt, stopping at EOS
    from transformers import AutoModelForCausalLM

    from litsft.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(str(export))
    model = AutoModelForCausalLM.from_pretrained(str(export))
    prompt = ALPACA.render("What is the capital of Peru?")
    assert records[0]["prompt"] == prompt
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    [(ids, _)] = generate_ids(model, [tokenizer(prompt)["input_ids"]], eos, pad, 16)
    assert records[0]["fine-tuned"] == tokenizer.decode(ids)
    assert records[0]["fine-tuned"].strip() in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "configs", "hi"], "--model: 'configs' is not a Hugging Face model folder"),
        (["--model", str(SMOKE_MODEL), "--compare", "no/such/folder", "hi"], "--compare: model folder 'no/such/"),
        (["--model", str(SMOKE_MODEL)], "no prompt given"),
        (["--model", str(SMOKE_MODEL), "--prompts_file", "missing.txt"], "cannot read prompts file 'missing.txt'"),
    ],
)
def test_bad_input_is_one_clear_message(in_repo, capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("litsft: error:") and message in err and "Traceback" not in err
