"""``mbp shards pack``: a folder of class folders split into train and eval shards, CSV manifests,
field names that differ only in case, and shards that already exist."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from mbp.data.pack_folders import held_out
from mbp.data.read import RawSample, shard_samples
from mbp.data.skips import SkipLog
from mbp.protocol import decode_stream
from mbp.resolve import resolve
from PIL import Image

from tests.conftest import invoke_mbp
from tests.shardkit import png, wav

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


def image(colour: tuple[int, int, int], size: tuple[int, int], fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


def class_tree(root: Path, per_class: int = 12) -> Path:
    """One folder a colour, ``per_class`` solid images each, PNG and JPEG alternating, of varying sizes
    (so that no two files are the same)."""
    for label, colour in COLOURS.items():
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            fmt, suffix = ("PNG", "png") if i % 2 else ("JPEG", "jpg")
            (root / label / f"{i:04d}.{suffix}").write_bytes(image(colour, (20 + i, 16 + i), fmt))
    return root


def read_side(shards: list[str]) -> dict[str, dict[str, bytes]]:
    """Key -> fields of every sample, read back by the reader ``mbp run`` uses."""
    log = SkipLog()
    samples = {raw.key: raw.fields for shard in shards for raw in shard_samples(shard, log)}
    assert log.samples_skipped == 0 and log.shards_failed == 0
    return samples


def pack_folder(src: Path, out: Path, *extra: str) -> dict:
    result = invoke_mbp("shards", "pack", "--by-folder", str(src), str(out), *extra, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_pack_refuses_fields_differing_only_in_case(tmp_path: Path) -> None:
    """The reader lower-cases suffixes, so ``0001.TXT`` and ``0001.txt`` would read as one field twice
    and the sample would be skipped: packing refuses, naming both files."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "0001.TXT").write_text("upper")
    (src / "0001.txt").write_text("lower")
    result = invoke_mbp("shards", "pack", str(src), str(tmp_path / "out-%06d.tar"))
    assert result.returncode == 1
    assert "0001.TXT" in result.stderr and "0001.txt" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out-000000.tar").exists()


def test_pack_stores_upper_case_suffixes_as_the_reader_reads_them(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "0001.PNG").write_bytes(png())
    (src / "0001.answer.TXT").write_text("red")
    result = invoke_mbp("shards", "pack", str(src), str(tmp_path / "out-%06d.tar"), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(invoke_mbp("shards", "inspect", str(tmp_path / "out-000000.tar"), "--json").stdout)
    assert report["samples"] == 1 and report["samples_skipped"] == 0
    assert sorted(report["fields"]) == ["answer.txt", "png"]


def test_pack_manifest_refuses_fields_differing_only_in_case(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"Answer.txt": "a", "answer.txt": "b"}) + "\n")
    result = invoke_mbp("shards", "pack", "--manifest", str(manifest), str(tmp_path / "s-%03d.tar"))
    assert result.returncode == 1
    assert (
        "m.jsonl:1" in result.stderr and "'Answer.txt'" in result.stderr and "'answer.txt'" in result.stderr
    )


def test_pack_compresses_by_the_pattern_and_leaves_no_partial_shard(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "0001.txt").write_text("kept")
    result = invoke_mbp("shards", "pack", str(src), str(tmp_path / "out" / "s-%03d.tar.gz"), "--json")
    assert json.loads(result.stdout) == {"shards": [str(tmp_path / "out" / "s-000.tar.gz")], "samples": 1}
    assert (tmp_path / "out" / "s-000.tar.gz").read_bytes()[:2] == b"\x1f\x8b"  # gzip
    # a manifest that breaks after its first sample was written leaves no shard, whole or partial
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"txt": "first"}) + "\n{broken\n")
    failed = invoke_mbp("shards", "pack", "--manifest", str(manifest), str(tmp_path / "new" / "s-%03d.tar"))
    assert failed.returncode == 1 and "m.jsonl:2: invalid JSON" in failed.stderr
    assert list((tmp_path / "new").iterdir()) == []


