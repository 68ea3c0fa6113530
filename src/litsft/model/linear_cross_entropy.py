"""LM head + cross-entropy in chunks of positions, with the gradient computed on the way: no [N, V] logits kept.

Shapes: N learned positions, H hidden size, V vocabulary (GPT-2: 50,257), C positions per chunk.
Even at learned positions only, the fp32 logits of a micro-batch are big: 16 long Alpaca rows hold ~6,000
learned tokens, i.e. 1.2 GB of logits, and autograd keeps that tensor, its log-softmax and its gradient alive
at once (the peak memory of a step). On a CPU, every such allocation is a fresh `mmap` whose pages the kernel
zeroes again each step: ~40% of the CPU time went to the kernel (measured). Here each chunk's logits live in
two [C, V] buffers (kept between calls on a CPU): the loss of the chunk and d(loss)/d(logits) = softmax - onehot
are computed at once, multiplied into the gradients of the hidden states [N, H] and of the head's weight [V, H],
and only those are kept for backward. Same FLOPs as autograd (one forward and two backward matmuls), no
recomputation. Effect measured by `benchmarks/throughput.py` (README, "Performance").

Used for training (gradients enabled); evaluation keeps the plain head, whose logits val/eos_acc reads.
"""

from __future__ import annotations

import torch

# Bytes of one fp32 [C, V] buffer (there are two): small enough to stay cheap, big enough for efficient matmuls.
CHUNK_BYTES = {"cpu": 128 * 2**20, "cuda": 512 * 2**20}


_WORKSPACE: dict[tuple[str, torch.dtype], torch.Tensor] = {}


def workspace(name: str, shape: tuple[int, int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A scratch buffer, reused across calls on a CPU: there a fresh large allocation is a new `mmap` whose pages
    the kernel zeroes again on every step. (CUDA's caching allocator already reuses memory.) Only for values
    that do not outlive the call."""
    numel = shape[0] * shape[1]
    if device.type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device)
    buf = _WORKSPACE.get((name, dtype))
    if buf is None or buf.numel() < numel:
        buf = _WORKSPACE[(name, dtype)] = torch.empty(numel, dtype=dtype)
    return buf[:numel].view(shape)


def chunk_positions(vocab: int, device: torch.device) -> int:
    return max(1, CHUNK_BYTES.get(device.type, CHUNK_BYTES["cuda"]) // (4 * vocab))


class _LinearCrossEntropySum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk, dtype):
        # hidden [N, H], weight [V, H], bias [V] or None, targets [N]; matmuls in `dtype` (autocast's, or fp32)
        n, vocab = hidden.shape[0], weight.shape[0]
        h_all, w = hidden.to(dtype), weight.to(dtype)
        # A frozen head (LoRA) needs no weight gradient: one of the three [c, V] x [V, H] matmuls per chunk saved.
        need_weight, need_bias = ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2]
        grad_hidden = torch.empty_like(hidden)  # [N, H]
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        grad_bias = torch.zeros(vocab, dtype=torch.float32, device=weight.device) if need_bias else None
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        c = min(chunk, max(n, 1))
        buf = workspace("logits", (c, vocab), torch.float32, hidden.device)  # fp32 logits
        buf_p = workspace("probs", (c, vocab), torch.float32, hidden.device)  # softmax, then d loss / d logits
        low = workspace("low", (c, vocab), dtype, hidden.device) if dtype != torch.float32 else None
        for start in range(0, n, c):
            h, t = h_all[start : start + c], targets[start : start + c]  # [c, H], [c]
            rows = h.shape[0]
            logits = buf[:rows]
            if low is None:
                torch.mm(h, w.t(), out=logits)
            else:
                logits.copy_(torch.mm(h, w.t(), out=low[:rows]))
            if bias is not None:
                logits += bias.float()
            # softmax is one fused row-wise kernel; the log-sum-exp comes from the largest probability, which is
            # >= 1/V and never underflows: lse = max - log(p_max). (`torch.logsumexp`, or log_softmax then exp,
            # cost one to three more passes over [c, V]: 1.6-4x slower on a CPU.)
            top = logits.amax(dim=-1)  # [c]
            target_logit = logits.gather(1, t[:, None]).squeeze(1)  # [c]
            probs = torch.softmax(logits, dim=-1, out=buf_p[:rows])  # [c, V]
            loss += (top - probs.amax(dim=-1).log() - target_logit).sum()
            probs[torch.arange(rows, device=probs.device), t] -= 1.0  # d loss / d logits = softmax - onehot
            g = probs if low is None else low[:rows].copy_(probs)  # [c, V] in the matmul dtype
            grad_h = grad_hidden[start : start + rows]  # [c, H]
            if grad_h.dtype == dtype:
                torch.mm(g, w, out=grad_h)
            else:
                grad_h.copy_(g @ w)
            if grad_weight is None:
                pass
            elif low is None:
                grad_weight.addmm_(g.t(), h)  # in place: no [V, H] temporary per chunk
            else:
                grad_weight += (g.t() @ h).float()
            if grad_bias is not None:
                grad_bias += probs.sum(0)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.weight_dtype = weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        # d loss / d x = grad_loss * (what forward computed); in place: these buffers are not needed again
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        grad_weight = grad_weight.mul_(grad_loss).to(ctx.weight_dtype) if grad_weight is not None else None
        grad_bias = grad_bias.mul_(grad_loss).to(ctx.weight_dtype) if grad_bias is not None else None
        return grad_hidden.mul_(grad_loss.to(grad_hidden.dtype)), grad_weight, grad_bias, None, None, None


def linear_cross_entropy_sum(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    chunk: int | None = None,
) -> torch.Tensor:
    """sum_i cross_entropy(hidden[i] @ weight.T + bias, targets[i]) over N positions, as [] fp32.

    `hidden` [N, H], `weight` [V, H], `bias` [V] or None, `targets` [N] (every one counts: no ignore index).
    Under autocast the matmuls run in autocast's dtype, the softmax in fp32, as `F.cross_entropy` would.
    """
    dtype = torch.float32
    if torch.is_autocast_enabled(hidden.device.type):
        dtype = torch.get_autocast_dtype(hidden.device.type)
    chunk = chunk or chunk_positions(weight.shape[0], hidden.device)
    with torch.autocast(hidden.device.type, enabled=False):
        return _LinearCrossEntropySum.apply(hidden, weight, bias, targets, chunk, dtype)
