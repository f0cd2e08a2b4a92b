"""Built-in plugin: the ``transformer`` backbone (causal SDPA, RoPE, RMSNorm, SwiGLU or GELU MLP)."""

from __future__ import annotations

from mbp.api import Backbone, Register, hookimpl

from mbp_transformer.model import Transformer, TransformerParams


@hookimpl
def mbp_register_backbones(register: Register[Backbone]) -> None:
    register("transformer", Transformer, TransformerParams)