def test_pack_refuses_to_overwrite_shards_unless_forced(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"{i:04d}.txt").write_text(f"sample {i}")
    pattern = str(tmp_path / "out" / "s-%06d.tar")
    first = invoke_mbp("shards", "pack", str(src), pattern, "--maxcount", "1")
    assert first.returncode == 0, first.stderr
    before = (tmp_path / "out" / "s-000000.tar").read_bytes()
    (src / "0000.txt").write_text("changed")
    again = invoke_mbp("shards", "pack", str(src), pattern, "--maxcount", "1")
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        f"mbp: error: {tmp_path / 'out' / 's-000000.tar'} exists; pass --force to overwrite it"
    ]
    assert (tmp_path / "out" / "s-000000.tar").read_bytes() == before
    # --force rewrites; shards of the earlier pack beyond the new ones are removed, so a glob of the
    # pattern reads only the new pack
    (src / "0002.txt").unlink()
    forced = invoke_mbp("shards", "pack", str(src), pattern, "--maxcount", "1", "--force", "--json")
    assert forced.returncode == 0, forced.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["s-000000.tar", "s-000001.tar"]
    assert (tmp_path / "out" / "s-000000.tar").read_bytes() != before


def test_by_folder_splits_each_class_and_labels_samples(tmp_path: Path) -> None:
    src = class_tree(tmp_path / "src")
    report = pack_folder(src, tmp_path / "out", "--maxcount", "20")
    assert report["kind"] == "image" and report["duplicates"] == 0 and report["skipped"] == 0
    assert report["samples"] == {"train": 33, "eval": 3}
    assert report["classes"] == {label: {"train": 11, "eval": 1} for label in sorted(COLOURS)}
    assert [Path(p).name for p in report["train"]] == ["train-000000.tar", "train-000001.tar"]
    assert [Path(p).name for p in report["eval"]] == ["eval-000000.tar"]
    train, held = read_side(report["train"]), read_side(report["eval"])
    assert len(train) == 33 and len(held) == 3 and not set(train) & set(held)
    for key, fields in {**train, **held}.items():
        label, name = key.split("/")
        assert sorted(fields) == ["image", "label"] and fields["label"] == label.encode()
        suffix = "png" if int(name) % 2 else "jpg"
        assert fields["image"] == (src / label / f"{name}.{suffix}").read_bytes()
    assert sorted(key.split("/")[0] for key in held) == sorted(COLOURS)
    # the split is the seed's: the same again, another with another seed
    again = pack_folder(src, tmp_path / "again", "--maxcount", "20")
    assert set(read_side(again["eval"])) == set(held)
    other = [
        set(read_side(pack_folder(src, tmp_path / f"s{seed}", "--seed", str(seed))["eval"]))
        for seed in (1, 2)
    ]
    assert held not in other or other[0] != other[1]


@pytest.mark.parametrize(
    ("n", "fraction", "expected"),
    [(2, 0.1, 1), (12, 0.1, 1), (30, 0.1, 3), (3, 0.9, 2), (1, 0.5, 0), (10, 0.0, 0)],
)
def test_each_class_with_two_files_has_one_on_each_side(n: int, fraction: float, expected: int) -> None:
    assert held_out(n, fraction) == expected


def test_by_folder_keeps_copies_on_one_side(tmp_path: Path) -> None:
    """Eight classes of four files where each class's first file has three copies: at a fraction of
    one half every class holds out one of its two contents, and the copies follow their original."""
    src = tmp_path / "src"
    for c in range(8):
        (src / f"c{c}").mkdir(parents=True)
        same = image((c * 30, 0, 0), (8, 8), "PNG")
        for i in range(3):
            (src / f"c{c}" / f"{i}.png").write_bytes(same)
        (src / f"c{c}" / "3.png").write_bytes(image((c * 30, 90, 0), (8, 8), "PNG"))
    result = invoke_mbp(
        "shards", "pack", "--by-folder", str(src), str(tmp_path / "out"), "--eval-fraction", "0.5", "--json"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["duplicates"] == 16
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "mbp: warning: 16 file(s) repeat another file's content (sha256), e.g. c0/0.png = c0/1.png; "
        "the copies of a file are kept on one side of the split"
    ]
    train, held = read_side(report["train"]), read_side(report["eval"])
    for c in range(8):
        copies_held = sum(f"c{c}/{i}" in held for i in range(3))
        assert copies_held in (0, 3) and (f"c{c}/3" in held) == (copies_held == 0)
    assert len(train) + len(held) == 32


