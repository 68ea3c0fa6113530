import pytest
import torch
import torch.nn.functional as F

from litsft.model.linear_cross_entropy import CHUNK_BYTES, chunk_positions, linear_cross_entropy_sum


def reference(hidden, weight, bias, targets):
    return F.cross_entropy(F.linear(hidden, weight, bias).float(), targets, reduction="sum")


def loss_and_grads(fn, hidden, weight, bias, targets, **kw):
    leaves = [x.detach().clone().requires_grad_() for x in (hidden, weight) + ((bias,) if bias is not None else ())]
    loss = fn(leaves[0], leaves[1], leaves[2] if bias is not None else None, targets, **kw)
    (0.37 * loss).backward()  # a non-unit upstream gradient, as the step-token scaling gives
    return loss.detach(), [x.grad for x in leaves]


@pytest.mark.parametrize("chunk", [1, 7, 40, None])
@pytest.mark.parametrize("with_bias", [False, True])
def test_chunked_fused_loss_and_gradients_equal_autograd_in_fp32(chunk, with_bias):
    g = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(40, 16, generator=g), torch.randn(500, 16, generator=g) * 0.3
    bias = torch.randn(500, generator=g) if with_bias else None
    targets = torch.randint(0, 500, (40,), generator=g)
    loss, grads = loss_and_grads(linear_cross_entropy_sum, hidden, weight, bias, targets, chunk=chunk)
    expected, expected_grads = loss_and_grads(reference, hidden, weight, bias, targets)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-5)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_under_bf16_autocast_it_matches_autocast_autograd():
    g = torch.Generator().manual_seed(1)
    hidden, weight = torch.randn(24, 32, generator=g), torch.randn(300, 32, generator=g) * 0.2
    targets = torch.randint(0, 300, (24,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, grads = loss_and_grads(linear_cross_entropy_sum, hidden, weight, None, targets, chunk=10)
        expected, expected_grads = loss_and_grads(reference, hidden, weight, None, targets)
    assert loss.dtype == torch.float32 and grads[1].dtype == torch.float32  # fp32 master weight keeps its dtype
    torch.testing.assert_close(loss, expected, rtol=2e-2, atol=0.0)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=0.0, atol=2e-2 * want.abs().max().item())


def test_chunk_size_bounds_the_logits_buffer():
    assert chunk_positions(50_257, torch.device("cpu")) * 50_257 * 4 <= CHUNK_BYTES["cpu"]
    assert chunk_positions(10**9, torch.device("cpu")) == 1


def test_loss_stays_exact_when_a_target_probability_underflows():
    """A confidently wrong model: p(target) ~ exp(-1000) is 0 in fp32, yet the loss must be ~1000, not inf."""
    g = torch.Generator().manual_seed(2)
    hidden, weight = torch.randn(8, 16, generator=g), torch.randn(300, 16, generator=g) * 60.0
    targets = torch.randint(0, 300, (8,), generator=g)
    loss, _ = loss_and_grads(linear_cross_entropy_sum, hidden, weight, None, targets, chunk=3)
    expected, _ = loss_and_grads(reference, hidden, weight, None, targets)
    assert expected.item() > 1000 and torch.isfinite(loss)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-3)
