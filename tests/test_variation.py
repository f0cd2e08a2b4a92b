"""Issue 14: a run varies its training samples (``data.augment``) where it trains enough passes to
memorise them, codecs can pin their own setting, and a resumed run replays the same variations."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from mbp.planning.constants import AUGMENT_PASSES
from mbp.planning.probe import Probe
from mbp.planning.recorded import recorded_augment
from mbp.planning.variation import plan_variation, with_augment
from mbp.resolve import Resolved, resolve
from safetensors.torch import load_file

from tests.conftest import invoke_mbp
from tests.shardkit import write_tar
from tests.test_augment import REGISTRY, glyph

UNSET = REGISTRY.replace(", augment: true", "")


def digits(tmp_path: Path, components, image: str = "") -> Resolved:  # type: ignore[no-untyped-def]
    registry = tmp_path / "registry.yaml"
    registry.write_text(UNSET.replace("mode: L", f"mode: L{image}"))
    return resolve(str(registry), "digits", components=components)


def shards(tmp_path: Path, count: int) -> list[str]:
    write_tar(
        tmp_path / "train.tar",
        [
            {"__key__": f"s{i}".encode(), "image.png": glyph(i % 50), "answer.txt": b"one"}
            for i in range(count)
        ],
    )
    return [str(tmp_path / "train.tar")]


def test_fields_follow_the_run_unless_their_codec_pins_it(tmp_path: Path, components) -> None:
    unset = digits(tmp_path, components)
    assert unset.encoder.following == ["image"] and not unset.encoder.varying  # undecided: not varied
    assert list(with_augment(unset, True).encoder.varying) == ["image"]
    assert not with_augment(unset, False).encoder.varying
    pinned_off = digits(tmp_path, components, ", augment: false")
    assert not pinned_off.encoder.following and not with_augment(pinned_off, True).encoder.varying
    pinned_on = digits(tmp_path, components, ", augment: true")
    assert list(with_augment(pinned_on, False).encoder.varying) == ["image"]


def test_a_run_varies_its_samples_from_fifteen_passes(tmp_path: Path, components) -> None:
    resolved, paths = digits(tmp_path, components), shards(tmp_path, 20)
    assert AUGMENT_PASSES == 15
    varied, plan = plan_variation(resolved, Probe(paths), 75, lambda: 4.0)  # 300 samples trained: 15 passes
    assert plan is not None and plan.varied and plan.passes == pytest.approx(15.0)
    assert varied.pipeline.data.augment is True and list(varied.encoder.varying) == ["image"]
    assert "image varied (15.0 passes" in plan.describe()
    plain, plan = plan_variation(resolved, Probe(paths), 74, lambda: 4.0)  # 14.8 passes
    assert plan is not None and not plan.varied and plan.passes is None  # counting stopped at 20
    assert plain.pipeline.data.augment is False and not plain.encoder.varying
    assert "image not varied (under 15 passes)" in plan.describe()
    # a size the step plan already counted is taken, not counted again: no shards to read here
    _, plan = plan_variation(resolved, Probe([]), 75, lambda: 4.0, known_samples=20)
    assert plan is not None and plan.varied and plan.passes == pytest.approx(15.0)
    _, plan = plan_variation(resolved, Probe([]), 75, lambda: 4.0, known_samples=21)
    assert plan is not None and not plan.varied

    def never() -> float:
        raise AssertionError("samples a step are only probed when there is something to settle")

    given = with_augment(resolved, False)
    assert plan_variation(given, Probe(paths), 75, never) == (given, None)
    pinned = digits(tmp_path, components, ", augment: false")
    assert plan_variation(pinned, Probe(paths), 75, never) == (pinned, None)


def test_a_checkpoint_records_the_variation_and_a_resume_replays_it(tmp_path: Path, components) -> None:
    registry = tmp_path / "registry.yaml"
    registry.write_text(UNSET)
    paths = shards(tmp_path, 2)  # 24 steps of at least 2 samples: 24 passes or more
    settings = ["--set", "train.steps=24", "--set", "train.checkpoint_every=12", "--set", "data.batch_size=2"]

    def run(out: Path, *extra: str) -> dict:  # type: ignore[type-arg]
        result = invoke_mbp("run", "digits", *paths, "--registry", str(registry), "--out", str(out), "--json",
                            *settings, *extra)  # fmt: skip
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    straight = run(tmp_path / "straight")
    assert straight["variation"]["varied"] is True and straight["variation"]["passes"] >= AUGMENT_PASSES
    checkpoints = tmp_path / "straight" / "checkpoints"
    document = json.loads((checkpoints / "step-00000012" / "config.json").read_text())
    assert recorded_augment(document) is True
    assert recorded_augment({"pipeline": {"data": {}}}) is False  # a run from before the setting
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "straight", resumed)
    for later in ("step-00000024", "best"):
        shutil.rmtree(resumed / "checkpoints" / later, ignore_errors=True)
    run(resumed, "--resume")
    a = load_file(str(checkpoints / "step-00000024" / "model.safetensors"))
    b = load_file(str(resumed / "checkpoints" / "step-00000024" / "model.safetensors"))
    assert a.keys() == b.keys() and all(a[name].equal(b[name]) for name in a)
    # resumed on a set so large that planning now would not vary: the run keeps what it recorded
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "straight", elsewhere)
    shutil.rmtree(elsewhere / "checkpoints" / "step-00000024")
    shutil.rmtree(elsewhere / "checkpoints" / "best", ignore_errors=True)
    (tmp_path / "larger").mkdir()
    larger = shards(tmp_path / "larger", 200)  # 24 steps of 2 samples: 0.24 passes
    again = invoke_mbp("run", "digits", *larger, "--registry", str(registry), "--out", str(elsewhere),
                       "--json", *settings, "--resume")  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["variation"]["varied"] is True
