"""What a plugin declares is checked when the pipeline is resolved: traits that name a method the codec
lacks, or defaults that cannot train, are refused in one line naming the plugin, before any training."""

from __future__ import annotations

from pathlib import Path

import pytest
from mbp.api import CodecTraits, HeadDefaults, Segment, hookimpl
from mbp.errors import PluginError
from mbp.plugins import new_platform
from mbp.resolve import resolve
from mbp_tasks.lm import LmHead

from tests.shardkit import tiny_registry


class Claims:
    """Declares rows and augmentation it cannot give: no ``row_bytes``, no ``encode_augmented``."""

    name, extension = "claims", "bin"
    traits = CodecTraits(rows=True, augment="run")

    def __init__(self, params: object) -> None:
        pass

    def encode(self, data: bytes) -> Segment:
        return Segment("claims", data)

    def decode(self, segment: Segment) -> bytes:
        return segment.payload

    def to_file(self, segment: Segment) -> bytes:
        return segment.payload


class Heavy(LmHead):
    name = "heavy"
    defaults = HeadDefaults(batch_size=0, dropout=1.0)


class Plugin:
    @hookimpl
    def mbp_register_codecs(self, register):  # type: ignore[no-untyped-def]
        register("claims", Claims)

    @hookimpl
    def mbp_register_heads(self, register):  # type: ignore[no-untyped-def]
        register("heavy", Heavy)


def resolving(tmp_path: Path, codec: str, head: str) -> None:
    (tmp_path / "r.yaml").write_text(tiny_registry("p", {"x": codec}, f"type: {head}", (16, 16), 4))
    resolve(str(tmp_path / "r.yaml"), "p", components=new_platform({"claims": Plugin()}).components)


def test_traits_that_name_a_missing_method_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PluginError) as refused:
        resolving(tmp_path, "claims", "lm")
    assert str(refused.value) == "codec 'claims': its traits name row_bytes, encode_augmented, which it lacks"


def test_defaults_that_cannot_train_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PluginError) as refused:
        resolving(tmp_path, "text", "heavy")
    assert str(refused.value) == (
        "head 'heavy': defaults: batch_size must be a whole number of at least 1, got 0; "
        "dropout must be a number in [0, 1), got 1.0"
    )
