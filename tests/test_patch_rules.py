"""A pipeline that leaves the byte-level patch unset gets patches that follow the data from its codecs'
boundaries (text at word starts, one row of an image or spectrogram, fixed lengths elsewhere), recorded
in the model config; with ``patch: N``, one length."""

from __future__ import annotations

from pathlib import Path

import mbp
import numpy as np
import pytest
import torch
from mbp.api import CodecTraits, FixedLength, WordStarts, build_model
from mbp.boundaries import patch_starts
from mbp.components import ComponentTable
from mbp.config import ModelConfig
from mbp.errors import PluginError
from mbp.planning.boundary_plan import (
    WORD_LONGEST,
    BoundaryPlan,
    mean_patch,
    plan_boundaries,
    row_patch,
    with_planned_boundaries,
    with_trained_boundaries,
)
from mbp.planning.patch_plan import PROBE_SAMPLES
from mbp.planning.plan import plan_byte_patches, sample_patches
from mbp.planning.probe import Probe
from mbp.protocol import Segment, encode_sample
from mbp.resolve import Resolved, resolve
from mbp.traits import codec_traits

from tests.shardkit import write_tar


def resolved(name: str, components: ComponentTable, patch: int | None = None) -> Resolved:
    pipeline = resolve(None, name, components=components).pipeline
    last = pipeline.model.stages[-1].model_copy(update={"patch": patch})
    model = pipeline.model.model_copy(update={"stages": [*pipeline.model.stages[:-1], last]})
    return resolve(None, name, pipeline.model_copy(update={"model": model}), components=components)


def test_vqa_mixed_gets_a_rule_per_codec(components: ComponentTable) -> None:
    run = resolved("vqa-mixed", components)
    # the demo's 48-byte scene rows (16 RGB pixels) and its tone's 16-band log-mel frames
    plan = plan_boundaries(run.pipeline.model, run.encoder.fields, {48: ["scene"], 16: ["tone"]})
    assert plan is not None
    assert plan.rules == {
        "pixels": FixedLength(48),
        "image": FixedLength(8),
        "wav": FixedLength(16),
        "text": WordStarts(WORD_LONGEST),
    }
    assert plan.longest == 48
    assert plan.describe(5.25) == (
        "boundaries: scene one 48-byte row, photo fixed 8 bytes, tone one 16-byte row, "
        "passage word starts (longest 16), question word starts (longest 16), "
        "answer word starts (longest 16); mean patch 5.2 bytes"
    )


def test_lm_text_patch_fixes_one_length_and_unset_takes_words(components: ComponentTable) -> None:
    run = resolve(None, "lm-text", components=components)
    assert run.pipeline.model.stages[-1].patch == 8
    assert plan_boundaries(run.pipeline.model, run.encoder.fields, {}) is None
    unset = resolved("lm-text", components)
    plan = plan_boundaries(unset.pipeline.model, unset.encoder.fields, {})
    assert plan is not None and plan.rules == {"text": WordStarts(16)} and plan.longest == 16


def test_classify_images_takes_one_row(components: ComponentTable) -> None:
    run = resolved("classify-images", components)
    plan = plan_boundaries(run.pipeline.model, run.encoder.fields, {96: ["image"]})
    assert plan is not None
    assert plan.rules == {"pixels": FixedLength(96), "text": WordStarts(16)}
    assert plan.longest == 96
    assert plan.describe().startswith("boundaries: image one 96-byte row, label word starts")


def test_classify_sounds_takes_one_frame_of_the_reading_view(components: ComponentTable) -> None:
    run = resolved("classify-sounds", components)
    plan = plan_boundaries(run.pipeline.model, run.encoder.fields, {16: ["audio"]})
    assert plan is not None and plan.rules["wav"] == FixedLength(16) and plan.longest == 16
    # no row seen (a set that failed to probe): the wav field falls back to fixed patches
    none = plan_boundaries(run.pipeline.model, run.encoder.fields, {})
    assert none is not None and none.rules["wav"] == FixedLength(8) and none.longest == 16


