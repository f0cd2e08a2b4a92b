"""Issue 13: the training step's own kernels (RMSNorm's written-out backward, rotary's inverse-rotation
backward, bf16 attention by explicit products) compute what torch's reference ops compute."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from mbp.model.norm import RMSNorm, rms_norm
from mbp_transformer.model import explicit_attention, explicit_is_faster, rotary, rotations


def test_rms_norm_gradients_are_exact_in_float64() -> None:
    generator = torch.Generator().manual_seed(0)
    for shape in [(3, 5, 16), (2, 7, 130)]:
        x = torch.randn(shape, dtype=torch.float64, generator=generator, requires_grad=True)
        w = torch.randn(shape[-1], dtype=torch.float64, generator=generator, requires_grad=True)
        assert torch.autograd.gradcheck(lambda x, w: rms_norm(x, w, 1e-6, torch.float64), (x, w))
        reference = F.rms_norm(x, (shape[-1],), w, 1e-6)
        torch.testing.assert_close(rms_norm(x, w, 1e-6, torch.float64), reference, rtol=1e-12, atol=1e-12)


def test_rms_norm_under_autocast_writes_bf16_from_fp32_arithmetic() -> None:
    norm = RMSNorm(128)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = (torch.randn(4, 65, 128) * 30).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = norm(x)
    assert y.dtype == torch.bfloat16
    reference = F.rms_norm(x, (128,), norm.weight, norm.eps)
    torch.testing.assert_close(y.float(), reference, rtol=1e-2, atol=1e-2)  # bf16's 8 bits of mantissa
    upstream = torch.randn(4, 65, 128)
    (ours,) = torch.autograd.grad(y.float(), x, upstream)
    (theirs,) = torch.autograd.grad(reference, x, upstream)
    torch.testing.assert_close(ours, theirs, rtol=1e-2, atol=1e-4)


def test_rotary_backward_is_the_inverse_rotation() -> None:
    turns = rotations(torch.arange(9)[None], 8, 10000.0, torch.float64)[:, :, None, :]
    x = torch.randn(2, 9, 3, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: rotary(x, turns), (x,))
    torch.testing.assert_close(rotary(x, turns).norm(), x.norm())  # a rotation keeps lengths


def test_bf16_attention_on_short_sequences_is_explicit_and_matches_sdpa() -> None:
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(8, 4, 65, 32, generator=generator) for _ in range(3))
    low = [t.to(torch.bfloat16).requires_grad_() for t in (q, k, v)]
    assert explicit_is_faster(low[0]) and not explicit_is_faster(q)  # fp32 keeps SDPA's fused kernel
    assert not explicit_is_faster(torch.zeros(1, 4, 512, 32, dtype=torch.bfloat16))  # long: fused wins
    ours = explicit_attention(*low, None, 0.0)
    assert ours.dtype == torch.bfloat16
    high = [t.requires_grad_() for t in (q, k, v)]
    reference = F.scaled_dot_product_attention(*high, is_causal=True)
    torch.testing.assert_close(ours.float(), reference, rtol=0, atol=0.05)
    upstream = torch.randn(reference.shape, generator=generator)
    for mine, theirs in zip(
        torch.autograd.grad(ours, low, upstream.to(torch.bfloat16)),
        torch.autograd.grad(reference, high, upstream),
        strict=True,
    ):
        assert (mine.float() - theirs).abs().max() < 0.05 * theirs.abs().max()
