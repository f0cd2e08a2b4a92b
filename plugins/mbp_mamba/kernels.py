"""mamba-ssm's fused CUDA kernels, when present. Importing mbp never fails because they are missing:
mamba-ssm imports its CUDA extension unconditionally, so any failure means "use the PyTorch path"."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cache
from typing import Any

log = logging.getLogger("mbp.mamba")
_announced: set[str] = set()


@cache
def fused_scan() -> Callable[..., Any] | None:
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_split_conv1d_scan_combined
    except Exception as error:  # ImportError, OSError from CUDA libraries, anything at import time
        log.debug("mamba-ssm unavailable: %s", error)
        return None
    return mamba_split_conv1d_scan_combined


def announce(path: str) -> None:
    """Say once per process which Mamba path runs."""
    if path not in _announced:
        _announced.add(path)
        log.warning("mbp: mamba backbone runs the %s path", path)
