"""Building a MultiscaleDecoder from a validated model config through the component table."""

from __future__ import annotations

from typing import Any

from mbp.backbones import build_backbone
from mbp.components import ComponentTable
from mbp.config import ModelConfig
from mbp.model.decoder import MultiscaleDecoder, Stage


def build_model(config: ModelConfig | dict[str, Any], components: ComponentTable) -> MultiscaleDecoder:
    cfg = config if isinstance(config, ModelConfig) else ModelConfig.model_validate(config)
    stages = [
        Stage(
            build_backbone(components, s.backbone.as_dict(), s.dim, s.layers), s.dim, s.seq_len, s.checkpoint
        )
        for s in cfg.stages
    ]
    return MultiscaleDecoder(stages, loss_chunk=cfg.loss_chunk)
