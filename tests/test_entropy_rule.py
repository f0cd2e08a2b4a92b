"""The entropy rule (``model.boundaries: entropy``): a byte model trained on the run's data places a
patch where it is uncertain of the next byte; online, recorded as data, planned for text fields only."""

from __future__ import annotations

import base64
from pathlib import Path

import mbp
import mbp.boundaries
import numpy as np
import pytest
import torch
from mbp.boundaries import (
    CONTEXTS,
    EntropyStarts,
    FixedLength,
    PatchPlacer,
    WordStarts,
    cut_long,
    describe,
    patch_starts,
    payload_contexts,
    payload_starts,
)
from mbp.components import ComponentTable
from mbp.config import ModelConfig
from mbp.config.boundary_rules import rule_from_json, rule_to_json
from mbp.planning.boundary_plan import BoundaryPlan, with_entropy_rules
from mbp.planning.entropy_fit import SMOOTHING, context_entropy, fit_entropy_starts
from mbp.planning.plan import plan_byte_patches
from mbp.planning.probe import Probe
from mbp.protocol import Segment, encode_sample
from mbp.resolve import resolve
from mbp.sample import EncodedSample
from mbp.testing import generate_uncached

from tests.conftest import tiny_model
from tests.test_boundaries import _random_stream
from tests.test_varying_patches import generate_cached, text_tokens

TRANSFORMER = {"type": "transformer"}
WORDS = [b"alpha", b"beta", b"gamma", b"delta", b"kappa"]


def word_text(seed: int, words: int) -> np.ndarray:
    """Words of ``WORDS`` in random order, a space after each: only a word's first byte is uncertain."""
    rng = np.random.default_rng(seed)
    text = b"".join(WORDS[i] + b" " for i in rng.integers(0, len(WORDS), words))
    return np.frombuffer(text, dtype=np.uint8).astype(np.int64)


def random_rule(seed: int, share: float, longest: int | None = None) -> EntropyStarts:
    marks = np.random.default_rng(seed).random(CONTEXTS) < share
    return EntropyStarts(np.packbits(marks).tobytes(), longest)


def test_context_entropy_is_the_smoothed_counts_entropy() -> None:
    text = np.frombuffer(b"abcabdabcabx" * 3, dtype=np.uint8).astype(np.int64)
    entropy = context_entropy([text])
    following, contexts = text[1:], payload_contexts(text)[1:]
    unigram = (np.bincount(following, minlength=256) + 1.0) / (len(following) + 256)
    after_b = np.bincount(following[contexts % 256 == ord("b")], minlength=256)
    by_b = (after_b + SMOOTHING * unigram) / (after_b.sum() + SMOOTHING)
    after_ab = np.bincount(following[contexts == ord("a") * 256 + ord("b")], minlength=256)
    expected = (after_ab + SMOOTHING * by_b) / (after_ab.sum() + SMOOTHING)  # c twice as often as d, x
    assert after_ab[ord("c")] == 6 and after_ab[ord("d")] == 3
    ab, zb = ord("a") * 256 + ord("b"), ord("z") * 256 + ord("b")
    assert entropy[ab] == pytest.approx(-(expected * np.log2(expected)).sum(), rel=1e-12)
    # a context never seen ("zb") is as uncertain as its last byte alone
    assert entropy[zb] == pytest.approx(-(by_b * np.log2(by_b)).sum(), rel=1e-12)


def test_the_rule_starts_patches_where_the_next_byte_is_uncertain() -> None:
    rule = fit_entropy_starts([word_text(seed, 400) for seed in range(4)], longest=16)
    held_out = word_text(99, 200)
    # here only a word's first byte is uncertain: the entropy rule finds the word starts by itself
    assert payload_starts(held_out, rule).tolist() == payload_starts(held_out, WordStarts()).tolist()


def test_the_threshold_starts_as_many_patches_as_the_word_rule() -> None:
    text = np.frombuffer(Path(mbp.boundaries.__file__).read_bytes(), dtype=np.uint8).astype(np.int64)
    rule = fit_entropy_starts([text], longest=16)
    by_entropy = cut_long(payload_starts(text, rule), 16).sum()
    by_words = cut_long(payload_starts(text, WordStarts()), 16).sum()
    assert abs(by_entropy / by_words - 1) < 0.1
    assert payload_starts(text, rule).tolist() != payload_starts(text, WordStarts()).tolist()


