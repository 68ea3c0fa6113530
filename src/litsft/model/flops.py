"""Training FLOPs of the tokens a batch actually holds, and the peak FLOP/s of known accelerators (for MFU).

Matmul FLOPs only (2 per multiply-add); a training step costs 3x the forward (backward = 2x forward: the gradients
of the input and of the weight). With d the hidden size, q = heads * head_dim, kv = kv_heads * head_dim, f the MLP
width, V the vocabulary:

    dense, per token and layer:        2 * (d * (q + 2 * kv) + q * d + m * d * f)   m = 2 (GPT-2 MLP), 3 (gated MLP)
    attention, per (query, key) pair:  2 * 2 * q per layer                          scores Q K^T, then A V
    LM head, per token where it runs:  2 * d * V

Attention counts only the pairs a causal model needs: a token at position p (within its own row, so packed rows
add nothing across rows) attends to p + 1 keys, so a row of L tokens has L (L + 1) / 2 pairs. The head runs
only at learned positions when litsft gathers them (`--model.gather_head`). Embedding lookups, norms,
activations, softmax, biases and the optimizer are left out (a few % for these models): this is the usual
"model FLOPs" of MFU (PaLM, appendix B), not the hardware FLOPs (recomputation by gradient checkpointing is
not counted).

With LoRA (`--model.lora`) the base weights are frozen: their matmuls need the input's gradient only, so they cost
2x their forward, not 3x (the LM head too); attention's two matmuls multiply activations, so they stay at 3x, and
so do the adapters (A [r, in] and B [out, r]: 2 * r * (in + out) forward FLOPs per token and module).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# Dense (no structured sparsity) peak FLOP/s per GPU from NVIDIA's data sheets, by compute dtype. "tf32" is
# what fp32 matmuls run at when torch allows TF32 (`torch.set_float32_matmul_precision("high")`).
# The first matching name fragment wins, so specific variants come before their family.
_T = 1e12
PEAK_FLOPS: list[tuple[str, dict[str, float]]] = [
    ("b200", {"bf16": 2250 * _T, "fp16": 2250 * _T, "tf32": 1100 * _T}),
    ("h200 nvl", {"bf16": 835.5 * _T, "fp16": 835.5 * _T, "tf32": 417.5 * _T, "fp32": 60 * _T}),
    ("h200", {"bf16": 989.4 * _T, "fp16": 989.4 * _T, "tf32": 494.7 * _T, "fp32": 66.9 * _T}),
    ("h100 nvl", {"bf16": 835.5 * _T, "fp16": 835.5 * _T, "tf32": 417.5 * _T, "fp32": 60 * _T}),
    ("h100 pcie", {"bf16": 756 * _T, "fp16": 756 * _T, "tf32": 378 * _T, "fp32": 51.2 * _T}),
    ("h100", {"bf16": 989.4 * _T, "fp16": 989.4 * _T, "tf32": 494.7 * _T, "fp32": 66.9 * _T}),  # SXM (HBM3)
    ("a100", {"bf16": 312 * _T, "fp16": 312 * _T, "tf32": 156 * _T, "fp32": 19.5 * _T}),
    ("l40s", {"bf16": 362 * _T, "fp16": 362 * _T, "tf32": 183 * _T, "fp32": 91.6 * _T}),
    ("l40", {"bf16": 181 * _T, "fp16": 181 * _T, "tf32": 90.5 * _T, "fp32": 90.5 * _T}),
    ("l4", {"bf16": 121 * _T, "fp16": 121 * _T, "tf32": 60 * _T, "fp32": 30.3 * _T}),
    ("a10", {"bf16": 125 * _T, "fp16": 125 * _T, "tf32": 62.5 * _T, "fp32": 31.2 * _T}),  # A10 and A10G
    ("v100", {"fp16": 125 * _T, "fp32": 15.7 * _T}),  # no bf16 tensor cores
    ("t4", {"fp16": 65 * _T, "fp32": 8.1 * _T}),
]


def compute_dtype(precision: str | int, tf32_allowed: bool) -> str | None:
    """Lightning's `precision` setting -> the dtype matmuls run in ('bf16', 'fp16', 'tf32', 'fp32'), or None."""
    precision = str(precision)
    if precision.startswith("bf16"):
        return "bf16"
    if precision.startswith("16"):
        return "fp16"
    if precision.startswith("32"):
        return "tf32" if tf32_allowed else "fp32"
    return None  # 64-bit or transformer-engine fp8: no entry in the table


