"""Properties of the command line over random small inputs: registries (valid, broken YAML, unknown types,
wrong parameters), shards (valid tars, cut ones, garbage) and ``--set`` values. Whatever the input,
``mbp validate``, ``mbp shards inspect`` and ``mbp run --steps 1`` end with exit 0, 1 or 2 (a failure's
last line an error line), print no traceback, return, and change no file outside ``--out``.

Commands run in this process through click's runner (a fresh interpreter costs seconds); a few examples
run as processes too, for what only a process shows (a traceback at exit, a hang). Examples are drawn
from a fixed seed (``derandomize``), so a run in CI sees the ones a run here saw.
"""

from __future__ import annotations

import io
import os
import signal
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import yaml
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from tests.conftest import invoke_mbp, run_mbp

SETTINGS = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
HANG = 300
"""Seconds after which a command run in this process counts as hung (one step of a tiny model takes a
few seconds even on a busy 2-core machine)."""

SMALL = st.integers(min_value=-2, max_value=40)
"""Numbers for settings: small, so that a valid one still trains in a moment."""
ODD = st.sampled_from(["x", "", "[]", "{a: 1}", None, True, 1e400, -0.5, "nosuch"])
PIPELINE_SETTINGS = [
    "codec",
    "backbone",
    "heads",
    "dim",
    "layers",
    "field",
    "head",
    "seq_len",
    "batch",
    "extra",
]


def _pipeline(draw: st.DrawFn) -> dict[str, Any]:
    """A pipeline near a valid one: up to three of its settings wrong (a bad value, type or name)."""
    broken = draw(st.sets(st.sampled_from(PIPELINE_SETTINGS), max_size=3))

    def pick(name: str, good: Any, *wrong: Any) -> Any:
        if name not in broken:
            return good
        return draw(st.one_of(st.sampled_from(wrong), ODD) if wrong else ODD)

    backbone: dict[str, Any] = {"type": pick("backbone", "transformer", "mamba", "nosuch")}
    backbone["heads" if backbone["type"] != "mamba" else "state"] = pick("heads", 2, 0, 3, -1)
    stage = {"backbone": backbone, "dim": pick("dim", 16, 0, 17, -16), "layers": pick("layers", 1, 0, 2)}
    pipeline: dict[str, Any] = {
        "fields": {pick("field", "txt", "answer", ""): {"type": pick("codec", "text", "pixels", "wav", "x")}},
        "head": {"type": pick("head", "lm", "vqa", "classify", "nosuch")},
        "model": {"stages": [stage]},
        "data": {"seq_len": pick("seq_len", 32, 1, 0, 5), "batch_size": pick("batch", 2, 1, 0)},
        "train": {"steps": 1, "precision": "fp32", "log_every": 1},
    }
    if "extra" in broken:
        pipeline[draw(st.sampled_from(["bogus", "data", "model", "optional"]))] = draw(ODD)
    return pipeline


@st.composite
def registries(draw: st.DrawFn, *, mostly_pipelines: bool = False) -> str:
    """Registry text: a rendered pipeline, sometimes cut short (broken YAML), random text or a random
    document. ``mostly_pipelines``: five in six are pipelines, so that a run gets as far as training."""
    others = ["cut"] if mostly_pipelines else ["cut", "text", "document"]
    shape = draw(st.sampled_from(["pipeline"] * (5 if mostly_pipelines else 3) + others))
    if shape == "text":
        return draw(st.text(max_size=40))
    if shape == "document":
        leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5))
        tree = st.recursive(
            leaves,
            lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=4), kids, max_size=3),
            max_leaves=8,
        )
        return yaml.safe_dump(draw(tree))
    text = yaml.safe_dump({"pipelines": {"p": _pipeline(draw)}}, sort_keys=False)
    return text[: draw(st.integers(0, len(text)))] if shape == "cut" else text


