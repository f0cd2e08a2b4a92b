"""The transformer's training attention with dropout (its own path on CPU): SDPA's results without the
dropout, SDPA's expectation with it, and causal in training too."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from mbp_transformer import model as transformer
from mbp_transformer.model import Transformer, TransformerParams, explicit_attention


def _qkv(seed: int, shape: tuple[int, ...] = (2, 3, 7, 8)) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(shape, generator=generator, requires_grad=True) for _ in range(3))


def _segments_mask() -> torch.Tensor:
    segments = torch.tensor([[0, 0, 0, 1, 1, 2, 2], [0, 0, 0, 0, 0, 0, 0]])
    causal = torch.ones(7, 7, dtype=torch.bool).tril()
    return ((segments[:, :, None] == segments[:, None, :]) & causal)[:, None]


@pytest.mark.parametrize("masked", [False, True])
def test_without_its_dropout_it_is_sdpa_values_and_gradients(masked: bool, monkeypatch) -> None:
    monkeypatch.setattr(transformer, "dropout", lambda x, p: x)
    mask = _segments_mask() if masked else None
    q, k, v = _qkv(0)
    ours = explicit_attention(q, k, v, mask, 0.3)
    upstream = torch.randn_like(ours)
    ours_grads = torch.autograd.grad(ours, (q, k, v), upstream)
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
    reference_grads = torch.autograd.grad(reference, (q, k, v), upstream)
    assert torch.allclose(ours, reference, atol=1e-5)
    for mine, theirs in zip(ours_grads, reference_grads, strict=True):
        assert torch.allclose(mine, theirs, atol=1e-5)


def test_with_dropout_its_mean_is_attention_without() -> None:
    q, k, v = (t.detach() for t in _qkv(1, (1, 2, 5, 4)))
    torch.manual_seed(0)
    draws = torch.stack([explicit_attention(q, k, v, None, 0.2) for _ in range(4000)])
    plain = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert not torch.allclose(draws[0], plain, atol=1e-3)  # it does drop
    assert (draws.mean(0) - plain).abs().max().item() < 0.06  # 4000 draws: about 5 standard errors


def test_training_with_dropout_stays_causal() -> None:
    torch.manual_seed(0)
    params = TransformerParams(heads=2, dropout=0.5, attention_dropout=0.5)
    backbone = Transformer(params, dim=16, layers=2).train()
    x = torch.randn(2, 9, 16, requires_grad=True)
    out = backbone(x)
    assert backbone.training and not torch.equal(out, backbone(x))  # dropout is on
    for position in range(8):
        (grad,) = torch.autograd.grad(out[:, position].sum(), x, retain_graph=True)
        assert grad[:, position + 1 :].abs().max().item() == 0.0


def test_attention_dropout_follows_dropout_unless_set(monkeypatch) -> None:
    """Unset, attention probabilities are dropped at the layer's dropout (measured: the answer heads
    generalise better with it); ``attention_dropout: 0`` keeps them whole and runs SDPA's own kernel."""
    calls: list[float] = []
    monkeypatch.setattr(
        transformer, "explicit_attention", lambda q, k, v, mask, p, scale=None: calls.append(p) or q
    )
    x = torch.randn(2, 9, 16)
    Transformer(TransformerParams(heads=2, dropout=0.1), dim=16, layers=2).train()(x)
    assert calls == [0.1, 0.1]
    calls.clear()
    Transformer(TransformerParams(heads=2, dropout=0.1, attention_dropout=0.0), dim=16, layers=2).train()(x)
    assert calls == []
    Transformer(TransformerParams(heads=2, dropout=0.0, attention_dropout=0.2), dim=16, layers=2).train()(x)
    assert calls == [0.2, 0.2]