def peak_flops(device_name: str, dtype: str | None) -> float | None:
    """Peak FLOP/s of one device for `dtype`, or None when the device or dtype is not in `PEAK_FLOPS`."""
    name = device_name.lower()
    for fragment, peaks in PEAK_FLOPS:
        if fragment in name:
            return peaks.get(dtype) if dtype else None
    return None


# Configs with `intermediate_size` whose MLP is up -> activation -> down (two matrices); the others (Llama, Mistral,
# Qwen, Gemma, ...) gate it with a third matrix.
NON_GATED_MODEL_TYPES = {"gpt_neox", "opt", "phi", "falcon", "bloom", "gptj", "codegen", "gpt_bigcode", "starcoder2"}


@dataclass(frozen=True)
class ModelShape:
    """What the FLOP count needs from a decoder-only transformer's config."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    gated_mlp: bool
    vocab: int
    adapter_params: int = 0  # LoRA: elements of all A and B matrices (each one multiply-add per token)
    frozen_base: bool = False  # LoRA: every weight but the adapters' is frozen

    def with_adapters(self, adapter_params: int) -> ModelShape:
        """The same model with its base frozen and `adapter_params` trainable adapter weights (LoRA)."""
        return replace(self, adapter_params=adapter_params, frozen_base=True)

    @classmethod
    def from_config(cls, config) -> ModelShape:
        """GPT-2 style (`n_embd`, `n_layer`, ...) or Llama style (`hidden_size`, `intermediate_size`, ...) configs.

        Raises ValueError when a needed field is missing (the caller then logs no MFU).
        """

        def first(*names: str):
            for name in names:
                value = getattr(config, name, None)
                if value is not None:
                    return value
            raise ValueError(f"{type(config).__name__} has none of {names}")

        hidden = first("n_embd", "hidden_size", "d_model")
        heads = first("n_head", "num_attention_heads")
        if hasattr(config, "n_embd"):  # GPT-2 family: MLP width n_inner, 4 * n_embd when unset
            ffn, gated = getattr(config, "n_inner", None) or 4 * hidden, False
        else:
            ffn = first("intermediate_size", "ffn_dim")
            gated = getattr(config, "model_type", "") not in NON_GATED_MODEL_TYPES
        return cls(
            hidden=hidden,
            layers=first("n_layer", "num_hidden_layers"),
            heads=heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or hidden // heads,
            ffn=ffn,
            gated_mlp=gated,
            vocab=first("vocab_size"),
        )

    @property
    def dense_flops_per_token(self) -> int:
        """Forward FLOPs of all layers' projections and MLP for one token."""
        q, kv, d = self.heads * self.head_dim, self.kv_heads * self.head_dim, self.hidden
        mlp_matrices = 3 if self.gated_mlp else 2
        return 2 * (d * (q + 2 * kv) + q * d + mlp_matrices * d * self.ffn) * self.layers

    @property
    def attention_flops_per_pair(self) -> int:
        """Forward FLOPs of one (query, key) pair over all layers: its score and its share of A V."""
        return 2 * 2 * self.heads * self.head_dim * self.layers

    @property
    def head_flops_per_token(self) -> int:
        """Forward FLOPs of the LM head at one position."""
        return 2 * self.hidden * self.vocab

    @property
    def adapter_flops_per_token(self) -> int:
        """Forward FLOPs of all LoRA adapters for one token: x -> A x -> B (A x)."""
        return 2 * self.adapter_params


def training_flops(shape: ModelShape, tokens: int, attention_pairs: int, head_tokens: int) -> int:
    """FLOPs of forward + backward over `tokens` real tokens with `attention_pairs` causal (query, key) pairs,
    the LM head running at `head_tokens` positions."""
    dense = tokens * shape.dense_flops_per_token
    attention = attention_pairs * shape.attention_flops_per_pair
    head = head_tokens * shape.head_flops_per_token
    if not shape.frozen_base:
        return 3 * (dense + attention + head)
    # frozen weights: forward + the input's gradient; attention and adapters: forward + both gradients
    return 2 * (dense + head) + 3 * (attention + tokens * shape.adapter_flops_per_token)
