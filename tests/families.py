"""Tiny model and tokenizer families unlike GPT-2's, built locally (random weights, tokenizers trained here).

Tokenizers (built with the `tokenizers` library, saved with `save_pretrained`):
- `sentencepiece`: Llama-style BPE: `▁` (Metaspace) pre-tokenizer, byte fallback (`<0xE4>` pieces for characters
  outside the vocabulary), BOS `<s>` added by the post-processor (offsets (0, 0)), EOS `</s>`, no pad token, no chat
  template. `eos_post=True` also appends `</s>` in the post-processor (as `add_eos_token=True` tokenizers do).
- `chatml`: Qwen2-style byte-level BPE with `<|im_start|>`/`<|im_end|>`, EOS `<|im_end|>`, pad `<|endoftext|>`
  (pad != EOS), no BOS, a ChatML chat template with a default system prompt in `tokenizer_config.json`.
Models: Llama (untied head, no bias), Qwen2 (tied head, attention biases), Phi (untied head with a bias), Gemma
(tied, scaled embeddings), each 2 layers x 32 wide, from their config classes.
"""

from __future__ import annotations

import json
from pathlib import Path

CORPUS = [
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "### Instruction:\nName the capital of France.\n\n### Response:\nThe capital of France is Paris.",
    "Hello world, this is a test of the tokenizer: numbers 1, 2, 3 and punctuation!?",
    "user assistant system: say hi, hello there. What is the weather like today?",
    "Sort these numbers from smallest to largest. Reverse the order of these words.",
] * 30

# Qwen2.5's layout, written for these tests: a default system prompt when the conversation has none.
QWEN_STYLE_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def sentencepiece_tokenizer(folder: Path, eos_post: bool = False, vocab_size: int = 420) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False, limit_alphabet=80
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    # Llama's layout: ids 0-2 special, 3-258 the byte pieces <0x00>..<0xFF>, then the learned pieces.
    spec = json.loads(tok.to_str())
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"<0x{i:02X}>": 3 + i for i in range(256)}
    for piece, _ in sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    spec["model"]["vocab"] = vocab
    for added in spec["added_tokens"]:
        added["id"] = vocab[added["content"]]
    tok = Tokenizer.from_str(json.dumps(spec))
    metaspace = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([metaspace, decoders.ByteFallback(), decoders.Fuse()])
    single = "<s> $A </s>" if eos_post else "<s> $A"
    tok.post_processor = processors.TemplateProcessing(
        single=single, pair="<s> $A <s> $B", special_tokens=[("<s>", 1), ("</s>", 2)]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.model_max_length = 256
    fast.save_pretrained(str(folder))
    return folder


def chatml_tokenizer(folder: Path, vocab_size: int = 600) -> Path:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    fast.model_max_length = 256
    fast.save_pretrained(str(folder))
    # The chat template in tokenizer_config.json itself, as many hub tokenizers store it.
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = QWEN_STYLE_TEMPLATE
    config_path.write_text(json.dumps(config, indent=2))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    return folder


def model_config(family: str, tokenizer, context: int = 256):
    """A 2-layer, 32-wide config of `family` for `tokenizer`'s vocabulary and special tokens."""
    from transformers import GemmaConfig, LlamaConfig, PhiConfig, Qwen2Config

    ids = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "max_position_embeddings": context,
    }
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    if family == "llama":
        return LlamaConfig(**ids, **small, num_key_value_heads=2, tie_word_embeddings=False)
    if family == "qwen2":
        return Qwen2Config(**ids, **small, num_key_value_heads=2, tie_word_embeddings=True)
    if family == "phi":
        return PhiConfig(**ids, **small, resid_pdrop=0.0, embd_pdrop=0.0, tie_word_embeddings=False)
    if family == "gemma":
        return GemmaConfig(**ids, **small, num_key_value_heads=2, head_dim=8)
    raise ValueError(family)


def write_model(folder: Path, family: str, tokenizer, seed: int = 0) -> Path:
    """A random-weight `family` model saved with `save_pretrained` (weights + config), and the tokenizer beside."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(model_config(family, tokenizer))
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder
