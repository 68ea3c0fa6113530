"""`--model.lora`: train low-rank adapters (LoRA, through `peft`) on a frozen base model.

Each targeted projection W [out, in] keeps its weights frozen and gains two trainable matrices A [r, in] and
B [out, r]: y = W x + (alpha / r) * B A dropout(x). B starts at zero, so step 0 computes exactly the base model.
Only A and B are trained, so the optimizer holds their state only, checkpoints hold them and that state only,
and the frozen matmuls need no weight gradient (`litsft.model.flops`). The targets are found from the model, for any
family: every Linear (or GPT-2 Conv1D) projection inside the transformer blocks, i.e. attention and MLP, as
QLoRA's "all-linear" does (peft's own defaults table adapts only the query and value projections, which
learns less for the same memory); never the embeddings or the LM head, which stay tied and fused.

Checkpoints also hold a fingerprint of the frozen base (sum and sum of squares of each tensor), checked when
one is loaded: an adapter resumed or evaluated on other base weights is refused instead of silently wrong.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from litsft.errors import LitSFTError

PEFT_MIN_VERSION = "0.18"  # the first peft release that works with transformers 5
INSTALL_HINT = 'pip install -e ".[lora]"'
# Mixture-of-experts routers are Linear layers inside the blocks too, but choose experts rather than project.
ROUTER_NAMES = {"gate", "router", "shared_expert_gate"}
ExportMode = Literal["merged", "adapter"]


@dataclass(frozen=True)
class LoraSettings:
    """Low-rank adapters (LoRA): the base weights stay frozen, small adapters are trained.

    Attributes:
        r: Rank of each adapter. 0 turns LoRA off (every weight is trained).
        alpha: Adapters are scaled by alpha / r. Default (null): 2 * r, a scale of 2 whatever the rank.
        dropout: Dropout on the adapters' input, in training only.
        target_modules: Names of the projections to adapt (their last name part, e.g. [q_proj, v_proj]).
            Default (null): every Linear/Conv1D projection inside the transformer blocks (attention and MLP);
            never the embeddings or the LM head.
    """

    r: int = 8
    alpha: float | None = None
    dropout: float = 0.05
    target_modules: list[str] | None = None

    @property
    def scale_numerator(self) -> float:
        return float(self.alpha) if self.alpha is not None else 2.0 * self.r


def lora_settings(value: LoraSettings | dict | None) -> LoraSettings | None:
    """The settings when LoRA is on (r > 0), else None. Accepts the plain dict that checkpoints hold; checks values."""
    if value is None:
        return None
    settings = LoraSettings(**value) if isinstance(value, dict) else value
    if not isinstance(settings.r, int) or settings.r < 0:
        raise LitSFTError(f"--model.lora.r must be an integer >= 0 (0: LoRA off), got {settings.r!r}.")
    if settings.r == 0:
        return None
    if settings.alpha is not None and not (settings.alpha > 0 and math.isfinite(settings.alpha)):
        raise LitSFTError(f"--model.lora.alpha must be a positive number or null (2 * r), got {settings.alpha!r}.")
    if not 0.0 <= settings.dropout < 1.0:
        raise LitSFTError(f"--model.lora.dropout must be in [0, 1), got {settings.dropout!r}.")
    if settings.target_modules is not None and not settings.target_modules:
        raise LitSFTError("--model.lora.target_modules is empty: name modules, or null for the default projections.")
    return settings


def as_hparams(settings: LoraSettings | None) -> dict | None:
    """Plain data for `hparams` (checkpoints load with weights_only=True, which refuses a pickled dataclass)."""
    return asdict(settings) if settings is not None else None


def import_peft():
    """`peft`, or a message saying how to install it."""
    try:
        import peft
    except ImportError as err:
        raise LitSFTError(
            f"--model.lora needs the `peft` package, which is not installed. Install it with `{INSTALL_HINT}` "
            f'(or `pip install "peft>={PEFT_MIN_VERSION}"`), or leave --model.lora out to train every weight.'
        ) from err
    from packaging.version import Version

    if Version(peft.__version__) < Version(PEFT_MIN_VERSION):
        raise LitSFTError(
            f"--model.lora: peft {peft.__version__} is too old for transformers 5; install peft>={PEFT_MIN_VERSION} "
            f"(`{INSTALL_HINT}`)."
        )
    return peft


# -- which modules ---------------------------------------------------------------------------------------------


def _projection_types() -> tuple[type[nn.Module], ...]:
    from transformers.pytorch_utils import Conv1D  # GPT-2's transposed Linear

    return (nn.Linear, Conv1D)


def default_target_modules(model: nn.Module) -> list[str]:
    """The last name parts of every Linear/Conv1D inside the transformer blocks (attention and MLP projections),
    routers excepted: GPT-2 [c_attn, c_fc, c_proj], Llama/Qwen2 [down_proj, gate_proj, ..., v_proj]."""
    from litsft.model.compilation import transformer_blocks

    blocks = transformer_blocks(model)
    if blocks is None:
        raise LitSFTError(
            f"--model.lora: cannot find the transformer blocks of {type(model).__name__}; name the projections to "
            "adapt with --model.lora.target_modules, e.g. '[q_proj, v_proj]'."
        )
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in blocks.named_modules()
        if isinstance(module, _projection_types()) and name.rsplit(".", 1)[-1] not in ROUTER_NAMES
    }
    return sorted(names)


def _matching(model: nn.Module, targets: list[str]) -> dict[str, nn.Module]:
    """Modules whose name is a target or ends with '.' + a target (peft's rule for a list of names)."""
    return {
        name: module
        for name, module in model.named_modules()
        if any(name == t or name.endswith("." + t) for t in targets)
    }


def resolve_targets(model: nn.Module, settings: LoraSettings) -> tuple[list[str], dict[str, nn.Module]]:
    """The target names and the modules they select, checked: each name selects something, only projections, and
    never the embeddings or the LM head."""
    targets = list(settings.target_modules) if settings.target_modules else default_target_modules(model)
    types = _projection_types()
    available = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, types)})
    for target in targets:
        if not _matching(model, [target]):
            raise LitSFTError(
                f"--model.lora.target_modules: no module of {type(model).__name__} is named '{target}'. "
                f"Its projections are: {', '.join(available)}."
            )
    selected = _matching(model, targets)
    special = {model.get_input_embeddings(), model.get_output_embeddings()}
    for name, module in selected.items():
        if module in special:
            raise LitSFTError(
                f"--model.lora.target_modules: '{name}' is an embedding or the LM head, which litsft keeps frozen "
                "(tied weights, fused head). Adapt the projections inside the blocks."
            )
        if not isinstance(module, types):
            raise LitSFTError(
                f"--model.lora.target_modules: '{name}' is a {type(module).__name__}, not a Linear/Conv1D projection. "
                f"Name projections: {', '.join(available)}."
            )
    return targets, selected


# -- applying ----------------------------------------------------------------------------------------------------


def weights_fingerprint(model: nn.Module) -> torch.Tensor:
    """[P, 2] float64 on CPU: the sum and the sum of squares of each parameter, in `named_parameters` order."""
    with torch.no_grad():
        rows = [
            torch.stack([p.sum(dtype=torch.float64), torch.linalg.vector_norm(p, dtype=torch.float64) ** 2])
            for p in model.parameters()
        ]
    return torch.stack(rows).cpu() if rows else torch.zeros(0, 2, dtype=torch.float64)


def apply_lora(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """Freeze `model` and add adapters: returns the `peft` model (same forward and generate, adapters trainable).

    Call after `gradient_checkpointing_enable` (peft then makes the embeddings' output require grad, which
    checkpointed blocks need when the embeddings are frozen) and before sharding or compiling.
    """
    peft = import_peft()
    targets, selected = resolve_targets(model, settings)
    from transformers.pytorch_utils import Conv1D

    config = peft.LoraConfig(
        task_type="CAUSAL_LM",
        r=settings.r,
        lora_alpha=settings.scale_numerator,
        lora_dropout=settings.dropout,
        target_modules=targets,
        # Conv1D stores W as [in, out]: peft must know to transpose (it would warn and guess per layer otherwise).
        fan_in_fan_out=all(isinstance(m, Conv1D) for m in selected.values()),
        bias="none",
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # peft probes a renamed property
        return peft.get_peft_model(model, config)


def describe(model: nn.Module, settings: LoraSettings) -> str:
    """One line for the log: targets, module count, trainable parameters and their share."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    targets = model.peft_config["default"].target_modules
    layers = sum(1 for n, _ in model.named_modules() if n.endswith(".lora_A"))
    return (
        f"litsft: LoRA r={settings.r}, alpha={settings.scale_numerator:g}, dropout={settings.dropout:g} on "
        f"{', '.join(sorted(targets))} ({layers} modules): {trainable:,} trainable parameters of {total:,} "
        f"({trainable / max(total, 1):.2%})"
    )


# -- checkpoints -----------------------------------------------------------------------------------------------


def check_adapter_keys(found, expected: set[str], frozen: set[str], where: str = "the checkpoint") -> None:
    """A LoRA model loads `found` keys: all adapter keys must be there; anything else must be a frozen base key."""
    found = set(found)
    missing = sorted(expected - found)
    unknown = sorted(found - expected - frozen)
    if missing or unknown:
        detail = f"it lacks {len(missing)} adapter tensors (e.g. {missing[0]})" if missing else f"it holds {unknown[0]}"
        raise LitSFTError(
            f"{where} does not fit this LoRA model: {detail}. It was written with other --model.lora settings (rank, "
            "target modules) or without LoRA; use the settings it was trained with, or start a new run."
        )


def check_fingerprint(saved: torch.Tensor | None, current: torch.Tensor | None, where: str = "the checkpoint") -> None:
    """Refuse an adapter whose frozen base differs from the one loaded now."""
    if saved is None or current is None:
        return
    same = saved.shape == current.shape and torch.allclose(saved, current, rtol=1e-6, atol=1e-8)
    if not same:
        raise LitSFTError(
            f"{where} holds a LoRA adapter trained on other base weights than --model.model_name_or_path gives "
            "now (the frozen weights differ). Use the base model it was trained on."
        )


# -- export ------------------------------------------------------------------------------------------------------


def _plain_class(cls: type) -> type:
    """The model's own class (FSDP2's `fully_shard` swaps in a subclass, FSDP<Name>)."""
    from torch.distributed.fsdp import FSDPModule

    return next(c for c in cls.__mro__ if not issubclass(c, FSDPModule)) if issubclass(cls, FSDPModule) else cls


def unsharded_copy(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """A CPU `peft` model like `model`, built on the meta device and given the tensors of `state_dict` (the full,
    unsharded state dict of `model`; no copy is made)."""
    peft = import_peft()
    base = model.get_base_model()
    with torch.device("meta"):
        skeleton = _plain_class(type(base))(base.config)
        clone = peft.get_peft_model(skeleton, copy.deepcopy(model.peft_config["default"]))
    result = clone.load_state_dict(state_dict, strict=False, assign=True)
    clone.get_base_model().tie_weights()  # a tied head may be absent from the state dict, or assigned apart
    still_meta = [n for n, p in clone.named_parameters() if p.is_meta]
    if result.unexpected_keys or still_meta:
        raise RuntimeError(f"LoRA export: state dict mismatch ({result.unexpected_keys[:3]}, {still_meta[:3]})")
    clone.get_base_model().generation_config = copy.deepcopy(base.generation_config)
    return clone.eval()


def save_lora(
    model: nn.Module, folder: Path, state_dict: dict[str, torch.Tensor] | None, mode: ExportMode = "merged"
) -> None:
    """Write `model` (a `peft` model) to `folder`: `merged`, a plain `save_pretrained` model with W + (alpha/r) B A
    in place of W; or `adapter`, a peft folder (adapter_config.json + adapter weights) for `PeftModel.from_pretrained`.

    `state_dict`: the gathered full state dict when the model is sharded (rank 0), else None (the model's own).
    """
    if mode not in ("merged", "adapter"):
        raise LitSFTError(f"--export.lora must be 'merged' or 'adapter', got {mode!r}.")
    owned = state_dict is not None  # a gathered copy is ours to change; the live model's tensors are not
    state_dict = state_dict if owned else model.state_dict()
    if mode == "merged" and not owned:  # merging adds B A into the frozen weights in place: copy those first
        state_dict = {k: v.detach().clone() if ".base_layer." in k else v for k, v in state_dict.items()}
    clone = unsharded_copy(model, state_dict)
    if mode == "adapter":
        clone.save_pretrained(str(folder))
    else:
        clone.merge_and_unload().save_pretrained(str(folder))
