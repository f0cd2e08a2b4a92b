"""CUDA paths: cached generation on the GPU, mamba-ssm's fused kernel against the PyTorch chunked scan, and a
bf16 training step. They run where a GPU is present (benchmarks/gpu_check.sh on a lent device); CI has no GPU,
so there they skip."""

from __future__ import annotations

import pytest
import torch
from mbp.generate import generate
from mbp.testing import generate_uncached
from mbp_mamba import mixer
from mbp_mamba.backbone import Mamba, MambaParams
from mbp_mamba.kernels import fused_scan

from tests.conftest import tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

STACKS = [
    ("transformer",),
    ("mamba", "transformer"),
    ("transformer", "mamba"),
    ("mamba", "transformer", "transformer"),
]


@pytest.mark.parametrize("backbones", STACKS, ids=lambda b: "-".join(b))
def test_cached_greedy_equals_uncached_on_cuda(components, backbones: tuple[str, ...]) -> None:
    # float64 so that the cached and full-forward kernels agree to the last bit and greedy ties cannot flip.
    model = tiny_model(components, len(backbones), backbones).double().cuda().eval()
    prompts = [torch.randint(0, 256, (n,), device="cuda") for n in (1, 4, 11, 13, 25)]
    cached = generate(model, prompts, max_new=30, stop_tokens=())
    for prompt, tokens in zip(prompts, cached, strict=True):
        assert tokens == generate_uncached(model, prompt, 30)
    assert len({t for row in cached for t in row}) > 5


def _outputs_and_grads(model: Mamba, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    out = model(x)
    (out * torch.linspace(-1, 1, out.shape[-1], device=out.device)).sum().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_fused_mamba_kernel_matches_the_pytorch_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    if fused_scan() is None:
        pytest.skip("mamba-ssm is not installed")
    torch.manual_seed(0)
    model = Mamba(MambaParams(state=32, headdim=32, groups=2, chunk=32), dim=128, layers=2).cuda()
    x = torch.randn(2, 1000, 128, device="cuda")  # not a multiple of either chunk length
    fused, fused_grads = _outputs_and_grads(model, x)
    monkeypatch.setattr(mixer, "fused_scan", lambda: None)
    reference, reference_grads = _outputs_and_grads(model, x)
    # mamba-ssm's Triton matmuls run in TF32 (10-bit mantissa); PyTorch's fp32 path does not, hence 1e-2.
    torch.testing.assert_close(fused, reference, rtol=1e-2, atol=1e-2)
    for got, want in zip(fused_grads, reference_grads, strict=True):
        assert float((got - want).norm() / want.norm().clamp_min(1e-12)) < 1e-2


def test_bf16_training_step_lowers_the_loss_on_cuda(components) -> None:
    torch.manual_seed(0)
    model = tiny_model(components, 2, ("mamba", "transformer")).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = (torch.arange(96, device="cuda") * 3 % 17).repeat(4, 1)  # a learnable pattern
    losses = []
    for _ in range(20):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model.loss(ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]
