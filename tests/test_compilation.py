import pytest
import torch

from litsft.model.compilation import transformer_blocks
from tests.helpers import tiny_module, token_batch


def test_option_compiles_every_block_in_place_and_keeps_parameter_names():
    plain, compiled = tiny_module(), tiny_module(torch_compile=True)
    blocks = transformer_blocks(compiled.model)
    assert len(blocks) == compiled.hf_config.n_layer
    assert all(block._compiled_call_impl is not None for block in blocks)
    assert all(block._compiled_call_impl is None for block in transformer_blocks(plain.model))
    assert list(compiled.model.state_dict()) == list(plain.model.state_dict())  # checkpoints and exports unchanged


@pytest.mark.slow  # compiling on a CPU takes about 30 s
def test_compiled_loss_and_gradients_equal_eager():
    plain, compiled = tiny_module(), tiny_module(torch_compile=True)
    compiled.model.load_state_dict(plain.model.state_dict())
    for width in (0, 4):  # two batch shapes: the second triggers the dynamic-shape recompile
        batch = token_batch(width)
        losses = []
        for module in (plain, compiled):
            module.model.zero_grad()
            loss, _ = module._loss_sum(batch)
            loss.backward()
            losses.append(loss)
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
        for (name, p), q in zip(plain.model.named_parameters(), compiled.model.parameters(), strict=True):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
