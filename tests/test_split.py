"""Language-model rows are filled to the end: a text that does not fit goes on in the next row, a text
longer than a row is cut instead of skipped, and a resumed stream starts inside a cut text exactly where
the uninterrupted one went on."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from mbp.data.batches import Batch, Position, batches, encoded_stream
from mbp.data.skips import SkipLog
from mbp.plugins import get_platform
from mbp.protocol import PAD
from mbp.resolve import Resolved, resolve
from mbp.sample import EncodedSample, Span
from mbp.traits import head_defaults
from safetensors.torch import load_file

from tests.conftest import invoke_mbp
from tests.shardkit import lm_registry, write_tar

PATCH, SEQ_LEN, BATCH = 4, 64, 2
TEXT = lm_registry(
    PATCH, f"seq_len: {SEQ_LEN}, batch_size: {BATCH}, shuffle_buffer: 4", "steps: 6, eval_every: 3"
)


def texts(tmp_path: Path, count: int = 23) -> tuple[Resolved, list[str], list[bytes]]:
    """Texts of 5 to 150 bytes (rows hold 64 tokens), in two shards."""
    (tmp_path / "registry.yaml").write_text(TEXT)
    resolved = resolve(str(tmp_path / "registry.yaml"), "lm", components=get_platform().components)
    rng = np.random.default_rng(0)
    bodies = [bytes(rng.integers(97, 123, int(rng.integers(5, 150))).astype(np.uint8)) for _ in range(count)]
    samples = [{"__key__": f"{i:05d}".encode(), "txt": body} for i, body in enumerate(bodies)]
    shards = [str(tmp_path / "train-0.tar"), str(tmp_path / "train-1.tar")]
    write_tar(Path(shards[0]), samples[: count // 2])
    write_tar(Path(shards[1]), samples[count // 2 :])
    return resolved, shards, bodies


def stream(resolved: Resolved, shards: list[str], start: Position | None = None, repeat: bool = True):
    return encoded_stream(
        shards, resolved.encoder, SEQ_LEN, SkipLog(quiet=True), seed=0, shuffle_buffer=4,
        start=start, repeat=repeat, split=True,
    )  # fmt: skip


def packed(resolved: Resolved, shards: list[str], start: Position | None = None, repeat: bool = True):
    return batches(
        stream(resolved, shards, start, repeat), BATCH, SEQ_LEN, pack=True, align=PATCH, split=True
    )


def test_only_heads_that_say_so_cut_samples(tmp_path: Path) -> None:
    resolved, _, _ = texts(tmp_path)
    assert resolved.split and resolved.defaults.split_samples
    components = get_platform().components
    for name in ("vqa", "classify"):
        head = components.build("heads", {"type": name, **({"answer_field": "a"} if name == "vqa" else {})})
        assert not head_defaults(head).split_samples


def test_rows_are_full_and_the_pieces_are_the_texts_in_order(tmp_path: Path) -> None:
    resolved, shards, bodies = texts(tmp_path)
    whole = [sample.tokens for sample, _ in stream(resolved, shards, repeat=False)]
    assert len(whole) == len(bodies) and max(map(len, whole)) > SEQ_LEN  # nothing skipped for length
    out: list[Batch] = [b for b, _ in packed(resolved, shards, repeat=False)]
    pieces = [(sample, int(start)) for b in out for row, starts in zip(b.rows, b.starts, strict=True)
              for sample, start in zip(row, starts, strict=True)]  # fmt: skip
    # put back together, the pieces are the stream's texts, each whole and in order
    rebuilt: list[np.ndarray] = []
    for sample, _ in pieces:
        if sample.first == 0:
            rebuilt.append(sample.tokens)
        else:
            assert sample.first == len(rebuilt[-1])  # a piece goes on where the last one stopped
            rebuilt[-1] = np.concatenate([rebuilt[-1], sample.tokens])
    assert [r.tobytes() for r in rebuilt] == [w.tobytes() for w in whole]
    rows = [(tokens, row) for b in out for tokens, row in zip(b.tokens, b.rows, strict=True)]
    # every row but the last is filled to its end: its only padding aligns a text's end to a patch
    for tokens, row in rows[:-1]:
        assert int((tokens == PAD).sum()) <= (PATCH - 1) * len(row)
    assert sum(int((tokens == PAD).sum()) for tokens, _ in rows[:-1]) < 0.05 * SEQ_LEN * (len(rows) - 1)
    # a piece that goes on in the next row starts there at position 0, and the cut texts count
    assert all(start == 0 for sample, start in pieces if sample.first > 0)
    assert sum(sample.first > 0 for sample, _ in pieces) >= 5
    assert sum(int((tokens != PAD).sum()) for tokens, _ in rows) == sum(len(w) for w in whole)


def test_piece_cuts_spans_and_weights() -> None:
    sample = EncodedSample(
        "s.tar", "k", np.arange(10), [Span("a", "text", 0, 4), Span("b", "text", 4, 10)],
        np.linspace(0, 1, 10, dtype=np.float32),
    )  # fmt: skip
    head, tail = sample.piece(0, 6), sample.piece(6)
    assert head.spans == [Span("a", "text", 0, 4), Span("b", "text", 4, 6)]
    assert tail.spans == [Span("b", "text", 0, 4)] and tail.first == 6
    assert tail.piece(1).first == 7 and tail.piece(1).tokens.tolist() == [7, 8, 9]
    assert np.array_equal(np.concatenate([head.weights, tail.weights]), sample.weights)


@pytest.mark.parametrize("cut", [1, 2, 3, 5, 8, 13])
def test_a_resumed_stream_goes_on_inside_a_cut_text(tmp_path: Path, cut: int) -> None:
    resolved, shards, _ = texts(tmp_path)
    straight = list(itertools.islice(packed(resolved, shards), 20))
    position = straight[cut - 1][1]
    resumed = list(itertools.islice(packed(resolved, shards, position), 20 - cut))
    for (a, _), (b, _) in zip(straight[cut:], resumed, strict=True):
        assert a.tokens.equal(b.tokens) and a.begins.equal(b.begins)
    assert any(b[1].taken for b in straight)  # some batches did end inside a text


def test_lm_run_trains_texts_longer_than_a_row_and_resumes_exactly(tmp_path: Path) -> None:
    resolved, shards, _ = texts(tmp_path)
    settings = ["--set", "train.checkpoint_every=1", "--set", "train.keep_checkpoints=9"]

    def run(out: Path, *more: str) -> dict:
        result = invoke_mbp("run", "lm", *shards, "--registry", str(tmp_path / "registry.yaml"),
                            "--out", str(out), "--json", *settings, *more)  # fmt: skip
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    whole = run(tmp_path / "whole")
    assert whole["samples_skipped"] == 0 and whole["steps"] == 6
    starts = [b for b, _ in itertools.islice(packed(resolved, shards), 6)]
    assert (
        whole["samples_seen"]
        == sum(s.first == 0 for b in starts for s in b.samples)
        < sum(len(b.samples) for b in starts)
    )  # a text cut across rows counts once
    # a run stopped after step 3 (inside a cut text, as the state shows) and resumed from there
    step3 = tmp_path / "whole" / "checkpoints" / "step-00000003"
    state = json.loads((step3 / "config.json").read_text())["train_state"]
    assert state["taken"] > 0, state
    shutil.copytree(step3, tmp_path / "resumed" / "checkpoints" / step3.name)
    run(tmp_path / "resumed", "--resume")
    a = load_file(str(tmp_path / "whole" / "checkpoints" / "step-00000006" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "checkpoints" / "step-00000006" / "model.safetensors"))
    assert a.keys() == b.keys() and all(a[name].equal(b[name]) for name in a)


def test_without_fill_only_texts_longer_than_a_row_are_cut(tmp_path: Path) -> None:
    """Evaluation's rows: a held-out text that fits a row is scored whole, with all of its context."""
    resolved, shards, _ = texts(tmp_path)
    rows = batches(stream(resolved, shards, repeat=False), BATCH, SEQ_LEN, pack=True, align=PATCH,
                   split=True, fill=False)  # fmt: skip
    pieces = [sample for b, _ in rows for sample in b.samples]
    cut = {sample.key for sample in pieces if sample.first > 0}
    lengths = {sample.key: len(sample.tokens) for sample, _ in stream(resolved, shards, repeat=False)}
    assert cut and all(lengths[key] > SEQ_LEN for key in cut)
    assert sum(len(sample.tokens) for sample in pieces) == sum(lengths.values())