def test_two_fields_of_one_codec_share_a_rule_that_tiles_both(components: ComponentTable) -> None:
    run = resolved("vqa-mixed", components)
    fields = dict(run.encoder.fields)
    fields["small"] = fields["scene"]  # another pixels field, with 12-byte rows
    plan = plan_boundaries(run.pipeline.model, fields, {48: ["scene"], 12: ["small"]})
    assert plan is not None and plan.rules["pixels"] == FixedLength(12)
    assert "scene fixed 12 bytes" in plan.describe()


@pytest.mark.parametrize(("row", "patch"), [(3, 9), (8, 8), (96, 96), (128, 128), (192, 96), (131, 8)])
def test_row_patch(row: int, patch: int) -> None:
    assert row_patch(row) == patch


def test_mean_patch_counts_the_rule_patches() -> None:
    # BOS | SEG text HDR "ab " | "cd" END | EOS: 14 tokens in 4 patches
    sample = encode_sample([Segment("text", b"ab cd")])
    plan = BoundaryPlan({"text": WordStarts(16)}, 16, {"txt": "words"})
    assert mean_patch(plan, [sample]) == pytest.approx(14 / 4)
    assert mean_patch(plan, [sample, sample[:7]]) == pytest.approx(21 / 6)  # the header cut at 7
    assert mean_patch(plan, []) is None


def test_the_built_in_codecs_declare_their_boundaries(components: ComponentTable) -> None:
    fields = resolve(None, "vqa-mixed", components=components).encoder.fields
    assert fields["question"].traits.boundaries == WordStarts()
    for name in ("scene", "photo", "tone"):  # one row where there are rows, else fixed: planned
        assert fields[name].traits.boundaries is None


def test_a_codec_declaring_code_as_its_boundaries_is_refused() -> None:
    class Odd:
        name = "odd"
        traits = CodecTraits(boundaries=lambda tokens: tokens)  # type: ignore[arg-type]

    with pytest.raises(PluginError, match=r"codec 'odd': traits\.boundaries must be a FixedLength"):
        codec_traits(Odd())  # type: ignore[arg-type]


def test_the_model_places_its_patches_by_the_rules_it_records(components: ComponentTable) -> None:
    run = resolved("vqa-mixed", components)
    plan = plan_boundaries(run.pipeline.model, run.encoder.fields, {48: ["scene"]})
    assert plan is not None
    config = ModelConfig.model_validate(plan.apply(run.pipeline.model).model_dump(mode="json"))
    assert config.stages[-1].patch == 48 and config.boundary_rules == plan.rules
    model = build_model(config, components)
    ids = np.stack([encode_sample([Segment("text", b"one two three")])] * 2)

    placed = model.patch_starts(torch.from_numpy(ids).long())
    assert placed is not None
    assert placed.numpy().tolist() == [patch_starts(row, plan.rules, 48).tolist() for row in ids]
    assert model.pack_align == 1
    fixed = build_model(run.pipeline.model.with_byte_patch(8), components)
    assert fixed.patch_starts(torch.from_numpy(ids).long()) is None and fixed.pack_align == 8


def test_a_run_plans_the_rules_from_its_training_samples(components: ComponentTable) -> None:
    run = resolve(None, "vqa-mixed", components=components)
    shards = sorted(str(p) for p in (Path(mbp.__file__).parent / "bundled").glob("train-*.tar.gz"))
    demo = run.pipeline
    given = demo.model.with_byte_patch(8)  # a given patch: one length, nothing planned
    fixed = resolve(None, "vqa-mixed", demo.model_copy(update={"model": given}), components=components)
    assert plan_byte_patches(fixed, Probe(shards))[1] is None
    asked = demo.model.model_copy(update={"boundaries": "codecs"})  # as unset: the default
    named = resolve(None, "vqa-mixed", demo.model_copy(update={"model": asked}), components=components)
    assert plan_byte_patches(named, Probe(shards))[1] == plan_byte_patches(run, Probe(shards))[1]
    planned, plan = plan_byte_patches(run, Probe(shards))
    assert isinstance(plan, BoundaryPlan)
    assert plan is not None and plan.mean is not None and 1 < plan.mean < 48
    # the bundled demo: 48-byte scene rows (16 RGB pixels) and 16-band log-mel tone frames
    assert plan.rules["pixels"] == FixedLength(48) and plan.rules["wav"] == FixedLength(16)
    model = planned.pipeline.model
    assert model.stages[-1].patch == 48 and model.boundary_rules == plan.rules and model.pack_align == 1
    assert plan.describe().endswith(f"; mean patch {plan.mean:.1f} bytes")
    fixed = resolve(None, "lm-text", components=components)
    assert with_planned_boundaries(fixed, Probe(shards)) == (fixed, None)
    with pytest.raises(ValueError, match="boundaries: codecs places the byte-level patches"):
        ModelConfig.model_validate({**fixed.pipeline.model.model_dump(), "boundaries": "codecs"})


