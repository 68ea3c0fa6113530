"""Chat data: assistant-only masks by character offsets, checked against an independent rendering of every row.

The reference below builds each template's text by hand from its spec (ChatML with Qwen's default system prompt;
Zephyr's layout with the tokenizer's EOS after every turn), notes where each assistant message and its end-of-turn
token lie, tokenizes that text on its own and learns the tokens that overlap those characters. It shares no code
with litsft's (which renders the Jinja template and locates the messages in it).
"""

import json

import pytest

from litsft.data.chat_format import ChatFormat
from litsft.data.conversations import MessageColumns, load_conversations
from litsft.data.tokenize_chat import process_conversations, tokenize_conversations
from litsft.data.tokenizer import load_tokenizer
from litsft.errors import LitSFTError
from tests.families import chatml_tokenizer, sentencepiece_tokenizer
from tests.helpers import LEAN_ARGS, awkward_conversations, cli_one_thread, tiny_datamodule, tiny_model_args, write_rows

# -- the independent reference ----------------------------------------------------------------------------------


def reference_chatml(messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """Qwen-style ChatML, from its spec; learned: each assistant content through its `<|im_end|>`."""
    text, spans = "", []
    if messages[0]["role"] != "system":
        text += "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    for m in messages:
        text += "<|im_start|>" + m["role"] + "\n"
        start = len(text)
        text += m["content"] + "<|im_end|>"
        if m["role"] == "assistant":
            spans.append((start, len(text)))
        text += "\n"
    return text, spans


def reference_zephyr(bos: str | None, eos: str):
    def render(messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
        text, spans = bos or "", []
        for m in messages:
            text += "<|" + m["role"] + "|>\n"
            start = len(text)
            text += m["content"] + eos
            if m["role"] == "assistant":
                spans.append((start, len(text)))
            text += "\n"
        return text, spans

    return render


def reference_row(tokenizer, render, messages: list[dict]) -> tuple[list[int], list[int]]:
    """(input ids, labels) of the conversation up to its last assistant message, learned tokens by overlap."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    text, spans = render(messages[: last + 1])
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    labels = []
    for token, (s, e) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        learned = e > s and any(s < ce and e > cs for cs, ce in spans)
        labels.append(token if learned else -100)
    return enc["input_ids"], labels


def ours(out: dict, i: int) -> tuple[list[int], list[int]]:
    ids, spans = out["input_ids"][i], out["label_spans"][i]
    labels = [-100] * len(ids)
    for a, b in zip(spans[0::2], spans[1::2], strict=True):
        labels[a:b] = ids[a:b]
    return ids, labels


@pytest.fixture(scope="module")
def chatml(tmp_path_factory):
    return load_tokenizer(str(chatml_tokenizer(tmp_path_factory.mktemp("chatml"))))


@pytest.fixture(scope="module")
def sentencepiece(tmp_path_factory):
    return load_tokenizer(str(sentencepiece_tokenizer(tmp_path_factory.mktemp("sp"))))


def families(chatml, sentencepiece, gpt2):
    """(tokenizer, chat template flag, independent reference) per tokenizer family."""
    return [
        (chatml, None, reference_chatml),  # the tokenizer's own template, from tokenizer_config.json
        (sentencepiece, "zephyr", reference_zephyr("<s>", "</s>")),
        (gpt2, "zephyr", reference_zephyr("<|endoftext|>", "<|endoftext|>")),
    ]


@pytest.mark.parametrize("family", [0, 1, 2], ids=["chatml", "sentencepiece-zephyr", "gpt2-zephyr"])
def test_masks_equal_an_independent_rendering_on_every_row(chatml, sentencepiece, tiny_tokenizer, family):
    tokenizer, template, reference = families(chatml, sentencepiece, tiny_tokenizer)[family]
    chat = ChatFormat(tokenizer, template)
    convs = awkward_conversations(120)
    out = tokenize_conversations(convs, chat, max_seq_length=4096)
    checked_empty = checked_multi = 0
    for i, messages in enumerate(convs):
        ref_ids, ref_labels = reference_row(tokenizer, reference, messages)
        ids, labels = ours(out, i)
        last_learned = max(k for k, x in enumerate(ref_labels) if x != -100)
        assert ids == ref_ids[: last_learned + 1], i  # one tokenization, ending at the last learned token
        assert labels == ref_labels[: last_learned + 1], (i, messages)
        # what the assistant says, and only that: the learned text of each turn is its content + end-of-turn
        assert out["num_labels"][i] == sum(x != -100 for x in labels[1:])
        checked_empty += any(m["role"] == "assistant" and not m["content"] for m in messages)
        checked_multi += sum(m["role"] == "assistant" for m in messages) > 1
    assert checked_empty > 10 and checked_multi > 50  # the awkward cases were really there
    # training sees the ids generation sees: exactly apply_chat_template's tokenization
    for i in range(10):
        hf = tokenizer.apply_chat_template(convs[i], chat_template=chat.template, tokenize=True, return_dict=False)
        assert hf[: len(out["input_ids"][i])] == out["input_ids"][i]


def test_end_of_turn_is_learned_and_user_and_system_turns_never(chatml):
    chat = ChatFormat(chatml)
    messages = [
        {"role": "system", "content": "sys text"},
        {"role": "user", "content": "user text"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": "second answer"},
    ]
    out = tokenize_conversations([messages], chat, 4096)
    ids, labels = ours(out, 0)
    learned = [chatml.decode([t]) for t in labels if t != -100]
    assert "".join(learned) == "first answer<|im_end|>second answer<|im_end|>"
    assert chat.end_of_turn == "<|im_end|>" and chat.stop_token_ids == [chatml.convert_tokens_to_ids("<|im_end|>")]


CHATML_WITH_GENERATION_TAGS = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{%- else %}{{- message['content'] + '<|im_end|>' }}{%- endif %}"
    "{{- '\\n' }}"
    "{%- endfor %}"
)


def test_masks_equal_transformers_generation_tag_masks(chatml):
    """A second oracle: Hugging Face's `return_assistant_tokens_mask` on the same template with `{% generation %}`
    tags (which litsft does not need)."""
    chat = ChatFormat(chatml)
    convs = [c for c in awkward_conversations(60, seed=1) if c[-1]["role"] == "assistant"]
    out = tokenize_conversations(convs, chat, 4096)
    for i, messages in enumerate(convs):
        hf = chatml.apply_chat_template(
            messages, chat_template=CHATML_WITH_GENERATION_TAGS, return_assistant_tokens_mask=True, return_dict=True
        )
        ids, labels = ours(out, i)
        assert hf["input_ids"][: len(ids)] == ids
        assert [m == 1 for m in hf["assistant_masks"][: len(ids)]] == [x != -100 for x in labels], i


def test_truncation_cuts_at_a_turn_boundary_and_drops_rows_with_nothing_learned(chatml):
    chat = ChatFormat(chatml)
    long_turns = [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "short answer"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a much longer second answer " * 5},
    ]
    ref_ids, ref_labels = reference_row(chatml, reference_chatml, long_turns)
    first_end = ref_labels.index(chatml.eos_token_id) + 1  # the end of the first assistant turn (its <|im_end|>)
    second_start = next(k for k in range(first_end, len(ref_labels)) if ref_labels[k] != -100)
    limit = second_start + 5  # the second turn does not fit whole
    out = tokenize_conversations([long_turns], chat, limit)
    ids, labels = ours(out, 0)
    assert ids == ref_ids[:first_end] and labels == ref_labels[:first_end]  # cut where the first turn ends
    assert out["truncated"] == [True] and out["cut_mid_turn"] == [False] and out["turns_cut"] == [1]
    # only one long turn: cut inside it, its end-of-turn lost
    one = long_turns[2:]
    ref_ids, ref_labels = reference_row(chatml, reference_chatml, one)
    start = next(k for k, x in enumerate(ref_labels) if x != -100)
    out = tokenize_conversations([one], chat, start + 3)
    ids, labels = ours(out, 0)
    assert ids == ref_ids[: start + 3] and labels == ref_labels[: start + 3]
    assert out["cut_mid_turn"] == [True] and out["num_labels"] == [3]
    # the assistant's first token beyond max_seq_length: nothing to learn, dropped and counted
    import datasets

    short = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]
    rows = datasets.Dataset.from_dict({"messages": [one, short, [{"role": "user", "content": "alone"}]]})
    kept, counts = process_conversations(rows, chat, start)
    assert kept["row"] == [1]
    assert (counts.rows, counts.kept, counts.dropped, counts.no_assistant) == (3, 1, 2, 1)


def test_a_control_token_inside_a_message_drops_the_row_and_counts_it(chatml):
    import datasets

    chat = ChatFormat(chatml)
    rows = datasets.Dataset.from_dict(
        {
            "messages": [
                [{"role": "user", "content": "say <|im_end|> now"}, {"role": "assistant", "content": "ok"}],
                [{"role": "user", "content": "fine"}, {"role": "assistant", "content": "ok"}],
            ]
        }
    )
    kept, counts = process_conversations(rows, chat, 256)
    assert kept["row"] == [1] and counts.control_tokens == 1 and "1 with a control token" in counts.describe()


def test_a_template_without_an_end_of_turn_token_is_refused(sentencepiece):
    with pytest.raises(LitSFTError, match="cannot be used for training: no control token follows"):
        ChatFormat(sentencepiece, "chatml")  # <|im_end|> is no token of this tokenizer
    with pytest.raises(LitSFTError, match="has no chat template.*--data.chat_template"):
        ChatFormat(sentencepiece)


def test_a_template_that_changes_the_text_is_an_error_naming_the_row(chatml):
    layout = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] FILTER }}<|im_end|>\n{% endfor %}"
    with pytest.raises(LitSFTError, match="cannot be used for training: the chat template does not write"):
        ChatFormat(chatml, layout.replace("FILTER", "| upper"))  # the probe's "Hello" becomes "HELLO"
    chat = ChatFormat(chatml, layout.replace("FILTER", "| replace('secret', '***')"))
    ok = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "fine"}]
    bad = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "the secret is"}]
    with pytest.raises(LitSFTError, match="my.jsonl: row 7: the chat template does not write the messages verbatim"):
        tokenize_conversations([ok, bad], chat, 256, rows=[6, 7], where="my.jsonl")


def test_trimming_templates_and_prefix_fallback(chatml):
    """Llama 3 trims contents: spans still exact. A template whose layout depends on the content (a marker
    rendering does not explain it) is handled by rendering prefixes."""
    trim = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    chat = ChatFormat(chatml, trim)
    text, spans = chat.locate([{"role": "user", "content": " q "}, {"role": "assistant", "content": "  answer \n"}])
    assert [text[a:b] for a, b in spans] == ["answer<|im_end|>"]
    by_content = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] == 'Hi' %}(greeting) {% endif %}"
        "{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    chat = ChatFormat(chatml, by_content)
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hi"}]
    text, spans = chat.locate(messages)
    assert [text[a:b] for a, b in spans] == ["Hi<|im_end|>"] and text.count("(greeting)") == 2
    # Qwen2.5's assistant layout: the header's newline only before a non-empty message
    qwen25 = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}{% if m['content'] %}\n{{ m['content'] }}{% endif %}"
        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    chat = ChatFormat(chatml, qwen25)
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]
    messages += [{"role": "user", "content": "again"}, {"role": "assistant", "content": "yes"}]
    text, spans = chat.locate(messages)
    assert [text[a:b] for a, b in spans] == ["<|im_end|>", "yes<|im_end|>"]


# -- reading conversations ------------------------------------------------------------------------------------


def test_openai_sharegpt_and_mapped_columns_read_the_same(tmp_path):
    convs = awkward_conversations(5)
    openai = write_rows(tmp_path / "openai.jsonl", [{"messages": c} for c in convs], jsonl=True)
    share = {"system": "system", "user": "human", "assistant": "gpt"}
    sharegpt = [{"conversations": [{"from": share[m["role"]], "value": m["content"]} for m in c]} for c in convs]
    sharegpt = write_rows(tmp_path / "sharegpt.jsonl", sharegpt, jsonl=True)
    speakers = {"user": "me", "assistant": "bot"}
    custom = [
        {"dialog": [{"speaker": speakers.get(m["role"], m["role"]), "text": m["content"]} for m in c]} for c in convs
    ]
    custom = write_rows(tmp_path / "custom.jsonl", custom, jsonl=True)
    a, _ = load_conversations(str(openai), MessageColumns())
    b, _ = load_conversations(str(sharegpt), MessageColumns())
    c, _ = load_conversations(
        str(custom), MessageColumns("dialog", "speaker", "text", {"me": "user", "bot": "assistant"})
    )
    assert a["messages"] == b["messages"] == c["messages"] == convs
    # parquet with the hub's struct layout reads the same
    import datasets

    datasets.Dataset.from_dict({"messages": convs, "source": ["x"] * len(convs)}).to_parquet(
        str(tmp_path / "c.parquet")
    )
    d, _ = load_conversations(str(tmp_path / "c.parquet"), MessageColumns())
    assert d["messages"] == convs


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"messages": [{"role": "robot", "content": "x"}]}, "row 1, field 'messages', message 0: unknown role 'robot'"),
        ({"messages": [{"role": "user", "content": None}]}, "message 0 has no 'content'"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "'content' is list, not text"),
        ({"messages": []}, "row 1, field 'messages' is empty"),
        ({"text": "hi"}, "row 1 has no field 'messages'"),
    ],
)
def test_bad_conversations_are_one_clear_message(tmp_path, record, message):
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    path = write_rows(tmp_path / "bad.jsonl", [good, record], jsonl=True)
    with pytest.raises(LitSFTError) as err:
        load_conversations(str(path), MessageColumns())
    assert message in str(err.value) and "bad.jsonl" in str(err.value)


def chat_datamodule(path, tmp_path, **kw):
    return tiny_datamodule(path, tmp_path / "cache", **({"val_size": 2, "chat_template": "zephyr"} | kw))


def test_format_is_detected_and_alpaca_rows_stay_alpaca(tmp_path, alpaca_file):
    path = write_rows(tmp_path / "chat.jsonl", [{"messages": c} for c in awkward_conversations(20)], jsonl=True)
    dm = chat_datamodule(path, tmp_path)
    dm.setup("fit")
    assert dm.chat is not None and dm.counts.format == "messages" and "label_spans" in dm.train_rows.column_names
    batch = next(iter(dm.train_dataloader()))
    assert set(batch["labels"][batch["labels"] != -100].tolist()) - set(batch["input_ids"].flatten().tolist()) == set()
    alpaca = chat_datamodule(alpaca_file, tmp_path, chat_template=None)
    alpaca.setup("fit")
    assert alpaca.chat is None and "label_spans" not in alpaca.train_rows.column_names
    with pytest.raises(LitSFTError, match="holds Alpaca rows, not conversations.*--data.format messages"):
        _ = chat_datamodule(alpaca_file, tmp_path).chat


def test_alpaca_rows_as_one_turn_chats(tmp_path, alpaca_file, rows):
    dm = chat_datamodule(alpaca_file, tmp_path, format="messages")
    dm.setup("fit")
    row = dm.train_rows[0]
    src = rows[row["row"]]
    learned = [t for a, b in zip(row["label_spans"][0::2], row["label_spans"][1::2]) for t in row["input_ids"][a:b]]
    assert dm.tokenizer.decode(learned) == src["output"] + "<|endoftext|>"
    user = src["instruction"] + (f"\n\n{src['input']}" if src["input"] else "")
    assert f"<|user|>\n{user}<|endoftext|>" in dm.tokenizer.decode(row["input_ids"])


@pytest.mark.integration
def test_preview_shows_chat_rows_as_training_sees_them(in_repo, tmp_path, tiny_tokenizer):
    from litsft.preview import main

    convs = awkward_conversations(12, seed=3)
    convs[2] = [{"role": "user", "content": "no answer"}]  # dropped and counted, not written
    path = write_rows(tmp_path / "chat.jsonl", [{"messages": c} for c in convs], jsonl=True)
    out = tmp_path / "preview.jsonl"
    args = tiny_model_args(tmp_path, path, "--data.chat_template", "zephyr")
    summary = main([*args, "--rows", "12", "--jsonl", str(out)])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary == {"rows": 12, "kept": 11, "dropped": 1, "truncated": 0} and 2 not in [r["row"] for r in records]
    render = reference_zephyr("<|endoftext|>", "<|endoftext|>")
    for r in records:
        ids, labels = reference_row(tiny_tokenizer, render, convs[r["row"]])
        assert r["input_ids"] == ids[: len(r["input_ids"])] and r["labels"] == labels[: len(r["labels"])]
        assert r["text"] == render(convs[r["row"]][: 1 + max(i for i, m in enumerate(convs[r["row"]])
                                                            if m["role"] == "assistant")])[0]  # fmt: skip
    # the terminal view: learned characters inside [[...]], everything else as rendered
    import io

    from litsft.cli import PreviewCLI, run_cli
    from litsft.preview import preview

    cli = run_cli(PreviewCLI, [*args, "--rows", "1"], run=False)
    buffer = io.StringIO()
    preview(cli, 1, None, out=buffer)
    shown = buffer.getvalue().splitlines(keepends=True)[1:]
    learned = [c["content"] + "<|endoftext|>" for c in convs[0] if c["role"] == "assistant"]
    assert "".join(shown).rstrip("\n").count("[[") == len(learned)
    assert [seg.split("]]")[0] for seg in "".join(shown).split("[[")[1:]] == learned


def test_chat_counts_reach_the_data_audit(tmp_path):
    from litsft.callbacks.data_audit import data_audit

    convs = awkward_conversations(20) + [[{"role": "user", "content": "alone"}]]
    dm = chat_datamodule(write_rows(tmp_path / "c.jsonl", [{"messages": c} for c in convs], jsonl=True), tmp_path)
    dm.setup("fit")
    audit = data_audit(dm)
    assert audit["data/no_assistant"] == 1 and audit["data/dropped"] == 1
    assert audit["data/turns"] == sum(sum(m["role"] == "assistant" for m in c) for c in convs)
    lengths = [len(r["input_ids"]) for s in (dm.train_rows, dm.val_rows) for r in s]
    assert audit["data/tokens_max"] == max(lengths)
    assert "conversations read" in dm.counts.describe()


def test_prompts_files_take_conversations(tmp_path):
    from litsft.data.prompts_to_answer import read_prompts

    path = write_rows(
        tmp_path / "p.jsonl",
        [
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                          {"role": "user", "content": "Add 2 and 3."}]},
            {"messages": [{"from": "human", "value": "Name a colour."}, {"from": "gpt", "value": "Red."}]},
            {"instruction": "plain one"},
        ], jsonl=True,
    )  # fmt: skip
    first, second, third = read_prompts(path)
    assert first.conversation()[-1] == {"role": "user", "content": "Add 2 and 3."} and not first.reference
    assert second.conversation() == [{"role": "user", "content": "Name a colour."}] and second.reference == "Red."
    assert third.conversation() == [{"role": "user", "content": "plain one"}]
    assert "user: Hi" in first.display() and first.instruction == "Add 2 and 3."
    bad = write_rows(tmp_path / "bad.jsonl", [{"messages": [{"role": "assistant", "content": "only"}]}], jsonl=True)
    with pytest.raises(LitSFTError, match="bad.jsonl, row 1: the conversation has no message before"):
        read_prompts(bad)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("rows", "flags", "message"),
    [
        (None, [], r"the tokenizer '.*tiny-gpt2' has no chat template.*--data.chat_template with one of: chatml"),
        (None, ["--data.chat_template", "chatml"], r"'chatml' cannot be used for training: no control token follows"),
        (None, ["--data.chat_template", "vicuna"], r"'vicuna' is neither a known chat template"),
        ([{"messages": [{"role": "narrator", "content": "x"}]}], ["--data.chat_template", "zephyr"],
         r"row 20, field 'messages', message 0: unknown role 'narrator'.*--data.role_map"),
        ("alpaca", ["--data.chat_template", "zephyr"], r"holds Alpaca rows, not conversations.*--data.format messages"),
        ("alpaca", ["--data.format", "chat"], r"--data.format: unknown format 'chat'"),
    ],
)  # fmt: skip
def test_bad_chat_input_is_one_clear_message_and_nothing_runs(in_repo, tmp_path, alpaca_file, capsys, rows, flags,
                                                              message):  # fmt: skip
    import re

    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    data = (
        alpaca_file if rows == "alpaca" else write_rows(tmp_path / "chat.jsonl", [good] * 20 + (rows or []), jsonl=True)
    )
    with pytest.raises(SystemExit) as exit_:
        cli_one_thread(["fit", *tiny_model_args(tmp_path, data), *LEAN_ARGS, *flags])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "litsft: error:" in err and "Traceback" not in err, err
    assert re.search(message, err[err.index("litsft: error:") :], re.DOTALL), err
    assert not (tmp_path / "run").exists(), "a bad input started a run"


def test_packed_chat_rows_keep_their_own_labels(tmp_path):
    from litsft.data.packing import PackedCollator

    path = write_rows(tmp_path / "chat.jsonl", [{"messages": c} for c in awkward_conversations(30)], jsonl=True)
    dm = chat_datamodule(path, tmp_path, val_size=0, max_seq_length=512)
    dm.setup("fit")
    rows = [dm.train_rows[i] for i in range(8)]
    batch = PackedCollator(dm.tokenizer.pad_token_id, capacity=512)(rows)
    single = dm.collator()(rows)
    # each row's learned labels, in order, equal its labels alone (a row's first token is never a target)
    packed = batch["labels"][batch["labels"] != -100].tolist()
    alone = [t for b in range(len(rows)) for t in single["labels"][b, 1:][single["labels"][b, 1:] != -100].tolist()]
    assert packed == alone and len(packed) == sum(r["num_labels"] for r in rows)
