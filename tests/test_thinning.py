"""Issue 14: answer heads score a random share of a training sample's context rows (``ThinningHead``),
weighted up so the expected loss is unchanged; the model skips the other rows exactly; evaluation and
resumed runs are unaffected."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mbp.data.batches import encoded_stream
from mbp.data.skips import SkipLog
from mbp.planning.budget import TRAIN_SECONDS, ceiling
from mbp.planning.probe import Probe
from mbp.planning.rows import with_seq_len
from mbp.protocol import PAD
from mbp.resolve import resolve
from mbp.traits import head_defaults

from tests.conftest import tiny_model
from tests.shardkit import qa_registry, write_tar
from tests.test_heads import head, sample

ROW = 4  # tiny_model's byte-level rows


def target_rows(weights: np.ndarray, row: int) -> np.ndarray:
    """(rows, row) weights of the tokens each byte-level row predicts: row r, tokens r*row+1 ..."""
    targets = weights[1:]
    return np.pad(targets, (0, -len(targets) % row)).reshape(-1, row)


def test_thinned_rows_are_all_or_nothing_and_keep_the_expected_weight(components) -> None:
    s = sample(bytes(range(97, 123)) * 8, b"yes")
    vqa = head(components, "vqa", context_weight=0.1, context_rows=0.25)
    assert head_defaults(vqa).thins_context and not head_defaults(head(components, "lm")).thins_context
    full = vqa.token_weights(s)
    answer = full == 1.0
    draws = np.stack([vqa.training_weights(s, np.random.default_rng(seed), 8) for seed in range(400)])
    assert (draws[:, answer] == 1.0).all()  # the answer is always scored, as it was
    values = np.unique(draws[:, ~answer])
    assert np.allclose(values, [0.0, 0.1, 0.4])  # 0.1: context in a row that holds the answer, scored as was
    rows = np.stack([target_rows(d, 8) for d in draws])
    context_only = ~target_rows(answer, 8).any(axis=1)
    context_only[-1] = False  # the last row's padding is not context
    kept = rows[:, context_only].any(axis=2)
    scored = rows[:, context_only]
    assert ((scored > 0).all(axis=2) == kept).all()  # a row is scored whole or skipped whole
    assert kept.mean() == pytest.approx(0.25, abs=0.02)
    assert draws[:, ~answer].mean() == pytest.approx(0.1, rel=0.05)  # the expected loss is unchanged
    same = vqa.training_weights(s, np.random.default_rng(7), 8)
    assert np.array_equal(same, draws[7])  # the sample's generator decides: resumes replay it


def test_all_rows_or_no_context_weight_leave_the_weights_alone(components) -> None:
    s = sample(b"x" * 60, b"no")
    for params in ({"context_rows": 1.0}, {"context_weight": 0.0}):
        classify = head(components, "classify", label_field="answer", **params)
        full = classify.token_weights(s)
        assert np.array_equal(classify.training_weights(s, np.random.default_rng(0), 8), full)


def test_the_model_computes_only_the_scored_rows_and_their_loss_is_exact(components) -> None:
    torch.manual_seed(0)
    model = tiny_model(components, 2).eval()
    s = sample(b"the quick brown fox jumps over the lazy dog " * 3, b"fox")
    vqa = head(components, "vqa", context_rows=0.25)
    weights = torch.as_tensor(vqa.training_weights(s, np.random.default_rng(1), ROW))[None]
    ids = torch.as_tensor(s.tokens.astype(np.int64))[None]
    seen: list[int] = []
    hook = model.backbones[1].register_forward_hook(lambda _m, args, _o: seen.append(args[0].shape[0]))
    with torch.no_grad():
        loss = model.loss(ids, weights).loss
        hook.remove()
        logits = model(ids)
    all_rows = -(-ids.shape[1] // ROW)
    assert seen[0] < 0.5 * all_rows  # most byte-level rows were never computed
    w = weights * (ids != PAD)
    ce = F.cross_entropy(logits[0], ids[0], reduction="none")
    assert loss.item() == pytest.approx(((ce * w[0]).sum() / w.sum()).item(), rel=1e-5)


def test_training_samples_are_thinned_and_evaluation_ones_never(tmp_path: Path, components) -> None:
    registry = tmp_path / "registry.yaml"
    registry.write_text(qa_registry())
    samples = [
        {"__key__": f"s{i}".encode(), "question.txt": b"which letter is this? " * 4, "answer.txt": b"q"}
        for i in range(4)
    ]
    write_tar(tmp_path / "s.tar", samples)
    encoder = resolve(str(registry), "ask", components=components).encoder
    assert encoder.row == ROW

    def weights(augment: bool) -> list[np.ndarray]:
        items = encoded_stream([str(tmp_path / "s.tar")], encoder, 512, SkipLog(), augment=augment)
        return [s.weights for (s, _), _ in zip(items, range(4), strict=False)]

    evaluation, training = weights(False), weights(True)
    for plain, thinned in zip(evaluation, training, strict=True):
        assert np.allclose(np.unique(plain), [0.01, 1.0])  # the default context_weight
        assert (thinned == 0).sum() > len(thinned) // 2 and thinned.max() == 1.0
    assert all(np.array_equal(a, b) for a, b in zip(weights(True), training, strict=True))


def test_the_planner_times_a_step_on_rows_thinned_as_training_thins_them(tmp_path: Path, components) -> None:
    samples = [
        {"__key__": f"s{i}".encode(), "question.txt": b"which letter is this? " * 12, "answer.txt": b"q"}
        for i in range(64)
    ]
    write_tar(tmp_path / "s.tar", samples)
    weighted, per_step = {}, set()
    for rows in (0.25, 1.0):
        registry = tmp_path / f"registry-{rows}.yaml"
        registry.write_text(qa_registry(f"type: vqa, context_rows: {rows}"))
        resolved = with_seq_len(resolve(str(registry), "ask", components=components), 1024)
        probe = Probe([str(tmp_path / "s.tar")])
        timed = probe.timing_batches(resolved, 4)
        weighted[rows] = sum(int((batch.weights > 0).sum()) for batch in timed)
        per_step.add(probe.per_step(resolved, 4))
    assert len(per_step) == 1  # thinning changes what a step costs, not what it holds
    # the step is timed on a quarter of the context rows weighted, as training weights them (rows the
    # model skips cost nothing); the answers' rows all keep theirs
    assert 0.2 < weighted[0.25] / weighted[1.0] < 0.6
    assert ceiling(TRAIN_SECONDS / 10, TRAIN_SECONDS) == 10
    assert ceiling(TRAIN_SECONDS * 10, TRAIN_SECONDS) == 1