def test_rules_a_pipeline_gives_are_described_not_planned(components: ComponentTable) -> None:
    run = resolve(None, "vqa-mixed", components=components)
    given = run.pipeline.model.with_boundaries({"text": WordStarts(8), "pixels": FixedLength(4)}, 8)
    run = resolve(None, "vqa-mixed", run.pipeline.model_copy(update={"model": given}), components=components)
    shards = sorted(str(p) for p in (Path(mbp.__file__).parent / "bundled").glob("train-*.tar.gz"))
    kept, plan = plan_byte_patches(run, Probe(shards))
    assert kept is run and isinstance(plan, BoundaryPlan) and plan.given
    assert plan.rules == given.boundary_rules
    # each field by its codec's rule, a codec not named (wav) at the given patch
    assert plan.fields["scene"] == "fixed 4 bytes" and plan.fields["tone"] == "fixed 8 bytes"
    assert plan.fields["question"] == "word starts (longest 8)"
    samples = Probe(shards).samples(run, PROBE_SAMPLES)
    assert plan.mean == mean_patch(plan, (sample.tokens for sample in samples))
    assert plan.mean is not None and 1 < plan.mean < 8
    assert plan.describe().startswith("boundaries (given): ")


def test_inspect_shows_one_samples_patches_where_the_rules_place_them(
    components: ComponentTable, tmp_path: Path
) -> None:
    lm = resolved("lm-text", components)
    asked = lm.pipeline.model.model_copy(update={"boundaries": "codecs"})
    lm = resolve(None, "lm-text", lm.pipeline.model_copy(update={"model": asked}), components=components)
    write_tar(tmp_path / "t.tar", [{"__key__": b"a", "txt": b"the cat, sat down"}])
    planned, _ = plan_byte_patches(lm, Probe([str(tmp_path / "t.tar")]))
    patches = sample_patches(planned, Probe([str(tmp_path / "t.tar")]))
    # markers alone, the header with the first word, then a word a patch with the delimiters after it
    assert patches == ["<BOS>", "<SEG>text<HDR>the ", "cat, ", "sat ", "down<END>", "<EOS>"]


def test_a_checkpoints_rules_serve_the_pipeline_that_left_them_unset(components: ComponentTable) -> None:
    run = resolve(None, "vqa-mixed", components=components)
    trained = run.pipeline.model.with_boundaries({"text": WordStarts(16)}, 16)
    served = with_trained_boundaries(run, trained).pipeline.model
    assert served == trained
    assert with_trained_boundaries(run, run.pipeline.model.with_byte_patch(8)) is run


def test_the_rest_of_a_text_split_across_rows_keeps_its_word_patches(components: ComponentTable) -> None:
    run = resolved("lm-text", components)
    plan = plan_boundaries(run.pipeline.model, run.encoder.fields, {})
    assert plan is not None
    model = build_model(plan.apply(run.pipeline.model), components)
    whole = encode_sample([Segment("text", b"the cat sat on the mat, then it ran")])
    cut = 20  # inside "on": the second row begins mid-payload, its header in the first row
    rows = torch.from_numpy(np.stack([whole[:cut], whole[cut : 2 * cut]]).astype(np.int64))
    placed = model.patch_starts(rows)
    assert placed is not None
    expected = patch_starts(whole, plan.rules, 16)[cut : 2 * cut]
    expected[0] = True  # a row's first token starts a patch
    assert placed[1].numpy().tolist() == expected.tolist()
    assert placed[1].sum() == 6  # "n " "the " "mat, " "then " "it " "ran..."