@pytest.mark.parametrize("seed", range(10))
def test_the_online_placer_places_what_the_whole_stream_places(seed: int) -> None:
    rng = np.random.default_rng(seed)
    tokens = _random_stream(rng, 300)
    rules = {"text": random_rule(seed, 0.3, longest=5), "pix": FixedLength(3)}
    offline = patch_starts(tokens, rules, longest=7)
    placer = PatchPlacer(rules, longest=7)
    online = [placer.push(int(t)) for t in tokens]
    assert online == offline.tolist()
    for cut in (1, 2, 50, 137, 299):  # a boundary never depends on the tokens at or after it
        assert patch_starts(tokens[:cut], rules, longest=7).tolist() == offline[:cut].tolist()


def test_the_rule_is_recorded_as_data_and_refused_when_malformed() -> None:
    rule = random_rule(3, 0.4, longest=12)
    assert rule_from_json(rule_to_json(rule)) == rule
    assert describe(rule) == "entropy (cut at 12)"
    model = ModelConfig.model_validate(
        {
            "stages": [
                {"backbone": TRANSFORMER, "dim": 8, "layers": 1},
                {"backbone": TRANSFORMER, "dim": 8, "layers": 1, "patch": 12},
            ]
        }
    )
    recorded = model.with_boundaries({"text": rule}, 12)
    again = ModelConfig.model_validate_json(recorded.model_dump_json())
    assert again.boundary_rules == {"text": rule}
    broken = recorded.model_dump()
    broken["boundaries"]["text"]["uncertain"] = "!" * len(base64.b64encode(rule.uncertain))
    with pytest.raises(ValueError, match="uncertain is not base64"):
        ModelConfig.model_validate(broken)
    broken["boundaries"]["text"]["uncertain"] = "AAAA"
    with pytest.raises(ValueError, match="at least"):
        ModelConfig.model_validate(broken)


def test_a_run_asking_for_entropy_trains_it_for_text_and_keeps_rows(components: ComponentTable) -> None:
    run = resolve(None, "vqa-mixed", components=components)
    shards = sorted(str(p) for p in (Path(mbp.__file__).parent / "bundled").glob("train-*.tar.gz"))
    asked = run.pipeline.model.model_copy(update={"boundaries": "entropy"})
    run = resolve(None, "vqa-mixed", run.pipeline.model_copy(update={"model": asked}), components=components)
    planned, plan = plan_byte_patches(run, Probe(shards))
    assert isinstance(plan, BoundaryPlan)
    assert plan.rules["pixels"] == FixedLength(48) and plan.rules["wav"] == FixedLength(16)
    text = plan.rules["text"]
    assert isinstance(text, EntropyStarts) and text.longest == 16
    assert "question high byte entropy (longest 16)" in plan.describe()
    assert "scene one 48-byte row" in plan.describe()
    assert planned.pipeline.model.boundary_rules == plan.rules
    with pytest.raises(ValueError, match="boundaries: entropy places the byte-level patches"):
        ModelConfig.model_validate({**planned.pipeline.model.model_dump(), "boundaries": "entropy"})


def test_cached_generation_with_an_entropy_rule_equals_uncached(components: ComponentTable) -> None:
    rules = {"t": random_rule(5, 0.35)}
    model = tiny_model(components, 2, ("transformer",) * 2).eval()
    full = text_tokens(1, 30)[0]
    prompts = [full[:n] for n in (1, 3, 9, 16, 30)]
    with torch.no_grad():
        cached = generate_cached(model, prompts, 16, rules)
        for prompt, tokens in zip(prompts, cached, strict=True):
            assert tokens == generate_uncached(model, prompt, 16, rules)
    placed = patch_starts(np.array(prompts[-1].tolist() + cached[-1]), rules, model.patch_sizes[-1])
    assert len(set(np.diff(np.flatnonzero(placed)).tolist())) > 2, "generated patches of one length"


def test_a_codec_without_bytes_to_learn_from_keeps_its_word_rule(components: ComponentTable) -> None:
    run = resolve(None, "lm-text", components=components)
    plan = BoundaryPlan({"text": WordStarts(16)}, 16, {"txt": "word starts (longest 16)"})
    one_byte = [encode_sample([Segment("text", b"a")]) for _ in range(3)]
    samples = [EncodedSample("s.tar", str(n), tokens, []) for n, tokens in enumerate(one_byte)]
    kept = with_entropy_rules(plan, run.encoder.fields, samples)
    assert kept.rules == plan.rules and kept.fields == plan.fields
