"""mbp's dropout: torch's statistics and gradients, a cheaper CPU mask, reproducible under torch's seed."""

from __future__ import annotations

import pytest
import torch
from mbp.api import Dropout, dropout
from mbp.model.dropout import LEVELS


def test_drops_the_share_asked_and_keeps_the_mean() -> None:
    torch.manual_seed(0)
    x = torch.ones(400, 1000)
    y = dropout(x, 0.1)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.1) < 0.003  # 400,000 draws: 5 standard deviations is 0.0024
    kept = y[y != 0]
    assert torch.allclose(kept, torch.full_like(kept, LEVELS / (LEVELS - round(0.1 * LEVELS))))
    assert abs(y.mean().item() - 1.0) < 0.004


def test_gradient_is_the_same_mask_and_scale() -> None:
    torch.manual_seed(1)
    x = torch.randn(64, 257, requires_grad=True)
    y = dropout(x, 0.25)
    upstream = torch.randn_like(y)
    y.backward(upstream)
    assert x.grad is not None
    factor = y.detach() / x.detach()  # 0 where dropped, the scale where kept
    assert torch.allclose(x.grad, upstream * factor, atol=1e-6)
    scale = LEVELS / (LEVELS - LEVELS // 4)
    assert torch.all((factor == 0) | ((factor - scale).abs() < 1e-4))


def test_masks_follow_torch_seed_and_differ_between_calls() -> None:
    x = torch.randn(50, 50)
    torch.manual_seed(7)
    first, second = dropout(x, 0.5), dropout(x, 0.5)
    torch.manual_seed(7)
    assert torch.equal(dropout(x, 0.5), first)
    assert not torch.equal(first, second)


@pytest.mark.parametrize("shape", [(1,), (3,), (5, 7), (2, 3, 5)])
def test_any_shape_including_counts_not_a_multiple_of_four(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    x = torch.ones(shape)
    assert dropout(x, 0.3).shape == x.shape


def test_identity_in_eval_and_at_zero_and_everything_dropped_at_one() -> None:
    x = torch.randn(10, 10)
    module = Dropout(0.4)
    module.eval()
    assert module(x) is x
    assert dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    with pytest.raises(ValueError, match="dropout probability"):  # nn.Dropout checks it
        Dropout(1.5)


def test_bf16_inputs_stay_bf16() -> None:
    torch.manual_seed(0)
    x = torch.randn(32, 32, dtype=torch.bfloat16, requires_grad=True)
    y = dropout(x, 0.1)
    y.sum().backward()
    assert y.dtype == torch.bfloat16
    assert x.grad is not None and x.grad.dtype == torch.bfloat16
