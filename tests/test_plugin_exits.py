"""Plugin code that calls ``sys.exit``, raises ``KeyboardInterrupt`` or never finishes loading: one line
naming the plugin, never a silent exit with the plugin's code, and the user's own Ctrl-C still reads as
"interrupted"."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mbp.config import Pipeline
from mbp.data.encode import SampleEncoder
from mbp.data.read import RawSample
from mbp.errors import ConfigError, PluginExitError
from mbp.hookspecs import hookimpl
from mbp.interrupts import UserInterrupt, from_user, telling_user_interrupts
from mbp.plugins import blame, new_platform, plugin_timeout
from mbp.protocol import Segment
from mbp.resolve import pipeline_codecs
from mbp.traits import head_defaults
from pydantic import BaseModel

from tests.conftest import run_mbp
from tests.shardkit import write_tar
from tests.test_plugins import _distribution

BUILTINS = {"text", "vision", "audio", "transformer", "mamba", "tasks", "tracking", "mblm"}

QUITTER = """\
    import sys
    from pydantic import BaseModel
    from mbp.hookspecs import hookimpl

    class Params(BaseModel):
        pass

    class Quitter:
        name = "quitter"
        extension = "bin"

        def __init__(self, params):
            pass

        def encode(self, data):
            sys.exit(5)

    def backbone(*args, **kwargs):
        raise KeyboardInterrupt

    @hookimpl
    def mbp_register_codecs(register):
        register("quitter", Quitter, Params)

    @hookimpl
    def mbp_register_backbones(register):
        register("stopper", backbone)
    """

QUIT_REGISTRY = """\
pipelines:
  q:
    fields: {blob: {type: quitter}}
    head: {type: lm}
    model: {stages: [{backbone: {type: transformer, heads: 2}, dim: 16, layers: 1}]}
    data: {seq_len: 64, batch_size: 2, shuffle_buffer: 0}
  s:
    fields: {txt: {type: text}}
    head: {type: lm}
    model: {stages: [{backbone: {type: stopper}, dim: 16, layers: 1}]}
"""


def _path(folder: Path) -> dict[str, str]:
    """The environment that adds the distributions in ``folder`` to the code under test."""
    return {"PYTHONPATH": os.pathsep.join(p for p in [str(folder), os.environ.get("PYTHONPATH")] if p)}


class Params(BaseModel):
    pass


class ExitingCodec:
    name = "exiting"
    extension = "bin"

    def __init__(self, params: BaseModel) -> None:
        self.params = params

    def encode(self, data: bytes) -> Segment:
        raise SystemExit(5) if data == b"exit" else KeyboardInterrupt


class ExitingPlugin:
    @hookimpl
    def mbp_register_codecs(self, register):
        register("exiting", ExitingCodec, Params)


def test_codec_ending_the_process_names_sample_field_and_plugin() -> None:
    """Before the fix ``mbp run`` ended with the codec's exit code (5) and no message."""
    platform = new_platform({"exits": ExitingPlugin()})
    pipeline = Pipeline.model_validate(
        {
            "fields": {"blob": {"type": "exiting"}},
            "head": {"type": "lm"},
            "model": {"stages": [{"backbone": {"type": "transformer", "heads": 2}, "dim": 16, "layers": 1}]},
        }
    )
    head = platform.components.build("heads", {"type": "lm"})
    defaults = head_defaults(head)
    encoder = SampleEncoder(
        pipeline, pipeline_codecs(pipeline, platform.components, defaults), head, defaults
    )
    with telling_user_interrupts(), pytest.raises(PluginExitError) as ended:
        encoder.encode(RawSample("/d/s.tar", "07", {"blob.bin": b"exit"}))
    assert (
        str(ended.value)
        == "s.tar:sample 07:field blob.bin: codec 'exiting' (plugin 'exits') called sys.exit(5)"
    )
    assert ended.value.exit_code == 1
    with (
        telling_user_interrupts(),
        pytest.raises(PluginExitError, match=r"08:field blob: .* KeyboardInterrupt$"),
    ):
        encoder.encode(RawSample("/d/s.tar", "08", {"blob": b"other"}))


def test_blame_names_the_plugin_whose_code_raised() -> None:
    platform = new_platform({"exits": ExitingPlugin()}, entry_points=False)
    try:
        ExitingCodec(Params()).encode(b"exit")
    except SystemExit as error:
        assert blame(error, platform) == "plugin 'exits' (local 0)"
    try:
        raise SystemExit(1)
    except SystemExit as error:  # raised here, by no plugin's code
        assert blame(error, new_platform(entry_points=False)) is None


