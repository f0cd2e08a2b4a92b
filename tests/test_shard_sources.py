"""Shards from anywhere: brace lists, ``http://`` URLs (a server on 127.0.0.1 started here) and
``pipe:`` commands, read as strictly as local files, with a failed or cut stream named in one line by
the shard as given and its HTTP or exit status; a config names no command unless the user allows it."""

from __future__ import annotations

import gzip
import http.server
import io
import itertools
import json
import os
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from mbp.data.read import expand_shards, read_samples
from mbp.data.skips import SkipLog
from mbp.data.sources import ALLOW_PIPE_VARIABLE
from mbp.errors import ConfigError

from tests.conftest import invoke_mbp
from tests.shardkit import REGISTRY, good_samples, tar_bytes, write_tar

SAMPLES = 6


TAR = tar_bytes(good_samples("s", SAMPLES))
GZ = gzip.compress(TAR, mtime=0)


def third_sample_offset() -> int:
    """The offset of the first header of sample s003: a cut there leaves s000..s002 (s002 unconfirmed)."""
    with tarfile.open(fileobj=io.BytesIO(TAR)) as tar:
        return next(m.offset for m in tar.getmembers() if m.name.startswith("s003."))


CUT = third_sample_offset() + 700  # inside s003's first member: s000, s001 and s002 are whole
SERVED = {"/good.tar": TAR, "/good.tar.gz": GZ, "/cut.tar": TAR[:CUT]}
LYING = {"/short.tar": TAR, "/short.tar.gz": GZ}
"""Sent with their whole length as Content-Length, then cut off at ``CUT`` (``GZ_CUT`` for gzip)."""
GZ_CUT = len(GZ) // 2


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = SERVED.get(self.path) or LYING.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(
            body if self.path in SERVED else body[: CUT if self.path.endswith(".tar") else GZ_CUT]
        )
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:  # keeps the test output to the tests
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """The base URL of a server on 127.0.0.1 (never any other address), port chosen by the system."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def read(shards: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[list[str], list[str], SkipLog]:
    """The keys read, the warning lines and the log."""
    log = SkipLog()
    keys = [raw.key for raw in read_samples(shards, log)]
    lines = [line.removeprefix("mbp: warning: ") for line in capsys.readouterr().err.splitlines()]
    return keys, lines, log


ALL = [f"s{i:03d}" for i in range(SAMPLES)]


@pytest.mark.parametrize("name", ["good.tar", "good.tar.gz"])
def test_an_http_shard_reads_every_sample(server: str, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    keys, lines, log = read([f"{server}/{name}"], capsys)
    assert keys == ALL and lines == [] and log.shards_failed == 0


def test_a_missing_url_is_named_with_its_status_and_the_others_are_read(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = f"{server}/gone.tar"
    keys, lines, log = read([missing, f"{server}/good.tar"], capsys)
    assert keys == ALL
    assert lines == [f"shard {missing} failed: HTTP 404 Not Found"] and log.failed == [missing]


def test_a_server_that_is_not_there_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    gone = "http://127.0.0.1:1/x.tar"  # port 1 on this machine: nothing listens there
    keys, lines, _ = read([gone], capsys)
    assert keys == [] and lines == [f"shard {gone} failed: cannot connect: Connection refused"]


def test_a_cut_http_shard_is_named_with_its_last_good_sample(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"{server}/cut.tar"
    keys, lines, log = read([url, f"{server}/good.tar"], capsys)
    assert keys == ALL[:3] + ALL and log.failed == [url]
    assert lines == [
        f"shard {url}: damaged after sample s002 (offset {CUT - 700}): file ends inside the padding of "
        "member s003.question.txt",
        f"skipped {url}:sample s003: cut short by the damage at offset {CUT - 700} (fields read: none)",
    ]


def test_a_body_shorter_than_its_content_length_is_named_as_cut(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The server closes the connection early: the reason is the HTTP body, not a tar header."""
    url = f"{server}/short.tar"
    keys, lines, _ = read([url], capsys)
    assert keys == ALL[:3]
    assert lines[0] == (
        f"shard {url}: damaged after sample s002 (offset {CUT - 700}): "
        f"HTTP body cut short ({CUT} of {len(TAR)} bytes arrived)"
    )


