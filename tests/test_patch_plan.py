"""A byte-level stage without a patch gives each field laid out in rows (an image's pixels, a
spectrogram's frames) patches of one row, planned by ``mbp run`` from the data and recorded in its
checkpoints; a given patch fixes one length."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from mbp.api import build_model
from mbp.config import ModelConfig
from mbp.planning.patch_plan import PROBE_SAMPLES, field_rows, patch_for_row
from mbp.planning.plan import plan_byte_patches
from mbp.planning.probe import Probe
from mbp.resolve import resolve
from mbp.traits import codec_traits
from PIL import Image
from pydantic import ValidationError

from tests.conftest import invoke_mbp
from tests.shardkit import wav, write_tar


def registry(fields: str, patch: str = "", data: str = "") -> str:
    # samples with sounds may lack their image fields and the other way round
    named = [n for n in ("image", "scene", "tone") if f"      {n}:" in fields]
    optional = ", ".join(named) if "tone" in named else ""
    return f"""\
pipelines:
  ask:
    fields:
{fields}
      answer: {{type: text}}
    optional: [{optional}]
    head: {{type: vqa}}
    model:
      stages:
        - {{backbone: {{type: transformer, heads: 2}}, dim: 32, layers: 1}}
        - {{backbone: {{type: transformer, heads: 2}}, dim: 16, layers: 1{patch}}}
    data: {{batch_size: 2{data}}}
    train: {{steps: 2, eval_every: 2, checkpoint_every: 2}}