def test_by_folder_skips_what_is_not_a_sample_and_says_so(tmp_path: Path) -> None:
    src = class_tree(tmp_path / "src", per_class=2)
    (src / "README.md").write_text("about")
    (src / ".cache").mkdir()
    (src / "red" / ".DS_Store").write_bytes(b"x")
    (src / "red" / "notes.md").write_text("x")
    (src / "green" / "more").mkdir()
    (src / "green" / "more" / "extra.PNG").write_bytes(image((0, 90, 0), (5, 5), "PNG"))
    (src / "empty").mkdir()
    report = pack_folder(src, src / "shards")
    assert report["skipped"] == 4
    assert report["classes"]["green"]["train"] + report["classes"]["green"]["eval"] == 3
    keys = set(read_side(report["train"])) | set(read_side(report["eval"]))
    assert "green/more/extra" in keys and len(keys) == 7
    result = invoke_mbp("shards", "pack", "--by-folder", str(src), str(src / "shards"), "--force")
    assert result.returncode == 0
    assert result.stderr.strip().splitlines() == [
        "mbp: warning: class folder 'empty' holds no image, audio or text file: skipped",
        "mbp: warning: skipped 2 hidden file(s) or folder(s), e.g. .cache",
        "mbp: warning: skipped 1 file(s) beside the class folders, e.g. README.md "
        "(a class is a folder of files)",
        "mbp: warning: skipped 1 file(s) of unknown kind, e.g. red/notes.md (known: .bmp .flac .gif .jpeg "
        ".jpg .ogg .png .tif .tiff .txt .wav .webp)",
        f"packed 7 image samples of 3 classes into {src / 'shards'}: 4 train in 1 shard(s), 3 eval in 1 "
        "shard(s); 0 duplicate(s), 4 file(s) skipped",
    ]


def test_by_folder_refuses_a_mix_of_kinds_and_a_folder_without_classes(tmp_path: Path) -> None:
    src = class_tree(tmp_path / "src", per_class=2)
    (src / "red" / "caption.txt").write_text("red")
    mixed = invoke_mbp("shards", "pack", "--by-folder", str(src), str(tmp_path / "out"))
    assert mixed.returncode == 1
    assert mixed.stderr.strip().splitlines() == [
        f"mbp: error: {src}: the classes mix kinds of file: 6 image (e.g. blue/0000.jpg), 1 text "
        "(e.g. red/caption.txt); pack one kind (move the others out)"
    ]
    assert not (tmp_path / "out").exists()
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "0001.jpg").write_bytes(image((1, 2, 3), (4, 4), "JPEG"))
    result = invoke_mbp("shards", "pack", "--by-folder", str(flat), str(tmp_path / "out"))
    assert result.returncode == 1 and f"{flat}: no class folder holds" in result.stderr.splitlines()[-1]
    usage = [
        invoke_mbp("shards", "pack", "--by-folder", str(src)),
        invoke_mbp("shards", "pack", str(src), str(tmp_path / "x-%d.tar"), "--seed", "1"),
    ]
    assert [(r.returncode, r.stderr.strip()) for r in usage] == [
        (2, "mbp: error: give --by-folder SRC OUT_DIR (SRC: a folder of class folders)"),
        (2, "mbp: error: --eval-fraction and --seed split a --by-folder pack; add --by-folder"),
    ]


def test_by_folder_keys_are_unique_and_texts_and_sounds_have_their_fields(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "big cats").mkdir(parents=True)
    (src / "dogs").mkdir()
    for name in ("0001.txt", "0001.TXT.txt", "0001_TXT.txt", "a.b.txt"):
        (src / "big cats" / name).write_text(f"about {name}")
    (src / "dogs" / "x.txt").write_text("woof")
    report = pack_folder(src, tmp_path / "out", "--eval-fraction", "0")
    assert report["eval"] == [] and report["samples"] == {"train": 5, "eval": 0}
    samples = read_side(report["train"])
    assert sorted(samples) == [
        "big_cats/0001",
        "big_cats/0001_TXT",
        "big_cats/0001_TXT-2",
        "big_cats/a_b",
        "dogs/x",
    ]
    assert samples["big_cats/0001_TXT-2"] == {"text": b"about 0001_TXT.txt", "label": b"big cats"}
    sounds = tmp_path / "sounds"
    for label in ("yes", "no"):
        (sounds / label).mkdir(parents=True)
        (sounds / label / "a.wav").write_bytes(wav() + label.encode())
    report = pack_folder(sounds, tmp_path / "sound-shards", "--eval-fraction", "0.5")
    assert report["kind"] == "audio" and report["samples"] == {"train": 2, "eval": 0}
    assert read_side(report["train"])["yes/a"]["audio"] == wav() + b"yes"


