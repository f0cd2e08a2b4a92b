"""Issue 13: a field's bytes are encoded once and reused in later epochs, with the very tokens a fresh
encoding gives; variations (augmentation, thinned weights) are still made afresh every time. Batches
are made on a background thread only where it does not take a core from the step."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from mbp.data.batches import encoded_stream, prefetch_helps
from mbp.data.encode import SampleEncoder
from mbp.data.field_cache import FieldCache
from mbp.data.skips import SkipLog
from mbp.resolve import resolve

from tests.shardkit import write_tar
from tests.test_augment import REGISTRY, glyph


def counted(encoder: SampleEncoder, field: str) -> list[int]:
    """Counts the calls of ``field``'s codec ``encode`` (index 0) and ``encode_augmented`` (1)."""
    codec, calls = encoder.codecs[field], [0, 0]
    plain, varied = codec.encode, getattr(codec, "encode_augmented", None)

    def encode(data: bytes):  # type: ignore[no-untyped-def]
        calls[0] += 1
        return plain(data)

    def encode_augmented(data: bytes, rng: np.random.Generator):  # type: ignore[no-untyped-def]
        calls[1] += 1
        return varied(data, rng) if varied else plain(data)

    codec.encode, codec.encode_augmented = encode, encode_augmented  # type: ignore[method-assign]
    return calls


def shards(tmp_path: Path, broken: bool = False) -> list[str]:
    samples = [{"__key__": f"s{i}".encode(), "image.png": glyph(i), "answer.txt": b"one"} for i in range(6)]
    if broken:
        samples[2]["image.png"] = b"not an image"
    write_tar(tmp_path / "s.tar", samples)
    return [str(tmp_path / "s.tar")]


def encoder_of(tmp_path: Path, components, augment: bool) -> SampleEncoder:  # type: ignore[no-untyped-def]
    registry = tmp_path / "registry.yaml"
    registry.write_text(REGISTRY.replace("augment: true", f"augment: {str(augment).lower()}"))
    return resolve(str(registry), "digits", components=components).encoder


def stream(encoder: SampleEncoder, paths: list[str], samples: int, log: SkipLog | None = None) -> list[bytes]:
    items = encoded_stream(paths, encoder, 512, log or SkipLog(quiet=True), augment=True)
    taken = [sample for sample, _ in itertools.islice(items, samples)]
    return [sample.tokens.tobytes() + sample.weights.tobytes() for sample in taken]


def test_fields_are_encoded_once_over_three_epochs_with_the_same_tokens(tmp_path: Path, components) -> None:
    paths = shards(tmp_path)
    cached = encoder_of(tmp_path, components, augment=False)
    calls = counted(cached, "image")
    kept = stream(cached, paths, 18)
    assert calls == [6, 0]  # 6 decodes for 18 samples; augmentation off: nothing varied
    assert len(cached.cache) == 7 and cached.cache.hits == 29  # 6 images and one answer text
    uncached = encoder_of(tmp_path, components, augment=False)
    uncached.cache = FieldCache(budget=0)
    fresh = counted(uncached, "image")
    assert stream(uncached, paths, 18) == kept and fresh == [18, 0]


def test_augmented_fields_are_made_afresh_and_still_vary(tmp_path: Path, components) -> None:
    paths = shards(tmp_path)
    encoder = encoder_of(tmp_path, components, augment=True)
    calls = counted(encoder, "image")
    trained = stream(encoder, paths, 12)
    assert calls[1] == 12 and len(encoder.cache) == 1  # only the answer text was kept
    assert trained[6:] != trained[:6]  # the second epoch's shifts differ from the first's


def test_the_budget_bounds_what_is_kept(tmp_path: Path, components) -> None:
    encoder = encoder_of(tmp_path, components, augment=False)
    answer_and_three_images = 4 * (16 * 16 + 64) * 2  # int16 tokens; an image is 256 pixels + header
    encoder.cache = FieldCache(budget=answer_and_three_images)
    stream(encoder, shards(tmp_path), 12)
    assert 0 < encoder.cache.held <= answer_and_three_images and 2 <= len(encoder.cache) < 7


def test_a_field_that_fails_is_named_again_every_epoch(tmp_path: Path, components) -> None:
    encoder = encoder_of(tmp_path, components, augment=False)
    log = SkipLog(quiet=True)
    assert len(stream(encoder, shards(tmp_path, broken=True), 10, log)) == 10
    assert sum(log.reasons.values()) == 2 and len(encoder.cache) == 6  # sample s2, in both epochs


def test_batches_are_made_on_a_thread_only_where_it_has_a_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert not prefetch_helps(torch.device("cpu"))  # the thread would take a core from the step
    assert prefetch_helps(torch.device("cuda"))  # the CPU waits for the GPU anyway
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert prefetch_helps(torch.device("cpu"))
