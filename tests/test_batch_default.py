"""Rows a step left unset come from the head: one for ``lm`` (many small steps learn more per byte in a
budget of minutes), ``DEFAULT_BATCH`` for a head that names none; a pipeline's own value always wins."""

from __future__ import annotations

from pathlib import Path

import pytest
from mbp.api import HeadDefaults
from mbp.config import settled_batch_size
from mbp.planning.constants import DEFAULT_BATCH
from mbp.plugins import get_platform
from mbp.resolve import resolve, with_batch_size

from tests.shardkit import lm_registry, qa_registry


def resolved_rows(tmp_path: Path, text: str, name: str) -> int:
    (tmp_path / "registry.yaml").write_text(text)
    resolved = resolve(str(tmp_path / "registry.yaml"), name, components=get_platform().components)
    return settled_batch_size(resolved.pipeline.data)


def test_lm_trains_one_row_a_step_unless_the_pipeline_says_otherwise(tmp_path: Path) -> None:
    assert resolved_rows(tmp_path, lm_registry(4, "seq_len: 64"), "lm") == 1
    assert resolved_rows(tmp_path, lm_registry(4, "seq_len: 64, batch_size: 3"), "lm") == 3


def test_answer_heads_take_the_default_batch(tmp_path: Path) -> None:
    assert resolved_rows(tmp_path, qa_registry(), "ask") == DEFAULT_BATCH == 8
    assert resolved_rows(tmp_path, qa_registry("type: classify, label_field: answer"), "ask") == 8


def test_a_third_party_head_names_its_own_batch(tmp_path: Path) -> None:
    wide = HeadDefaults(batch_size=32)
    (tmp_path / "registry.yaml").write_text(qa_registry())
    resolved = resolve(str(tmp_path / "registry.yaml"), "ask", components=get_platform().components)
    unset = resolved.pipeline.model_copy(
        update={"data": resolved.pipeline.data.model_copy(update={"batch_size": None})}
    )
    assert with_batch_size(unset, wide).data.batch_size == 32
    assert with_batch_size(resolved.pipeline, wide).data.batch_size == 8


def test_an_unresolved_batch_is_not_read_as_a_number() -> None:
    from mbp.config import DataConfig

    with pytest.raises(ValueError, match="batch_size is filled in from the head"):
        settled_batch_size(DataConfig())
