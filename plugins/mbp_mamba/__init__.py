"""Built-in plugin: the ``mamba`` backbone (Mamba-2; mamba-ssm kernels on CUDA, chunked SSD in PyTorch)."""

from __future__ import annotations

from mbp.api import Backbone, Register, hookimpl

from mbp_mamba.backbone import Mamba, MambaParams


@hookimpl
def mbp_register_backbones(register: Register[Backbone]) -> None:
    register("mamba", Mamba, MambaParams)
