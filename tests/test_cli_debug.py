"""``--debug`` works where the error line's hint suggests it: before the command and after it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from mbp.cli import cli
from mbp.data.skips import SkipLog
from mbp.errors import warn

from tests.conftest import invoke_mbp

HINT = "(run with --debug for a traceback)"


def test_debug_is_accepted_before_and_after_the_command(tmp_path: Path) -> None:
    """Before the fix ``mbp validate --debug`` was refused: "No such option: --debug"."""
    missing = str(tmp_path / "missing.yaml")
    for args in (["--debug", "validate", missing], ["validate", missing, "--debug"]):
        result = invoke_mbp(*args)
        assert result.returncode == 2, result.stderr
        assert "Traceback (most recent call last)" in result.stderr
        assert result.stderr.endswith(f"mbp: error: {missing}: registry file not found\n")
    plain = invoke_mbp("validate", missing)  # one invocation's --debug does not outlive it
    assert plain.stderr == f"mbp: error: {missing}: registry file not found\n"


def test_the_hint_of_an_unexpected_error_names_a_flag_that_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(path: str | None) -> None:
        raise RuntimeError("unexpected")

    monkeypatch.setattr("mbp.cli.validate_cmd.load_registry", broken)
    plain = invoke_mbp("validate")
    assert plain.returncode == 1 and plain.stderr == f"mbp: error: RuntimeError: unexpected {HINT}\n"
    debug = invoke_mbp("validate", "--debug")
    assert (
        debug.returncode == 1
        and "Traceback" in debug.stderr
        and 'raise RuntimeError("unexpected")' in debug.stderr
    )


@pytest.mark.parametrize("command", [*sorted(cli.commands), "shards inspect", "shards pack", "import mblm"])
def test_every_command_takes_debug(command: str) -> None:
    result = invoke_mbp(*command.split(), "--debug", "--help")
    assert result.returncode == 0, result.stderr
    assert "--debug" in result.stdout


def test_a_warning_reaches_stderr_in_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """Processes of one run share stderr: a line and its newline go in one write, so another process's
    line cannot land between them (two warnings on one line)."""
    writes: list[str] = []

    class Recorder:
        def write(self, text: str) -> int:
            writes.append(text)
            return len(text)

        def flush(self) -> None:
            writes.append("<flush>")

    monkeypatch.setattr(sys, "stderr", Recorder())
    warn("shard x.tar: damaged")
    SkipLog().sample("x.tar:sample a: missing field 'answer'", "missing field")
    assert writes == [
        "mbp: warning: shard x.tar: damaged\n",
        "<flush>",
        "mbp: warning: skipped x.tar:sample a: missing field 'answer'\n",
        "<flush>",
    ]