def _tar(samples: list[tuple[str, str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for key, field, data in samples:
            info = tarfile.TarInfo(f"{key}.{field}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@st.composite
def shards(draw: st.DrawFn) -> bytes:
    """Shard bytes: a valid tar of text samples, one cut short, or garbage."""
    shape = draw(st.sampled_from(["tar", "tar", "tar", "cut", "garbage"]))
    if shape == "garbage":
        return draw(st.binary(max_size=600))
    keys = draw(
        st.lists(st.sampled_from(["00", "01", "02", "03", "a/b", "../up", "x.y"]), min_size=1, max_size=4)
    )
    field = draw(st.sampled_from(["txt", "txt", "txt", "answer", "png"]))
    contents = st.one_of(st.text(min_size=1, max_size=40).map(str.encode), st.binary(min_size=1, max_size=40))
    data = [(key, field, draw(contents)) for key in keys]
    raw = _tar(data)
    return raw[: draw(st.integers(0, len(raw)))] if shape == "cut" else raw


KEYS = [
    "train.steps",
    "data.seq_len",
    "data.batch_size",
    "model.dropout",
    "model.stages.0.dim",
    "head.type",
    "fields.txt.type",
    "model.stages.0.backbone.heads",
    "train.lr",
]
VALUES = st.one_of(
    SMALL.map(str),
    st.sampled_from(
        [
            "",
            "null",
            "[]",
            "{}",
            "nan",
            "-inf",
            "1e400",
            "0.5",
            "'2'",
            "&a [*a]",
            "!!python/object/apply:os.getcwd []",
            "[1, 2",
            "{",
        ]
    ),
    st.text(max_size=8),
)
SETS = st.lists(
    st.tuples(st.one_of(st.sampled_from(KEYS), st.text(max_size=10)), VALUES).map(
        lambda kv: f"{kv[0]}={kv[1]}"
    ),
    max_size=2,
)


class Hung(BaseException):
    """A command in this process did not return (BaseException: no handler of the CLI turns it into an
    exit code)."""


@contextmanager
def _bounded(seconds: int) -> Iterator[None]:
    def expire(signum: int, frame: FrameType | None) -> None:
        raise Hung(f"no return within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@contextmanager
def _inside(folder: Path) -> Iterator[None]:
    """Run with ``folder`` as the working directory, so that a stray relative write lands in the snapshot."""
    here = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(here)


def _snapshot(folder: Path, out: Path) -> dict[str, tuple[int, int]]:
    return {
        str(path.relative_to(folder)): (path.stat().st_mtime_ns, path.stat().st_size)
        for path in folder.rglob("*")
        if out not in path.parents and path != out
    }


def _check(args: list[str], folder: Path, *, process: bool = False) -> list[str]:
    """Run ``mbp ARGS`` in ``folder`` and check the properties every command keeps; return its stderr
    lines."""
    out = folder / "out"
    before = _snapshot(folder, out)
    with _inside(folder):
        if process:
            result = run_mbp(*args, timeout=HANG)
        else:
            with _bounded(HANG):
                result = invoke_mbp(*args)
    said = result.stderr.rstrip("\n").split("\n")
    assert result.returncode in (0, 1, 2), (args, result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, (args, result.stderr[-2000:])
    if result.returncode:  # a failure ends in one line that says so (click's own for a usage error)
        assert said[-1].startswith(("mbp: error: ", "Error: ")), (args, said[-3:])
    assert _snapshot(folder, out) == before, args
    return said


@contextmanager
def _files(registry: str, shard: bytes) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        (folder / "reg.yaml").write_text(registry, encoding="utf-8", errors="surrogateescape")
        (folder / "s.tar").write_bytes(shard)
        yield folder


VALID = """\
pipelines:
  p:
    fields: {txt: {type: text}}
    head: {type: lm}
    model: {stages: [{backbone: {type: transformer, heads: 2}, dim: 16, layers: 1}]}
    data: {seq_len: 32, batch_size: 2}
    train: {steps: 1, precision: fp32, log_every: 1}
"""
SHARD = _tar([(f"{i:02d}", "txt", f"sample {i}".encode()) for i in range(3)])
LAUGHS = "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}' if i else 'x'] * 9)}]\n" for i in range(9))
"""Nine nested anchors of nine aliases each: 9**9 nodes from 500 bytes."""


@settings(SETTINGS, max_examples=40)
@given(registry=registries())
@example(registry=LAUGHS + VALID)  # held validation while memory grew
@example(registry="x: &x [1, *x]\n")  # RecursionError (exit 1)
@example(registry='pipelines: {}\n"a\\Nb": 1\n')  # a key with a line break (NEL) cut its line in two
def test_validate_ends_in_one_line_whatever_the_registry(registry: str) -> None:
    with _files(registry, b"") as folder:
        said = _check(["validate", "reg.yaml"], folder)
    if said != ["reg.yaml: ok (1 pipelines: p)"]:  # each problem on a line of its own, naming the file
        assert all(line.startswith("mbp: error: reg.yaml") for line in said), said


@settings(SETTINGS, max_examples=30)
@given(shard=shards(), registry=registries(), with_pipeline=st.booleans())
@example(shard=SHARD, registry=VALID, with_pipeline=True)
@example(shard=SHARD[:700], registry=VALID, with_pipeline=True)
def test_shards_inspect_ends_in_one_line_whatever_the_shard(
    shard: bytes, registry: str, with_pipeline: bool
) -> None:
    with _files(registry, shard) as folder:
        pipeline = ["--pipeline", "p", "--registry", "reg.yaml"] if with_pipeline else []
        _check(["shards", "inspect", "s.tar", *pipeline], folder)


def _run(sets: list[str]) -> list[str]:
    overrides = [arg for setting in sets for arg in ("--set", setting)]
    return ["run", "p", "s.tar", "--registry", "reg.yaml", "--out", "out", "--steps", "1", *overrides]


@settings(SETTINGS, max_examples=12)
@given(registry=registries(mostly_pipelines=True), shard=shards(), sets=SETS)
@example(registry=VALID, shard=SHARD, sets=[])  # trains: every file it writes is under --out
@example(registry=VALID, shard=SHARD, sets=["train.steps=&a [*a]"])  # never returned
def test_run_ends_in_one_line_and_writes_only_its_out(registry: str, shard: bytes, sets: list[str]) -> None:
    with _files(registry, shard) as folder:
        _check(_run(sets), folder)


@settings(SETTINGS, phases=[Phase.explicit])
@given(registry=registries(), shard=shards(), sets=SETS)
@example(registry=VALID, shard=SHARD, sets=["data.batch_size=1"])  # a whole run, threads and all
@example(registry=VALID, shard=b"\x00" * 300, sets=[])
def test_run_as_a_process_ends_in_one_line(registry: str, shard: bytes, sets: list[str]) -> None:
    with _files(registry, shard) as folder:
        _check(_run(sets), folder, process=True)
