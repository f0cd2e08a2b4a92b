"""Issue 7: the Mamba-2 backbone's PyTorch path."""

from __future__ import annotations

import pytest
import torch
from mbp_mamba.backbone import Mamba, MambaParams
from mbp_mamba.ssd import ssd_chunked, ssd_sequential

MAMBA_SSM_NAMES = {
    "in_proj.weight",
    "conv1d.weight",
    "conv1d.bias",
    "dt_bias",
    "A_log",
    "D",
    "norm.weight",
    "out_proj.weight",
}


def random_inputs(length: int, batch: int = 2, heads: int = 3, width: int = 4, state: int = 5):
    g = torch.Generator().manual_seed(length)
    kw = {"dtype": torch.float64, "generator": g}
    return (
        torch.randn(batch, length, heads, width, **kw),
        torch.rand(batch, length, heads, **kw) * 0.5 + 0.01,
        -torch.rand(heads, **kw) * 2 - 0.1,
        torch.randn(batch, length, heads, state, **kw),
        torch.randn(batch, length, heads, state, **kw),
    )


@pytest.mark.parametrize(("length", "chunk"), [(1, 4), (7, 4), (8, 4), (33, 8), (64, 16), (100, 32)])
def test_chunked_scan_equals_sequential_recurrence(length: int, chunk: int) -> None:
    x, dt, a, b, c = random_inputs(length)
    initial = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    y1, s1 = ssd_chunked(x, dt, a, b, c, chunk, initial)
    y2, s2 = ssd_sequential(x, dt, a, b, c, initial)
    torch.testing.assert_close(y1, y2, rtol=0, atol=1e-12)
    torch.testing.assert_close(s1, s2, rtol=0, atol=1e-12)


def test_heads_of_a_group_share_its_projections() -> None:
    x, dt, a, _, _ = random_inputs(37, heads=6)
    b, c = random_inputs(37, heads=2)[3:]  # 2 groups of 3 heads
    initial = torch.randn(2, 6, 4, 5, dtype=torch.float64)
    y1, s1 = ssd_chunked(x, dt, a, b, c, 8, initial)
    y2, s2 = ssd_sequential(x, dt, a, b, c, initial)
    y3, s3 = ssd_chunked(x, dt, a, b.repeat_interleave(3, dim=2), c.repeat_interleave(3, dim=2), 8, initial)
    torch.testing.assert_close(y1, y2, rtol=0, atol=1e-12)
    torch.testing.assert_close(s1, s2, rtol=0, atol=1e-12)
    torch.testing.assert_close(y1, y3, rtol=0, atol=1e-12)
    torch.testing.assert_close(s1, s3, rtol=0, atol=1e-12)
    assert not torch.allclose(y1[:, :, 0], y1[:, :, 3])  # the groups' heads do differ


def test_gradcheck_on_a_tiny_case() -> None:
    inputs = tuple(t.requires_grad_() for t in random_inputs(6, batch=1, heads=2, width=2, state=3))
    assert torch.autograd.gradcheck(lambda *t: ssd_chunked(*t, chunk=4)[0], inputs)


def test_gradcheck_with_heads_sharing_a_group() -> None:
    """The written-out backward of the decayed chunk scores sums over a group's heads (3 here)."""
    x, dt, a, _, _ = random_inputs(7, batch=1, heads=6, width=2, state=3)
    b, c = random_inputs(7, batch=1, heads=2, width=2, state=3)[3:]
    inputs = tuple(t.requires_grad_() for t in (x, dt, a, b, c))
    assert torch.autograd.gradcheck(lambda *t: ssd_chunked(*t, chunk=4)[0], inputs)
    assert torch.autograd.gradcheck(lambda *t: ssd_chunked(*t, chunk=4)[1], inputs)


def test_parameter_names_and_shapes_follow_mamba_ssm() -> None:
    model = Mamba(MambaParams(state=16, headdim=16, expand=2, conv=4), dim=64, layers=1)
    shapes = {
        name.removeprefix("layers.0.mixer."): tuple(p.shape)
        for name, p in model.named_parameters()
        if ".mixer." in name
    }
    assert set(shapes) == MAMBA_SSM_NAMES
    inner, heads, conv_width = 128, 8, 128 + 2 * 16
    assert shapes["in_proj.weight"] == (2 * inner + 2 * 16 + heads, 64)
    assert shapes["conv1d.weight"] == (conv_width, 1, 4)
    assert shapes["A_log"] == shapes["dt_bias"] == shapes["D"] == (heads,)
    assert shapes["out_proj.weight"] == (64, inner)


def test_path_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    import mbp_mamba.kernels as kernels

    kernels._announced.clear()
    model = Mamba(MambaParams(state=4, headdim=8, chunk=4), dim=16, layers=2)
    with caplog.at_level("WARNING", logger="mbp.mamba"):
        model(torch.randn(1, 5, 16))
        model(torch.randn(1, 5, 16))
    assert [r.getMessage() for r in caplog.records] == [
        "mbp: mamba backbone runs the PyTorch chunked-SSD path"
    ]


def test_import_never_needs_mamba_ssm() -> None:
    import importlib.util

    from mbp_mamba.kernels import fused_scan

    if importlib.util.find_spec("mamba_ssm") is None:
        assert fused_scan() is None


def test_gated_norm_normalizes_each_group_like_mamba_ssm() -> None:
    from mbp_mamba.mixer import GatedRMSNorm

    x, z = torch.randn(2, 3, 8, dtype=torch.float64), torch.randn(2, 3, 8, dtype=torch.float64)
    norm = GatedRMSNorm(8, groups=2).double()
    gated = x * torch.nn.functional.silu(z)
    halves = [h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5) for h in gated.split(4, dim=-1)]
    torch.testing.assert_close(norm(x, z), torch.cat(halves, dim=-1))
    model = Mamba(MambaParams(state=4, headdim=8, groups=2, chunk=4), dim=16, layers=1)
    from mbp.testing import assert_backbone_causal, assert_step_matches_forward

    assert_backbone_causal(model, 16)
    assert_step_matches_forward(
        Mamba(MambaParams(state=4, headdim=8, groups=2, chunk=4), dim=16, layers=1), 16
    )