"""


PIXELS = "      image: {type: pixels, mode: L}"
RGB = "      image: {type: pixels, mode: RGB}"
MIXED = RGB + "\n      tone: {type: wav}"


def picture(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def shard(path: Path, width: int, height: int, count: int = 6, **extra: bytes) -> str:
    samples = [
        {"__key__": f"s{i}".encode(), "image.png": picture(width, height, i), "answer.txt": b"a", **extra}
        for i in range(count)
    ]
    write_tar(path, samples)
    return str(path)


@pytest.mark.parametrize(
    ("row", "patch"), [(28, 28), (8, 8), (128, 128), (4, 8), (3, 9), (96, 96), (192, 96), (131, None)]
)
def test_a_patch_is_one_row_or_whole_rows_or_an_even_part_of_one(row: int, patch: int | None) -> None:
    assert patch_for_row(row) == patch


def test_only_the_byte_level_stage_may_leave_its_patch_to_the_run(components) -> None:
    first = {"backbone": {"type": "transformer", "heads": 2}, "dim": 16, "layers": 1}
    unset = ModelConfig.model_validate({"stages": [first, first]})
    assert unset.stages[1].patch is None and unset.patches == [8]  # built without data: the default
    assert build_model(unset, components).patch_len == 8
    planned = unset.with_byte_patch(28)
    assert planned.patches == [28] and ModelConfig.model_validate(planned.model_dump()) == planned
    with pytest.raises(ValidationError, match="stage 2 needs patch"):  # a middle stage has no rows to follow
        ModelConfig.model_validate({"stages": [first, first, {**first, "patch": 4}]})


def test_pixels_and_spectrograms_say_how_long_their_rows_are(components) -> None:
    pixels = components.build("codecs", {"type": "pixels", "mode": "RGB"})
    assert codec_traits(pixels).rows and not codec_traits(components.build("codecs", {"type": "text"})).rows
    assert pixels.row_bytes(pixels.encode(picture(12, 5, 0))) == 36  # 12 pixels of 3 bytes
    sound = components.build("codecs", {"type": "wav"})
    assert sound.row_bytes(sound.encode(wav())) is None  # raw samples: no rows
    assert sound.for_reading().row_bytes(sound.for_reading().encode(wav())) == 16  # log-mel bands


def plan(tmp_path: Path, fields: str, shards: list[str], patch: str = "", data: str = "") -> tuple[int, str]:
    """The byte-level patch ``mbp run`` settles on for ``shards`` (the longest where it places them) and
    its account of the fields (``given`` where the pipeline gives the patch)."""
    (tmp_path / "registry.yaml").write_text(registry(fields, patch, data))
    from mbp.plugins import get_platform

    resolved = resolve(str(tmp_path / "registry.yaml"), "ask", components=get_platform().components)
    planned, made = plan_byte_patches(resolved, Probe(shards))
    assert planned.encoder.row == planned.pipeline.model.patches[-1]  # the encoder packs for it
    return planned.pipeline.model.patches[-1], made.describe().split("; ")[0] if made else "given"


def test_the_run_gives_each_field_one_row_and_falls_back_to_eight(tmp_path: Path) -> None:
    grey = shard(tmp_path / "grey.tar", 28, 28)
    words = "answer word starts (longest 16)"
    assert plan(tmp_path, PIXELS, [grey]) == (28, f"boundaries: image one 28-byte row, {words}")
    assert plan(tmp_path, RGB, [grey]) == (84, f"boundaries: image one 84-byte row, {words}")
    assert plan(tmp_path, PIXELS, [grey], patch=", patch: 4") == (4, "given")
    # samples packed at any token: a given seq_len need not hold whole rows
    _, fields = plan(tmp_path, PIXELS, [grey], data=", seq_len: 1024")
    assert fields.startswith("boundaries: image one 28-byte row")
    # images of two sizes in one field: no one row tiles both, so fixed patches of the default
    wide = shard(tmp_path / "wide.tar", 16, 4)
    assert plan(tmp_path, PIXELS, [grey, wide]) == (16, f"boundaries: image fixed 8 bytes, {words}")
    sounds = shard(tmp_path / "sounds.tar", 16, 16, **{"tone.wav": wav()})  # RGB rows of 48, frames of 16
    mixed = f"boundaries: image one 48-byte row, tone one 16-byte row, {words}"
    assert plan(tmp_path, MIXED, [sounds]) == (48, mixed)
    text = "      question: {type: text}"
    assert plan(tmp_path, text, [grey]) == (16, f"boundaries: question word starts (longest 16), {words}")


def test_a_run_records_the_planned_patch_and_evaluates_with_it(tmp_path: Path) -> None:
    (tmp_path / "registry.yaml").write_text(registry(PIXELS))
    train = shard(tmp_path / "train.tar", 12, 12)
    out = tmp_path / "run"
    args = ["run", "ask", train, "--registry", str(tmp_path / "registry.yaml"), "--out", str(out)]
    result = invoke_mbp(*args)
    assert result.returncode == 0, result.stderr
    assert "boundaries: image one 12-byte row, answer word starts (longest 16)" in result.stderr
    checkpoint = out / "checkpoints" / "step-00000002"
    document = json.loads((checkpoint / "config.json").read_text())
    assert document["model"]["stages"][-1]["patch"] == 16  # the longest: a word of the answer
    assert document["model"]["boundaries"]["pixels"] == {"rule": "fixed", "length": 12}
    resumed = invoke_mbp(*args, "--resume", "--set", "train.steps=4")  # planned again: the same patch
    assert resumed.returncode == 0, resumed.stderr
    last = str(out / "checkpoints" / "step-00000004")
    scored = invoke_mbp(
        "eval", "ask", train, "--checkpoint", last, "--registry", str(tmp_path / "registry.yaml")
    )
    assert scored.returncode == 0, scored.stderr
    assert "accuracy" in scored.stdout


def test_a_resume_keeps_the_patches_its_checkpoint_was_trained_with(tmp_path: Path) -> None:
    (tmp_path / "registry.yaml").write_text(registry(PIXELS))
    train = shard(tmp_path / "train.tar", 12, 12)
    out = tmp_path / "run"
    args = ["run", "ask", train, "--registry", str(tmp_path / "registry.yaml"), "--out", str(out)]
    # one patch of one row, as a pipeline that left the patch unset was planned before rules
    assert invoke_mbp(*args, "--set", "model.stages.1.patch=12").returncode == 0
    refused = invoke_mbp(*args, "--resume", "--set", "train.steps=4")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "placed its byte-level patches 12 bytes long, this run would place them by rules" in refused.stderr
    assert "give --set model.stages.1.patch=12 to resume it" in refused.stderr
    kept = invoke_mbp(*args, "--resume", "--set", "train.steps=4", "--set", "model.stages.1.patch=12")
    assert kept.returncode == 0, kept.stderr
    assert (out / "checkpoints" / "step-00000004").is_dir()


def test_damaged_shards_do_not_stop_the_plan(tmp_path: Path) -> None:
    from tests.shardkit import corrupt_set

    shards = corrupt_set(tmp_path / "damaged")  # an undecodable image and WAV, a cut shard, a non-tar
    fields = "      scene: {type: pixels}\n      tone: {type: wav}\n      question: {type: text}"
    (tmp_path / "registry.yaml").write_text(
        registry(fields).replace("optional: []", "optional: [scene, tone]")
    )
    from mbp.plugins import get_platform

    resolved = resolve(str(tmp_path / "registry.yaml"), "ask", components=get_platform().components)
    rows = field_rows(resolved, Probe(shards).samples(resolved, PROBE_SAMPLES))
    assert rows == {12: ["scene"], 16: ["tone"]}  # 4x4 RGB scenes, log-mel frames
    _, made = plan_byte_patches(resolved, Probe(shards))
    assert made is not None and made.longest == 16
    assert made.fields["scene"] == "one 12-byte row" and made.fields["tone"] == "one 16-byte row"