def test_a_cut_gzip_stream_is_named_and_nothing_after_the_cut_is_used(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"{server}/short.tar.gz"
    keys, lines, log = read([url], capsys)
    assert len(keys) < SAMPLES and keys == ALL[: len(keys)] and log.failed == [url]
    assert lines[0].endswith(f"HTTP body cut short ({GZ_CUT} of {len(GZ)} bytes arrived)"), lines


def test_a_pipe_shard_reads_every_sample(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.tar").write_bytes(TAR)
    (tmp_path / "x.tar.gz").write_bytes(GZ)
    keys, lines, _ = read([f"pipe:cat {tmp_path / 'x.tar'}", f"pipe:cat {tmp_path / 'x.tar.gz'}"], capsys)
    assert keys == ALL + ALL and lines == []


def test_a_failing_command_is_named_with_its_exit_status_and_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "x.tar").write_bytes(TAR)
    missing = tmp_path / "nope.tar"
    keys, lines, log = read([f"pipe:cat {missing}", "pipe:false", f"pipe:cat {tmp_path / 'x.tar'}"], capsys)
    assert keys == ALL and log.shards_failed == 2
    assert lines == [
        f"shard pipe:cat {missing} failed: command exited with status 1: cat: {missing}: No such file or "
        "directory",
        "shard pipe:false failed: command exited with status 1",
    ]


def test_a_command_that_fails_after_its_archive_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every sample arrived and is used; the shard still counts as failed, as a file cut after its
    end-of-archive marker does."""
    (tmp_path / "x.tar").write_bytes(TAR)
    shard = f"pipe:cat {tmp_path / 'x.tar'}; echo lost connection >&2; exit 3"
    keys, lines, log = read([shard], capsys)
    with tarfile.open(fileobj=io.BytesIO(TAR)) as tar:
        tar.getmembers()
        end = tar.offset + 1024  # after the last member and the two blocks of the end-of-archive marker
    assert keys == ALL and log.failed == [shard]
    assert lines == [
        f"shard {shard}: damaged after its last sample (offset {end}): command exited with status 3: "
        "lost connection"
    ]


def test_a_command_cut_partway_is_named_with_its_last_good_sample(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "x.tar").write_bytes(TAR)
    shard = f"pipe:head -c {CUT} {tmp_path / 'x.tar'}; exit 2"
    keys, lines, _ = read([shard], capsys)
    assert keys == ALL[:3]
    assert (
        lines[0]
        == f"shard {shard}: damaged after sample s002 (offset {CUT - 700}): command exited with status 2"
    )


def test_a_command_left_partway_is_stopped(tmp_path: Path) -> None:
    """A reader that stops early (a probe, islice) ends the command and what it started."""
    (tmp_path / "x.tar").write_bytes(TAR)
    pid_file = tmp_path / "pid"
    stream = read_samples([f"pipe:echo $$ > {pid_file}; cat {tmp_path / 'x.tar'}; sleep 600"], SkipLog())
    assert len(list(itertools.islice(stream, 2))) == 2
    stream.close()  # type: ignore[attr-defined]
    group = int(pid_file.read_text())
    for _ in range(100):  # the group's last member (sleep) may take a moment to be reaped
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        threading.Event().wait(0.1)
    pytest.fail(f"process group {group} still runs")


def test_brace_lists_expand_in_order(tmp_path: Path) -> None:
    for name in ["train-000.tar", "train-001.tar", "train-002.tar", "a.tar", "b.tar"]:
        write_tar(tmp_path / name, good_samples("k", 1))
    got = expand_shards([f"{tmp_path}/train-{{000..002}}.tar", f"{tmp_path}/{{b,a}}.tar"])
    assert got == [
        str(tmp_path / n) for n in ["train-000.tar", "train-001.tar", "train-002.tar", "b.tar", "a.tar"]
    ]
    streams = expand_shards(["http://127.0.0.1/t-{0..1}.tar?v=1", "pipe:cat s-{a,b}.tar"])
    assert streams == [
        "http://127.0.0.1/t-0.tar?v=1",
        "http://127.0.0.1/t-1.tar?v=1",
        "pipe:cat s-a.tar",
        "pipe:cat s-b.tar",
    ]
    with pytest.raises(ConfigError, match=r"^shard pattern train-\{0\.\.2\.tar: unbalanced braces$"):
        expand_shards(["train-{0..2.tar"])


def test_an_unknown_scheme_is_refused_with_what_to_do() -> None:
    with pytest.raises(ConfigError) as caught:
        expand_shards(["s3://bucket/x.tar"])
    assert str(caught.value) == (
        "shard s3://bucket/x.tar: mbp reads local paths, http(s):// URLs and pipe:COMMAND; fetch it with a "
        "command, as in pipe:aws s3 cp s3://bucket/x.tar -"
    )


def test_a_config_runs_no_command_unless_the_user_allows_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "x.tar").write_bytes(TAR)
    marker = tmp_path / "ran"
    command = f"pipe:touch {marker}; cat {tmp_path / 'x.tar'}"
    monkeypatch.delenv(ALLOW_PIPE_VARIABLE, raising=False)
    registry = tmp_path / "registry.yaml"
    registry.write_text(REGISTRY.replace("data: {", f"data: {{train_shards: [{json.dumps(command)}], "))
    result = invoke_mbp(
        "run", "qa", "--registry", str(registry), "--out", str(tmp_path / "out"), "--steps", "2"
    )
    assert result.returncode == 2 and not marker.exists()
    assert result.stderr.strip() == (
        f"mbp: error: data.train_shards names {command}, a command: a config runs no command; pass the "
        f"shard on the command line, or set {ALLOW_PIPE_VARIABLE}=1 to allow it"
    )
    with pytest.raises(ConfigError, match=r"^data\.eval_shards names pipe:"):
        expand_shards([command], origin="data.eval_shards")
    assert expand_shards([command]) == [command]  # from the command line: the user's own
    monkeypatch.setenv(ALLOW_PIPE_VARIABLE, "1")
    assert expand_shards([command], origin="data.train_shards") == [command]
    assert not marker.exists()  # expanding runs nothing


def test_inspect_and_run_over_http(server: str, tmp_path: Path) -> None:
    good, missing = f"{server}/good.tar", f"{server}/gone.tar"
    inspected = invoke_mbp("shards", "inspect", good, f"{server}/good.tar.gz")
    assert inspected.returncode == 0, inspected.stderr
    assert inspected.stdout.splitlines()[:2] == [
        f"{good}: {SAMPLES} samples",
        f"{server}/good.tar.gz: {SAMPLES} samples",
    ]
    (tmp_path / "registry.yaml").write_text(REGISTRY)
    args = [
        "run",
        "qa",
        good,
        missing,
        "--registry",
        str(tmp_path / "registry.yaml"),
        "--out",
        str(tmp_path / "o"),
    ]
    result = invoke_mbp(*args, "--steps", "2", "--json", "--set", "train.precision=fp32")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["steps"] == 2 and summary["failed_shards"] == [missing]
    assert f"mbp: warning: shard {missing} failed: HTTP 404 Not Found" in result.stderr.splitlines()


def test_inspect_names_a_pipe_shard_by_its_command(tmp_path: Path) -> None:
    (tmp_path / "x.tar.gz").write_bytes(GZ)
    shard = f"pipe:cat {tmp_path / 'x.tar.gz'}"
    result = invoke_mbp("shards", "inspect", shard, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["shards"] == [{"path": shard, "name": shard, "samples": SAMPLES}]
