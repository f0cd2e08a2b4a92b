"""Building registered backbones."""

from __future__ import annotations

from typing import Any

from torch import nn

from mbp.components import ComponentTable
from mbp.model.backbone import Identity


def build_backbone(components: ComponentTable, ref: dict[str, Any], dim: int, layers: int) -> nn.Module:
    if layers == 0:
        components.get("backbones", ref["type"])  # still reject unknown names
        return Identity()
    module = components.build("backbones", ref, dim=dim, layers=layers)
    if not isinstance(module, nn.Module):
        raise TypeError(f"backbone '{ref['type']}' did not build a torch.nn.Module")
    return module
