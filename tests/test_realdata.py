"""The real-data suite's builders (benchmarks/realdata) on data made here: no Debian package needed."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from mbp.data.read import read_samples
from mbp.data.skips import SkipLog

from benchmarks.realdata import baselines, build, images, speech, text
from benchmarks.realdata.mixed import _relabelled, _side_by_side
from benchmarks.realdata.shards import (
    MissingPrerequisiteError,
    Sample,
    classification_sample,
    stable_hash,
    write_split,
)


def test_shards_are_byte_identical_and_readable(tmp_path: Path) -> None:
    samples = [Sample(f"k{i:03d}", {"txt": f"document {i}\n".encode()}) for i in range(5)]
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    paths_a = write_split(first, "train", samples, per_shard=2)
    paths_b = write_split(second, "train", samples, per_shard=2)
    assert [p.read_bytes() for p in paths_a] == [p.read_bytes() for p in paths_b]
    read = list(read_samples([str(p) for p in paths_a], SkipLog()))
    assert [r.key for r in read] == [s.key for s in samples]
    assert read[3].fields["txt"] == b"document 3\n"


def test_stable_hash_does_not_depend_on_the_process() -> None:
    assert stable_hash("m3", "espeak-variant") == stable_hash("m3", "espeak-variant")
    assert stable_hash("m3", "a") != stable_hash("m3", "b")


def test_metric_clones_of_one_design_share_a_group() -> None:
    groups = {images.design_group(f) for f in ("Arimo", "Liberation Sans", "Nimbus Sans", "FreeSans")}
    assert groups == {"helvetica"}
    assert images.design_group("Tinos") == images.design_group("TeX Gyre Termes") == "times"
    assert images.design_group("Cantarell") == "cantarell"


def test_fortunes_are_deduplicated_and_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = [f"Fortune number {i}, which is\nsaid twice." for i in range(60)]
    (tmp_path / "a").write_text("\n%\n".join(lines) + "\n%\n")
    (tmp_path / "b").write_text("\n%\n".join(line.replace("\n", " ") for line in lines[:20]) + "\n")
    (tmp_path / "a.dat").write_bytes(b"\0\1")
    monkeypatch.setattr(text, "FORTUNE_DIR", tmp_path)
    built = text.build_fortunes()
    train = {s.fields["txt"] for s in built.train}
    held = {s.fields["txt"] for s in built.held_out}
    assert len(train) + len(held) == 60 and not train & held and held
    assert built.text_held_out == b"".join(s.fields["txt"] for s in built.held_out)


def test_missing_fortunes_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(text, "FORTUNE_DIR", tmp_path / "absent")
    with pytest.raises(MissingPrerequisiteError, match="apt-get install fortunes"):
        text.build_fortunes()


def test_missing_commands_are_all_named_before_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    missing = build.check_prerequisites(["speech-commands", "text-kjv"])
    assert any("espeak-ng" in m for m in missing)
    assert any("apt-get install flite" in m for m in missing)
    assert any("bible-kjv" in m for m in missing)


def test_clips_are_trimmed_resampled_and_capped() -> None:
    rate = 22050
    tone = np.sin(np.arange(int(1.5 * rate)) * 0.2).astype(np.float32)
    signal = np.concatenate([np.zeros(rate // 2, np.float32), tone, np.zeros(rate // 2, np.float32)])
    clip, cut = speech.clean(signal, rate, level=0.5)
    assert cut and len(clip) == speech.RATE
    assert abs(float(np.abs(clip).max()) - 0.5) < 1e-3
    short, cut = speech.clean(signal[:rate], rate, level=0.5)
    assert not cut and len(short) < 0.6 * speech.RATE
    samples, read_rate = speech.read_wav(speech.wav_bytes(short))
    assert read_rate == speech.RATE and len(samples) == len(short)


def test_log_mel_features_have_a_fixed_size() -> None:
    clips = [np.random.default_rng(0).standard_normal(n).astype(np.float32) for n in (800, 8000, 9000)]
    features = baselines.log_mel_features(clips)
    assert features.shape == (3, baselines.MEL_BANDS * (baselines.TIME_CHUNKS + 2))
    assert np.isfinite(features).all()


def test_compressor_baseline_is_bits_per_byte() -> None:
    words = [f"word{i % 97} " for i in range(0, 30_000, 7)]
    result = baselines.compressor_bpb("".join(words).encode())
    for key in ("gzip_bpb", "xz_bpb"):
        assert 0 < float(result[key]) < 8  # type: ignore[arg-type]
    assert float(result["target_bpb_0.8xz"]) == pytest.approx(0.8 * float(result["xz_bpb"]), abs=1e-3)  # type: ignore[arg-type]


def test_long_chapters_become_whole_verse_passages_that_fit() -> None:
    verses = [f"{n} " + "And it came to pass " * (3 + n % 7) for n in range(1, 80)]
    docs = text.passages("Genesis", 5, verses)
    assert len(docs) > 1 and all(len(d.encode()) <= text.MAX_DOC_BYTES for d in docs)
    assert docs[0].startswith("Genesis 5:1-")
    body = [line for d in docs for line in d.split("\n\n", 1)[1].splitlines()]
    assert body == verses
    assert min(len(d) for d in docs) > 0.5 * max(len(d) for d in docs)  # no one-verse tail


def test_every_set_has_its_pipelines_in_the_suite_registry() -> None:
    import yaml

    registry = yaml.safe_load(build.TEMPLATE.read_text())["pipelines"]
    assert set(build.PIPELINES) == set(build.BUILDERS)
    named = [name for names in build.PIPELINES.values() for name in names.split(", ")]
    assert sorted(named) == sorted(registry)
    for name, entry in registry.items():
        (shards,) = {
            path.split("/")[3] for path in entry["data"]["train_shards"] + entry["data"]["eval_shards"]
        }
        assert name in build.PIPELINES[shards], (name, shards)


def test_glyphs_render_at_the_size_asked() -> None:
    import random

    from PIL import ImageFont

    font = ImageFont.load_default(size=64)
    for size in (16, 28):
        glyph = images.render_glyph(font, "a", random.Random(0), size)  # type: ignore[arg-type]
        assert glyph is not None and glyph.shape == (size, size) and glyph.max() > 128


def test_long_documents_are_cut_at_line_ends_into_pieces_that_fit() -> None:
    doc = "".join(f"line {i} " + "é" * (i % 50) + "\n" for i in range(400)) + "x" * 4500 + "\n"
    pieces = text.fitted(doc, limit=1000)
    assert "".join(pieces) == doc
    assert all(0 < len(p.encode()) <= 1000 for p in pieces)
    assert all(p.endswith("\n") or set(p) == {"x"} for p in pieces)  # only the over-long line is cut inside


def _changelog(source: str, versions: int) -> bytes:
    entries = [
        f"{source} (1.{v}-1) unstable; urgency=medium\n\n  * Change number {v}.\n\n"
        f" -- A Maintainer <a@example.org>  Mon, 0{v % 9 + 1} Jan 2024 10:00:00 +0000\n\n"
        for v in range(versions, 0, -1)
    ]
    return gzip.compress("".join(entries).encode())


def test_changelogs_are_kept_once_per_source_and_split_by_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Binary packages of one source ship one changelog: it is read once, so no entry is on both sides."""
    for index in range(40):
        for binary in (f"lib{index}", f"lib{index}-dev", f"lib{index}-doc"):
            (tmp_path / binary).mkdir()
            (tmp_path / binary / "changelog.Debian.gz").write_bytes(_changelog(f"source{index}", 3))
    monkeypatch.setattr(text, "DOC_ROOT", tmp_path)
    built = text.build_changelogs()
    assert built.extra["source_packages"] == 40
    assert len(built.train) + len(built.held_out) == 40 * 3  # each entry once, not three times
    sources = [{s.key.split("-")[0] for s in side} for side in (built.train, built.held_out)]
    assert sources[1] and not sources[0] & sources[1]
    first = built.train[0].fields["txt"].decode()
    assert first.startswith("source") and first.count("urgency=") == 1 and first.endswith("+0000\n")


def test_missing_changelogs_are_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(text, "DOC_ROOT", tmp_path)
    with pytest.raises(MissingPrerequisiteError, match="no Debian changelogs"):
        text.build_changelogs()


def test_the_mixed_set_keeps_each_modality_in_its_own_columns_and_answers_with_digits() -> None:
    image, spoken = np.ones((2, 3)), np.full((4, 5), 2.0)
    both = _side_by_side(image, spoken)
    assert both.shape == (6, 8)
    assert both[:2, :3].sum() == 6 and both[:2, 3:].sum() == 0
    assert both[2:, 3:].sum() == 40 and both[2:, :3].sum() == 0
    sample = classification_sample("k", "speech.wav", b"RIFF", "which digit was spoken?", "three")
    relabelled = _relabelled(sample, {"three": "3"})
    assert relabelled.fields["answer.txt"] == b"3" and relabelled.fields["speech.wav"] == b"RIFF"
