"""Training precision as a policy: bf16 where the hardware multiplies it fast, fp32 elsewhere.

bf16 pays off only where matrix products run natively in it: CUDA GPUs that support it, and CPUs with
AMX or AVX512-BF16. Elsewhere PyTorch emulates bf16 products and is far slower than fp32 (measured on
an AMD EPYC without either: 1 GFLOP/s in bf16 against 53-88 in fp32 on the model's shapes), so ``auto``
never picks it there. Weights stay fp32 in every case (autocast casts per op), and the loss and the
evaluation metrics are summed in fp32.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch

Setting = Literal["auto", "fp32", "bf16"]
Precision = Literal["fp32", "bf16"]

FAST_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
"""/proc/cpuinfo flags of CPUs that multiply bf16 in hardware (Intel Sapphire Rapids+, AMD Zen 4+)."""


@dataclass(frozen=True)
class PrecisionChoice:
    precision: Precision
    reason: str

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[object]:
        """The context a forward pass runs in: bf16 autocast, or nothing for fp32."""
        if self.precision == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def describe(self) -> str:
        return f"{self.precision} ({self.reason})"


CPU_FLAGS_VARIABLE = "MBP_CPU_FLAGS"


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags: everything that asks what this CPU can do asks here.

    ``MBP_CPU_FLAGS``, when set, overrides what the CPU reports: space-separated flags as
    /proc/cpuinfo spells them (``MBP_CPU_FLAGS="amx_bf16"`` is a CPU with fast bf16,
    ``MBP_CPU_FLAGS=""`` one with no flags at all). Tests pin it so that no result depends on the
    machine that runs them, and a user can keep ``auto`` precision off bf16 on a CPU that reports
    a flag it runs slowly. Unset, the flags are what Linux reports in /proc/cpuinfo (none where it
    does not exist).
    """
    given = os.environ.get(CPU_FLAGS_VARIABLE)
    if given is not None:
        return frozenset(given.split())
    return _reported_cpu_flags()


@lru_cache(maxsize=1)
def _reported_cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    return any(flag in cpu_flags() for flag in FAST_BF16_CPU_FLAGS)


def choose_precision(setting: Setting, device: torch.device) -> PrecisionChoice:
    """Resolve ``train.precision`` for ``device``; an explicit setting is always honoured."""
    if setting != "auto":
        return PrecisionChoice(setting, "set by train.precision")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return PrecisionChoice("bf16", "auto: this GPU supports bf16")
        return PrecisionChoice("fp32", "auto: this GPU has no bf16")
    if device.type == "cpu":
        told = f" (as {CPU_FLAGS_VARIABLE} says)" if CPU_FLAGS_VARIABLE in os.environ else ""
        if cpu_has_fast_bf16():
            return PrecisionChoice("bf16", f"auto: this CPU has AMX or AVX512-BF16{told}")
        return PrecisionChoice(
            "fp32", f"auto: this CPU has no AMX or AVX512-BF16{told}, bf16 would be emulated"
        )
    return PrecisionChoice("fp32", f"auto: no bf16 policy for {device.type}")