def test_pack_csv_manifest(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png())
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        '__key__,scene.png,question.txt,answer.txt\nk1,@a.png,"what, here?",red\nk2,,why?,blue\n'
    )
    result = invoke_mbp("shards", "pack", "--manifest", str(manifest), str(tmp_path / "s-%03d.tar"), "--json")
    assert result.returncode == 0, result.stderr
    samples = read_side(json.loads(result.stdout)["shards"])
    assert samples["k1"] == {"scene.png": png(), "question.txt": b"what, here?", "answer.txt": b"red"}
    assert samples["k2"] == {"question.txt": b"why?", "answer.txt": b"blue"}
    manifest.write_text("question.txt,answer.txt\nwhat?,red\nwhy?\n")
    bad = invoke_mbp("shards", "pack", "--manifest", str(manifest), str(tmp_path / "t-%03d.tar"))
    assert bad.returncode == 1
    assert bad.stderr.strip().endswith("m.csv:3: 1 values for 2 columns (question.txt, answer.txt)")
    assert not list(tmp_path.glob("t-*"))


def test_folder_of_images_to_a_checkpoint_and_an_accuracy(tmp_path: Path) -> None:
    """The README's three commands: pack a folder of class folders, train classify-images on it (a
    few steps of a small model: completion is the subject, learning is measured in BENCHMARKS.md),
    evaluate the checkpoint."""
    class_tree(tmp_path / "photos")
    out, run = tmp_path / "shards", tmp_path / "run"
    packed = invoke_mbp("shards", "pack", "--by-folder", str(tmp_path / "photos"), str(out))
    assert packed.returncode == 0, packed.stderr
    # the shipped registry with classify-images' model made small, given to run and eval alike (eval
    # refuses a checkpoint whose model is not its pipeline's)
    shipped = (Path(__file__).parent.parent / "registry.yaml").read_text()
    big = "        - {backbone: {type: transformer, heads: 4}, dim: 128, layers: 2}\n"
    big += "        - {backbone: {type: transformer, heads: 2}, dim: 64, layers: 2}\n"
    small = "        - {backbone: {type: transformer, heads: 2}, dim: 32, layers: 1}\n"
    small += "        - {backbone: {type: transformer, heads: 2}, dim: 16, layers: 1}\n"
    head, images = shipped.split("  classify-images:\n", 1)
    assert big in images
    registry = tmp_path / "registry.yaml"
    registry.write_text(head + "  classify-images:\n" + images.replace(big, small, 1))
    settings = ["data.batch_size=2", "train.precision=fp32"]
    trained = invoke_mbp(
        "run", "classify-images", str(out / "train-*.tar"), "--eval-shards", str(out / "eval-*.tar"),
        "--steps", "3", "--out", str(run), *[arg for s in settings for arg in ("--set", s)], "--json",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    summary = json.loads(trained.stdout)
    assert summary["steps"] == 3 and summary["samples_skipped"] == 0
    assert (run / "checkpoints" / "best" / "model.safetensors").is_file()
    evaluated = invoke_mbp(
        "eval", "classify-images", str(out / "eval-*.tar"), "--checkpoint", str(run / "checkpoints" / "best"),
        "--json",
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads(evaluated.stdout)["metrics"]
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["majority_baseline"] == pytest.approx(1 / 3)
    assert metrics["accuracy"] == summary["metrics"]["accuracy"]


def sound(path: Path, pitch: float, fmt: str, subtype: str) -> None:
    import numpy as np
    import soundfile as sf

    t = np.arange(4000) / 8000
    sf.write(path, 0.5 * np.sin(2 * np.pi * pitch * t), 8000, format=fmt, subtype=subtype)


def test_flac_and_ogg_clips_are_read_by_classify_sounds(tmp_path: Path, components) -> None:
    """A folder of FLAC and Ogg Vorbis clips (packed as ``audio``) reads as log-mel spectrograms like
    WAV clips do, none skipped."""
    src = tmp_path / "src"
    for label, pitch in (("low", 220.0), ("high", 880.0)):
        (src / label).mkdir(parents=True)
        sound(src / label / "a.flac", pitch, "FLAC", "PCM_16")
        sound(src / label / "b.ogg", pitch * 1.1, "OGG", "VORBIS")
        sound(src / label / "c.wav", pitch * 1.2, "WAV", "PCM_16")
    report = pack_folder(src, tmp_path / "out", "--eval-fraction", "0")
    assert report["kind"] == "audio" and report["samples"]["train"] == 6
    encoder = resolve(None, "classify-sounds", components=components).encoder
    for key, fields in read_side(report["train"]).items():
        segments = decode_stream(encoder.encode(RawSample("s.tar", key, fields)).tokens).segments
        assert [segment.codec for segment in segments] == ["wav", "text"]
        # 0.5 s in frames 20 ms apart, 16 bands a frame, whatever the file's format
        assert segments[0].meta["payload"] == "logmel" and len(segments[0].payload) in range(23 * 16, 27 * 16)
