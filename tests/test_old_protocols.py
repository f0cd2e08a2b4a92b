"""A plugin written against the optional protocols that ``CodecTraits`` and ``HeadDefaults`` replace
(``ContextWeighting``, ``RowLayout``, ``BatchingHead`` and the head's ``field``, ``dropout`` and
``selection``) still loads and behaves as its new-style twin, with one warning per plugin class naming
the value to declare; the example plugin, which uses none of them, loads without a warning."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from mbp.api import CodecTraits, HeadDefaults, PluginDeprecationWarning, Segment, WordStarts, hookimpl
from mbp.data.read import RawSample
from mbp.plugins import new_platform
from mbp.resolve import Resolved, resolve
from mbp_tasks.lm import BitsPerByte

from tests.shardkit import tiny_registry

ROOT = Path(__file__).resolve().parents[1]


class OldGrid:
    """Rows of four bytes, weighted 0.2 as context, declared the old way."""

    name, extension = "grid", "bin"
    context_weight = 0.2

    def __init__(self, params: object) -> None:
        pass

    def encode(self, data: bytes) -> Segment:
        return Segment("grid", data, {"w": "4"})

    def decode(self, segment: Segment) -> bytes:
        return segment.payload

    def to_file(self, segment: Segment) -> bytes:
        return segment.payload

    def row_bytes(self, segment: Segment) -> int | None:
        return int(segment.meta["w"])


class NewGrid(OldGrid):
    traits = CodecTraits(context_weight=0.2, rows=True)


class OldAnswer:
    """Answers ``answer``; three rows a step, light dropout, accuracy picks the best: the old way."""

    name, generate_field = "old-answer", None
    field = "answer"
    batch_size, dropout, selection = 3, 0.05, ("accuracy", "max")

    def __init__(self, params: object) -> None:
        pass

    def token_weights(self, sample):  # type: ignore[no-untyped-def]
        weights = np.ones(len(sample.tokens), np.float32)
        for span in sample.spans:
            if span.context_weight is not None:
                weights[span.start : span.end] = span.context_weight
        return weights

    def metrics(self) -> BitsPerByte:
        return BitsPerByte()


class NewAnswer(OldAnswer):
    defaults = HeadDefaults(
        answers="answer", batch_size=3, dropout=0.05, selection_metric="accuracy", selection_mode="max"
    )


class Plugin:
    @hookimpl
    def mbp_register_codecs(self, register):  # type: ignore[no-untyped-def]
        register("old-grid", OldGrid)
        register("new-grid", NewGrid)

    @hookimpl
    def mbp_register_heads(self, register):  # type: ignore[no-untyped-def]
        register("old-answer", OldAnswer)
        register("new-answer", NewAnswer)


def resolved(tmp_path: Path, style: str) -> Resolved:
    fields = {"grid": f"{style}-grid", "answer": "text"}
    (tmp_path / f"{style}.yaml").write_text(tiny_registry("p", fields, f"type: {style}-answer", (32, 16), 4))
    components = new_platform({"twins": Plugin()}).components
    return resolve(str(tmp_path / f"{style}.yaml"), "p", components=components)


def test_an_old_plugin_resolves_to_its_new_style_twin_with_one_warning_each(tmp_path: Path) -> None:
    with pytest.warns(PluginDeprecationWarning) as caught:
        old = resolved(tmp_path, "old")
    assert [str(w.message) for w in caught] == [
        "head 'old-answer' (tests.test_old_protocols.OldAnswer) declares field, batch_size, dropout, "
        "selection through the deprecated optional protocols; declare `defaults = HeadDefaults("
        "answers='answer', batch_size=3, dropout=0.05, selection_metric='accuracy', selection_mode='max')` "
        "(mbp.api) instead: the old ones are read for one more release",
        "codec 'grid' (tests.test_old_protocols.OldGrid) declares context_weight, row_bytes through the "
        "deprecated optional protocols; declare `traits = CodecTraits(context_weight=0.2, rows=True)` "
        "(mbp.api) instead: the old ones are read for one more release",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per class: resolving again, and the new style, say nothing
        again, new = resolved(tmp_path, "old"), resolved(tmp_path, "new")
    assert old.defaults == again.defaults == new.defaults == NewAnswer.defaults
    assert old.encoder.fields["grid"].traits == new.encoder.fields["grid"].traits == NewGrid.traits
    assert old.encoder.fields["answer"].traits == CodecTraits(boundaries=WordStarts())  # text: words only
    assert old.pipeline.data.batch_size == new.pipeline.data.batch_size == 3
    raw = RawSample("s.tar", "0", {"grid.bin": bytes(range(8)), "answer.txt": b"yes"})
    a, b = old.encoder.encode(raw), new.encoder.encode(raw)
    assert a.tokens.tolist() == b.tokens.tolist() and a.weights.tolist() == b.weights.tolist()
    grid = a.span("grid")
    assert np.allclose(a.weights[grid.start : grid.end], 0.2) and a.weights[-2] == 1.0
    segment = old.encoder.codecs["grid"].encode(bytes(8))
    assert old.encoder.fields["grid"].row_bytes(segment) == new.encoder.fields["grid"].row_bytes(segment) == 4


def test_the_example_plugin_loads_unchanged_without_a_warning(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "examples" / "mbp-rot13"))
    try:
        import mbp_rot13
    finally:
        sys.path.remove(str(ROOT / "examples" / "mbp-rot13"))
    (tmp_path / "r.yaml").write_text(tiny_registry("r", {"txt": "rot13"}, "type: lm", (16, 16), 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = resolve(str(tmp_path / "r.yaml"), "r", components=new_platform({"rot13": mbp_rot13}).components)
    assert got.encoder.fields["txt"].traits == CodecTraits() and got.encoder.fields["txt"].plugin == "rot13"
    sample = got.encoder.encode(RawSample("s.tar", "0", {"txt": b"hello"}))
    assert bytes(sample.tokens[-7:-2].astype(np.uint8)) == b"uryyb"  # ... payload, END, EOS


def test_the_command_says_a_plugins_deprecation_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from mbp.cli import _plugin_warnings_in_one_line

    others: list[str] = []
    show = _plugin_warnings_in_one_line(lambda message, *rest: others.append(str(message)))
    show(PluginDeprecationWarning("codec 'grid' declares row_bytes ..."), PluginDeprecationWarning, "f.py", 1)
    show(UserWarning("not a plugin's"), UserWarning, "f.py", 2)
    assert capsys.readouterr().err == "mbp: warning: codec 'grid' declares row_bytes ...\n"
    assert others == ["not a plugin's"]
