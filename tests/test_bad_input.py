"""Issue 11: each kind of bad input gives one line naming the culprit, the right exit code, and loses no
good data: generated streams that break the format, codecs that crash, options out of range, manifests
that name unsafe members, registries with duplicate keys or code tags, pipelines that cannot be built."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mbp.config import Pipeline
from mbp.data.batches import encoded_stream
from mbp.data.encode import SampleEncoder
from mbp.data.skips import SkipLog
from mbp.hookspecs import hookimpl
from mbp.model.build import build_model
from mbp.model.checkpoint_files import save_model
from mbp.plugins import new_platform
from mbp.protocol import BOS, END, HDR, SEG, Segment, decode_lenient
from mbp.resolve import pipeline_codecs
from mbp.segment_files import write_segments
from mbp.traits import head_defaults
from pydantic import BaseModel

from tests.conftest import invoke_mbp, run_mbp
from tests.shardkit import write_tar
from tests.test_config import GOOD as TINY  # one tiny pipeline for the config tests


def tokens(text: str) -> list[int]:
    return list(text.encode())


def test_generated_stream_that_breaks_the_format_keeps_its_segments(tmp_path: Path, components) -> None:
    """Before the fix: ``ProtocolError: expected END, got SEG`` and no file at all."""
    stream = [BOS, SEG, *tokens("text"), HDR, *tokens("prompt"), END]
    stream += [SEG, *tokens("text"), HDR, *tokens("a whole answer"), END]
    stream += [SEG, *tokens("text"), HDR, *tokens("cut by"), SEG, *tokens("text"), HDR, *tokens("more")]
    warnings: list[str] = []

    def codec_for(name: str):
        return components.build("codecs", {"type": name})

    written = write_segments(stream, 1, tmp_path / "out", codec_for, warnings.append)
    assert warnings == [
        "generated stream breaks the segment format (segment 'text' at position 35: expected END, got SEG); "
        "kept what came before"
    ]
    assert [Path(p).name for p in written] == ["segment-00.txt", "segment-01-partial.txt"]
    assert [Path(p).read_bytes() for p in written] == [b"a whole answer", b"cut by"]
    decoded = decode_lenient(stream)
    assert decoded.broken == "segment 'text' at position 35: expected END, got SEG"
    assert decode_lenient(stream[:20]).broken is None  # a stream that is only cut short is not broken


def test_generate_rejects_bad_options_in_one_line(tmp_path: Path, components) -> None:
    pipeline = Pipeline.model_validate(
        {
            "fields": {"txt": {"type": "text"}},
            "head": {"type": "lm"},
            "model": {"stages": [{"backbone": {"type": "transformer", "heads": 2}, "dim": 16, "layers": 1}]},
        }
    )
    checkpoint = tmp_path / "ckpt"
    model = build_model(pipeline.model, components)
    save_model(checkpoint, model, pipeline.model, {"pipeline": pipeline.model_dump(), "pipeline_name": "t"})
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    cases = [
        (["--temperature", "nan"], "--temperature nan: expected a finite number"),
        (["--temperature", "inf"], "--temperature inf: expected a finite number"),
        (["--top-p", "nan"], "--top-p nan: expected a finite number"),
        (["--codec", "jpeg"], "--codec jpeg: not a registered codec (valid: image, pixels, text, wav)"),
        (
            ["--field", f"txt=@{tmp_path / 'latin1.txt'}"],
            f"--field txt: {tmp_path / 'latin1.txt'}: not valid UTF-8 at byte 3",
        ),
    ]
    for index, (args, message) in enumerate(cases):
        # the first case as the mbp process (its exit status, all it writes to stderr); the others through
        # the same command in-process, where one interpreter start apiece bought nothing more
        mbp = run_mbp if index == 0 else invoke_mbp
        result = mbp("generate", "--checkpoint", str(checkpoint), *args)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"mbp: error: {message}"), (args, lines)


class CrashParams(BaseModel):
    pass


class CrashingCodec:
    name = "crashy"
    extension = "bin"

    def __init__(self, params: BaseModel) -> None:
        self.params = params

    def encode(self, data: bytes) -> Segment:
        if data.startswith(b"boom"):
            return Segment(self.name, data, {"ratio": str(1 / 0)})
        return Segment(self.name, data)


class CrashPlugin:
    @hookimpl
    def mbp_register_codecs(self, register):
        register("crashy", CrashingCodec, CrashParams)


def test_codec_raising_a_foreign_error_costs_one_named_sample(tmp_path: Path, capfd) -> None:
    """Before the fix the ZeroDivisionError ended the whole run."""
    platform = new_platform({"crashy": CrashPlugin()})
    pipeline = Pipeline.model_validate(
        {
            "fields": {"blob": {"type": "crashy"}},
            "head": {"type": "lm"},
            "model": {"stages": [{"backbone": {"type": "transformer", "heads": 2}, "dim": 16, "layers": 1}]},
        }
    )
    head = platform.components.build("heads", {"type": "lm"})
    defaults = head_defaults(head)
    encoder = SampleEncoder(
        pipeline, pipeline_codecs(pipeline, platform.components, defaults), head, defaults
    )
    samples = [{"__key__": f"{i:02d}".encode(), "blob": b"boom" if i == 1 else b"fine"} for i in range(3)]
    write_tar(tmp_path / "s.tar", samples)
    log = SkipLog()
    got = [s.key for s, _ in encoded_stream([str(tmp_path / "s.tar")], encoder, 64, log, repeat=False)]
    assert got == ["00", "02"] and log.samples_skipped == 1 and log.reasons == {"bad field": 1}
    err = capfd.readouterr().err.strip()
    assert err == (
        "mbp: warning: skipped s.tar:sample 01:field blob: codec 'crashy' failed: "
        "ZeroDivisionError: division by zero"
    )


def test_manifest_names_files_only_with_at_and_refuses_unsafe_names(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("file contents")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        json.dumps({"__key__": "k1", "doc.txt": "@a.txt", "note.txt": "a.txt"}) + "\n"  # second stays text
    )
    # the good manifest in-process; the first refusal below as the mbp process, the others in-process
    packed = invoke_mbp("shards", "pack", "--manifest", str(manifest), str(tmp_path / "s-%03d.tar"), "--json")
    assert packed.returncode == 0, packed.stderr
    report = json.loads(
        invoke_mbp("shards", "inspect", *json.loads(packed.stdout)["shards"], "--json").stdout
    )
    assert report["fields"] == {"doc.txt": {"count": 1, "bytes": 13}, "note.txt": {"count": 1, "bytes": 5}}
    bad = {
        '{"__key__": "../evil", "t.txt": "x"}': "key '../evil' must not be empty or hold '/', '..' or '.'",
        '{"__key__": "a.b", "t.txt": "x"}': "key 'a.b' must not be empty or hold '/', '..' or '.'",
        '{"sub/t.txt": "x"}': "field name 'sub/t.txt' must not be empty or hold '/', '..'",
        '{"t..txt": "x"}': "field name 't..txt' must not be empty or hold '/', '..'",
        '{"t.txt": "@missing.txt"}': "field 't.txt': cannot read",
    }
    for index, (line, message) in enumerate(bad.items()):
        manifest.write_text(line + "\n")
        mbp = run_mbp if index == 0 else invoke_mbp
        result = mbp("shards", "pack", "--manifest", str(manifest), str(tmp_path / "x-%03d.tar"))
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"mbp: error: {manifest}:1: {message}"), lines


def test_validate_builds_shapes_and_lists_every_problem(tmp_path: Path) -> None:
    """Before the fix validate said ok to all of these; ``mbp run`` failed on the first at build time."""
    text = (
        TINY.replace("heads: 2}, dim: 32", "heads: 3}, dim: 32")
        .replace("heads: 2}, dim: 16", "heads: 5}, dim: 16")
        .replace("seq_len: 4}", "seq_len: 4}\n    data: {seq_len: 30}")
    )
    registry = tmp_path / "reg.yaml"
    registry.write_text(text)
    result = run_mbp("validate", str(registry))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"mbp: error: {registry}:8: pipelines.tiny.model.stages.0: backbone 'transformer' "
        "(heads=3, dim=32, layers=1) cannot be built: transformer width 32 is not divisible by heads=3",
        f"mbp: error: {registry}:9: pipelines.tiny.model.stages.1: backbone 'transformer' "
        "(heads=5, dim=16, layers=1) cannot be built: transformer width 16 is not divisible by heads=5",
        f"mbp: error: {registry}:10: pipelines.tiny.data.seq_len: 30 is not a multiple of the patch length 4",
    ]


@pytest.mark.parametrize(
    ("text", "lines"),
    [
        (
            TINY.replace("txt: {type: text}", "txt: {type: text}\n      txt: {type: wav}").replace(
                "head: {type: lm}", "head: {type: lm}\n    head: {type: vqa}"
            ),
            [
                ":5: pipelines.tiny.fields.txt: duplicate key (first at line 4)",
                ":7: pipelines.tiny.head: duplicate key (first at line 6)",
            ],
        ),
        (
            TINY.replace("{type: text}", "!!python/object/apply:os.system [echo pwned]"),
            [":4: pipelines.tiny.fields.txt: tag !!python/object/apply:os.system is not allowed"],
        ),
        (
            TINY.replace("dim: 32", "dim: thirty").replace("layers: 1, seq", "layers: -1, seq"),
            [
                ":8: pipelines.tiny.model.stages.0.dim: Input should be a valid integer",
                ":9: pipelines.tiny.model.stages.1.layers: Input should be greater than or equal to 0",
            ],
        ),
    ],
    ids=["duplicate keys", "python tag", "all pydantic problems"],
)
def test_registry_problems_are_all_listed_with_exit_2(
    tmp_path: Path, text: str, lines: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = tmp_path / "reg.yaml"
    registry.write_text(text)
    monkeypatch.chdir(tmp_path)  # where a run would make mbp-runs/
    # validate as the mbp process; run, which reads the registry through the same code, in-process
    for command, mbp in (
        (["validate", str(registry)], run_mbp),
        (["run", "--registry", str(registry), "--steps", "0"], invoke_mbp),
    ):
        result = mbp(*command)
        assert result.returncode == 2, result.stderr
        got = result.stderr.strip().splitlines()
        assert len(got) == len(lines), got
        for line, expected in zip(got, lines, strict=True):
            assert line.startswith(f"mbp: error: {registry}{expected}"), (line, expected)
    assert not (tmp_path / "mbp-runs").exists()


def test_a_reader_that_goes_away_ends_the_command_quietly() -> None:
    """`mbp schema | head -1`: the closed pipe is no error to report, and never a traceback."""
    import subprocess
    import sys

    process = subprocess.Popen(
        [sys.executable, "-m", "mbp.cli", "schema"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # gone before the command has written anything: its first write fails
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141
    assert err == ""
