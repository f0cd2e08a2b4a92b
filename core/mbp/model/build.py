"""Building a MultiscaleDecoder from a validated model config through the component table."""

from __future__ import annotations

from typing import Any

from torch import nn

from mbp.components import ComponentTable
from mbp.config import ModelConfig
from mbp.model.backbone import Identity
from mbp.model.decoder import MultiscaleDecoder, Stage


def build_backbone(components: ComponentTable, ref: dict[str, Any], dim: int, layers: int) -> nn.Module:
    """A registered backbone, or the identity for a stage of zero layers (whose name is still checked)."""
    if layers == 0:
        components.get("backbones", ref["type"])
        return Identity()
    module = components.build("backbones", ref, dim=dim, layers=layers)
    if not isinstance(module, nn.Module):
        raise TypeError(f"backbone '{ref['type']}' did not build a torch.nn.Module")
    return module


def build_model(config: ModelConfig | dict[str, Any], components: ComponentTable) -> MultiscaleDecoder:
    cfg = config if isinstance(config, ModelConfig) else ModelConfig.model_validate(config)
    stages = [
        Stage(
            build_backbone(components, s.backbone.as_dict(), s.dim, s.layers),
            s.dim,
            cfg.patches[index - 1] if index else s.seq_len,  # per stage: patch count, then patch sizes
            s.checkpoint,
        )
        for index, s in enumerate(cfg.stages)
    ]
    return MultiscaleDecoder(stages, loss_chunk=cfg.loss_chunk, rules=cfg.boundary_rules)
