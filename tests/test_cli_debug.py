"""``--debug`` works where the error line's hint suggests it: before the command and after it."""

from __future__ import annotations

from pathlib import Path

import pytest
from mbp.cli import cli

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
