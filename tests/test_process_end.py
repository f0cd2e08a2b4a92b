"""How an ``mbp`` process ends: a process that joined a process group skips Python's finalization, where
gloo's worker threads, still holding a finished collective's tensors, abort the process (SIGABRT), and
keeps the command's exit code and output; any other process ends as Python ends it."""

from __future__ import annotations

import mbp.cli
import pytest
from mbp.train import distributed


class EndedError(Exception):
    """What the stand-in for ``os._exit`` raises, so that the test process lives on."""


def end_with(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], joined: bool
) -> tuple[list[int], BaseException]:
    codes: list[int] = []

    def exit_now(code: int) -> None:
        codes.append(code)
        raise EndedError

    monkeypatch.setattr(mbp.cli.os, "_exit", exit_now)
    monkeypatch.setattr(distributed, "_joined", joined)
    monkeypatch.setattr("sys.argv", ["mbp", *argv])
    with pytest.raises((EndedError, SystemExit)) as raised:
        mbp.cli.main()
    return codes, raised.value


@pytest.mark.parametrize(("argv", "code"), [(["--version"], 0), (["no-such-command"], 2)])
def test_a_process_in_a_group_ends_at_once_with_the_commands_code_and_output(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str], code: int
) -> None:
    codes, raised = end_with(monkeypatch, argv, joined=True)
    assert isinstance(raised, EndedError) and codes == [code]
    out, err = capsys.readouterr()
    assert ("mbp, version" in out) if code == 0 else ("No such command 'no-such-command'" in err)


@pytest.mark.parametrize(("argv", "code"), [(["--version"], 0), (["no-such-command"], 2)])
def test_a_process_outside_a_group_ends_as_python_ends_it(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], code: int
) -> None:
    codes, raised = end_with(monkeypatch, argv, joined=False)
    assert isinstance(raised, SystemExit) and raised.code == code and codes == []
