import pytest
import torch
from transformers import GPT2Config, LlamaConfig

from litsft.model.flops import ModelShape, compute_dtype, peak_flops, training_flops

TINY_GPT2 = GPT2Config(n_embd=64, n_head=2, n_layer=2, vocab_size=1024)


def test_tiny_gpt2_count_matches_a_hand_computation():
    shape = ModelShape.from_config(TINY_GPT2)
    # d = 64, MLP 4d = 256, per layer: QKV 64x192, out 64x64, MLP 64x256 + 256x64 -> 49,152 weights; 2 FLOPs each.
    assert shape.dense_flops_per_token == 2 * 49_152 * 2
    assert shape.attention_flops_per_pair == 2 * 2 * 64 * 2  # Q.K and A.V, 64 wide, 2 layers
    assert shape.head_flops_per_token == 2 * 64 * 1024
    # Two rows of 3 and 5 tokens, 3 learned targets: 8 tokens, 3*4/2 + 5*6/2 = 21 causal pairs, head at 3 positions.
    expected = 3 * (8 * 196_608 + 21 * 512 + 3 * 131_072)
    assert training_flops(shape, tokens=8, attention_pairs=21, head_tokens=3) == expected == 5_930_496


@pytest.mark.parametrize(
    "config",
    [
        TINY_GPT2,
        GPT2Config(n_embd=48, n_head=3, n_layer=3, n_inner=100, vocab_size=300),
        LlamaConfig(
            hidden_size=64,
            intermediate_size=172,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_hidden_layers=2,
            vocab_size=300,
        ),  # fmt: skip
    ],
    ids=["gpt2", "gpt2-n_inner", "llama-gqa"],
)
def test_dense_count_is_twice_the_block_matmul_weights_of_the_real_model(config):
    """Independent of the formula: count the weights of the 2-D matrices inside the model's blocks."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(config)
    blocks = next(m for m in model.modules() if isinstance(m, torch.nn.ModuleList))
    weights = sum(p.numel() for p in blocks.parameters() if p.ndim == 2)
    assert ModelShape.from_config(config).dense_flops_per_token == 2 * weights
    assert ModelShape.from_config(config).head_flops_per_token == 2 * model.get_output_embeddings().weight.numel()


@pytest.mark.parametrize(
    ("device", "dtype", "expected"),
    [
        ("NVIDIA H100 80GB HBM3", "bf16", 989.4e12),
        ("NVIDIA H100 PCIe", "bf16", 756e12),
        ("NVIDIA H200", "bf16", 989.4e12),
        ("NVIDIA A100-SXM4-80GB", "tf32", 156e12),
        ("NVIDIA L4", "bf16", 121e12),
        ("NVIDIA L40S", "bf16", 362e12),
        ("NVIDIA A10G", "fp16", 125e12),
        ("Tesla V100-SXM2-16GB", "bf16", None),  # no bf16 tensor cores: no MFU rather than a wrong one
        ("cpu", "fp32", None),
    ],
)
def test_peak_table(device, dtype, expected):
    assert peak_flops(device, dtype) == expected


def test_precision_to_compute_dtype():
    assert compute_dtype("bf16-mixed", tf32_allowed=False) == "bf16"
    assert compute_dtype("16-mixed", tf32_allowed=False) == "fp16"
    assert compute_dtype("32-true", tf32_allowed=True) == "tf32"
    assert compute_dtype("32-true", tf32_allowed=False) == "fp32"
    assert compute_dtype("64-true", tf32_allowed=False) is None
