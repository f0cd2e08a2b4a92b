"""Built-in plugin for people coming from the public ``mblm`` package: the ``mblm-transformer`` backbone
(mblm's TransformerBlock, exactly) and ``mbp import mblm`` (its checkpoints become mbp checkpoints)."""

from __future__ import annotations

from mbp.api import Backbone, Register, RegisterImporter, hookimpl

from mbp_mblm.block import MblmTransformer, MblmTransformerParams


@hookimpl
def mbp_register_backbones(register: Register[Backbone]) -> None:
    register("mblm-transformer", MblmTransformer, MblmTransformerParams)


@hookimpl
def mbp_register_importers(register: RegisterImporter) -> None:
    from mbp_mblm.cli import import_mblm

    register("mblm", import_mblm)
