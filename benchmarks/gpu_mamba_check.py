"""Issue 7's device check, for a machine with a CUDA GPU and `pip install -e ".[mamba]"` (mamba-ssm).

One script: the same Mamba weights through the fused mamba-ssm kernel path and through mbp's PyTorch
chunked-SSD path, on the GPU; prints the largest output and gradient differences and both paths'
forward+backward throughput as one JSON document. Not run in CI (CI has no GPU). benchmarks/gpu_check.sh
runs it on a lent device machine, where mamba-ssm is built from source (gpu_mamba_bootstrap.py).

Run: python benchmarks/gpu_mamba_check.py
"""

from __future__ import annotations

import json
import time

import mbp_mamba.mixer as mixer
import torch
from mbp_mamba.backbone import Mamba, MambaParams
from mbp_mamba.kernels import fused_scan


def timed(model: Mamba, x: torch.Tensor, repeats: int = 10) -> float:
    for _ in range(2):
        model(x).sum().backward()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        model(x).sum().backward()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    assert torch.cuda.is_available(), "needs a CUDA device"
    assert fused_scan() is not None, "needs mamba-ssm: pip install -e '.[mamba]'"
    torch.manual_seed(0)
    model = Mamba(MambaParams(state=64, headdim=64, chunk=64), dim=256, layers=2).cuda()
    x = torch.randn(2, 4096, 256, device="cuda", requires_grad=True)
    fused_out = model(x)
    fused_out.sum().backward()
    fused_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    x.grad = None
    original = mixer.fused_scan
    mixer.fused_scan = lambda: None  # force the PyTorch path
    try:
        torch_out = model(x)
        torch_out.sum().backward()
        torch_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        torch_s = timed(model, x)
    finally:
        mixer.fused_scan = original
    fused_s = timed(model, x)
    print(
        json.dumps(
            {
                "max_abs_output_diff": float((fused_out - torch_out).abs().max()),
                "max_rel_grad_diff": max(
                    float((a - b).norm() / b.norm().clamp_min(1e-12))
                    for a, b in zip(fused_grads, torch_grads, strict=True)
                ),
                "fused_fwd_bwd_s": fused_s,
                "torch_fwd_bwd_s": torch_s,
                "tokens_per_s_fused": 2 * 4096 / fused_s,
                "device": torch.cuda.get_device_name(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