def test_codec_and_backbone_ending_the_process_exit_1_with_one_line(tmp_path: Path) -> None:
    env = _path(_distribution(tmp_path, "quitter", "quitter", QUITTER))
    registry = tmp_path / "reg.yaml"
    registry.write_text(QUIT_REGISTRY)
    write_tar(tmp_path / "s.tar", [{"__key__": b"00", "blob": b"x" * 10}])
    out = tmp_path / "out"
    ran = run_mbp(
        "run",
        "q",
        str(tmp_path / "s.tar"),
        "--registry",
        str(registry),
        "--out",
        str(out),
        "--steps",
        "1",
        env=env,
    )
    assert ran.returncode == 1, ran.stderr
    assert ran.stderr.strip().splitlines()[-1] == (
        "mbp: error: s.tar:sample 00:field blob: codec 'quitter' (plugin 'quitter') called sys.exit(5)"
    )
    built = run_mbp("validate", str(registry), env=env)  # pipeline s builds the backbone: KeyboardInterrupt
    assert built.returncode == 1 and "Traceback" not in built.stderr
    assert built.stderr.strip() == (
        "mbp: error: plugin 'quitter' (quitter 1.0) raised KeyboardInterrupt "
        "(run with --debug for a traceback)"
    )


def test_keyboard_interrupt_at_import_is_a_broken_plugin(tmp_path: Path) -> None:
    """Before the fix every command printed "mbp: interrupted" and exited 130."""
    env = _path(_distribution(tmp_path, "kbi", "kbi", "raise KeyboardInterrupt\n"))
    result = run_mbp("plugins", "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "mbp: plugin 'kbi' (kbi 1.0) failed to load: raised KeyboardInterrupt"
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["kbi"]["error"] == "raised KeyboardInterrupt"
    assert set(rows) == BUILTINS | {"kbi"} and all("error" not in rows[name] for name in BUILTINS)


def test_sys_exit_in_the_importers_hook_is_reported_and_skipped(tmp_path: Path) -> None:
    """Before the fix ``mbp import --help`` ended with exit 4 and printed nothing."""
    source = """\
        import sys
        from mbp.hookspecs import hookimpl

        @hookimpl
        def mbp_register_importers(register):
            sys.exit(4)
        """
    env = _path(_distribution(tmp_path, "impexit", "impexit", source))
    listed = run_mbp("import", "--help", env=env)
    assert listed.returncode == 0 and "mblm  Import an mblm" in listed.stdout
    assert listed.stderr.strip() == "mbp: plugin 'impexit' failed to register importers: called sys.exit(4)"
    command = run_mbp("import", "mblm", "--help", env=env)
    assert command.returncode == 0 and "Usage: mbp import mblm" in command.stdout


SLEEPER = """\
    import pathlib, time
    pathlib.Path({ready!r}).write_text("importing")
    time.sleep(120)
    """


def _sleeper(tmp_path: Path) -> tuple[dict[str, str], Path]:
    ready = tmp_path / "ready"
    env = _path(_distribution(tmp_path, "sleepy", "sleepy", SLEEPER.format(ready=str(ready))))
    return env, ready


def test_plugin_that_hangs_at_import_ends_the_command_after_the_timeout(tmp_path: Path) -> None:
    """Before the fix ``mbp plugins`` waited for the import for ever (here: its 120 s sleep)."""
    env, _ = _sleeper(tmp_path)
    result = run_mbp("plugins", env={**env, "MBP_PLUGIN_TIMEOUT": "1"}, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "mbp: error: plugin 'sleepy' (sleepy 1.0) is still loading after 1 s (MBP_PLUGIN_TIMEOUT); "
        "set MBP_DISABLE_PLUGINS=sleepy to skip it"
    )


def test_the_users_ctrl_c_while_a_plugin_loads_is_an_interrupt(tmp_path: Path) -> None:
    env, ready = _sleeper(tmp_path)
    process = subprocess.Popen(
        [sys.executable, "-m", "mbp.cli", "plugins"],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a terminal's Ctrl-C: where the tests run with SIGINT ignored (a background job), the child
        # would inherit that and never see it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    for _ in range(600):  # the interpreter and torch start first: up to a minute on a busy machine
        if ready.exists() or process.poll() is not None:
            break
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and err.strip() == "mbp: interrupted"


@pytest.mark.parametrize("value", ["soon", "-1", "nan"])
def test_a_timeout_that_is_not_a_number_of_seconds_is_refused(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("MBP_PLUGIN_TIMEOUT", value)
    with pytest.raises(ConfigError, match=rf"^MBP_PLUGIN_TIMEOUT='{value}': expected a number of seconds"):
        new_platform(entry_points=False)


@pytest.mark.parametrize(("value", "seconds"), [("", 60.0), ("2.5", 2.5), ("0", None)])
def test_the_timeout_defaults_to_a_minute_and_0_lifts_it(
    monkeypatch: pytest.MonkeyPatch, value: str, seconds: float | None
) -> None:
    monkeypatch.setenv("MBP_PLUGIN_TIMEOUT", value)
    assert plugin_timeout() == seconds


def test_a_plugins_interrupt_is_the_plugins_where_sigint_is_ignored() -> None:
    """A background job or a CI runner starts with SIGINT ignored: no Ctrl-C can arrive there, so a
    KeyboardInterrupt is a plugin's (it ended the whole test run where it was taken for the user's)."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        assert not from_user(KeyboardInterrupt())
        assert from_user(UserInterrupt())
        assert not from_user(SystemExit(1))
    finally:
        signal.signal(signal.SIGINT, previous)
