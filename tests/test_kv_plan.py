"""The row plan every KV cache's generation step follows: slots, visibility, writes, capacity."""

from __future__ import annotations

import pytest
import torch
from mbp.model import kv_plan
from mbp.model.kv_plan import KVPlanner, small_attention

T, F = True, False


def test_rows_at_one_position_see_everything_up_to_it() -> None:
    plan = KVPlanner(2, 6, torch.device("cpu")).plan(torch.tensor([3, 3]), torch.tensor([T, T]))
    assert plan.slot.tolist() == [3, 3] and plan.span == 4
    assert plan.visible is None and plan.active is None and plan.rows.tolist() == [0, 1]


def test_rows_at_different_positions_do_not_see_beyond_their_own() -> None:
    plan = KVPlanner(3, 6, torch.device("cpu")).plan(torch.tensor([1, 4, 2]), torch.tensor([T, T, T]))
    assert plan.span == 5 and plan.visible is not None
    assert plan.visible.tolist() == [[T, T, F, F, F], [T, T, T, T, T], [T, T, T, F, F]]


def test_a_full_row_sitting_out_writes_nothing_and_raises_nothing() -> None:
    planner = KVPlanner(2, 4, torch.device("cpu"))
    plan = planner.plan(torch.tensor([4, 1]), torch.tensor([F, T]))
    assert plan.slot.tolist() == [3, 1] and plan.span == 4 and plan.active is not None
    store = torch.arange(2 * 1 * 4 * 1, dtype=torch.float64).view(2, 1, 4, 1)
    plan.write(store, torch.full((2, 1, 1), -1.0, dtype=torch.float64))
    assert store.flatten().tolist() == [0, 1, 2, 3, 4, -1, 6, 7]
    assert planner.plan(torch.tensor([4, 1]), torch.tensor([F, F])).span == 4  # nobody advances
    with pytest.raises(RuntimeError, match="KV cache capacity 4 exceeded"):
        planner.plan(torch.tensor([4, 1]), torch.tensor([T, T]))


def test_the_attention_path_follows_the_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = torch.zeros(2, 4, 8, 16)
    assert small_attention(keys) and not small_attention(torch.zeros(kv_plan.SMALL_ATTENTION + 1))
    monkeypatch.setattr(kv_plan, "SMALL_ATTENTION", 0)  # what the long-cache tests rely on
    assert not small_attention(keys)
