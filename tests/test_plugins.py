"""Issue 2: entry-point plugins, isolation, clashes, listings."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from mbp.components import ComponentTable
from mbp.config import check_pipeline, load_registry
from mbp.errors import ConfigError, PluginError
from mbp.hookspecs import hookimpl
from mbp.plugins import new_platform
from pydantic import BaseModel

from tests.conftest import invoke_mbp, run_mbp

BUILTINS = {"text", "vision", "audio", "transformer", "mamba", "tasks"}


class GoodPlugin:
    @hookimpl
    def mbp_register_codecs(self, register):
        register("reverse", lambda: None)


class HookFailsPlugin:
    @hookimpl
    def mbp_register_codecs(self, register):
        register("half", lambda: None)
        raise RuntimeError("boom inside the hook")


class ClashPlugin:
    @hookimpl
    def mbp_register_codecs(self, register):
        register("text", lambda: None)


class TypoPlugin:
    @hookimpl
    def mbp_register_codec(self, register):  # misspelled: no such hook
        register("x", lambda: None)


class Params(BaseModel):
    size: int = 1


class ParamsPlugin:
    @hookimpl
    def mbp_register_heads(self, register):
        register("sized", lambda size: size, Params)


def test_builtins_load_through_entry_points() -> None:
    platform = new_platform()
    assert set(platform.plugins) >= BUILTINS
    assert set(platform.components.names("codecs")) >= {"text", "pixels", "image", "wav"}
    assert set(platform.components.names("backbones")) >= {"transformer", "mamba"}
    assert set(platform.components.names("heads")) >= {"lm", "vqa", "classify"}
    rows = {row["name"]: row for row in platform.describe()}
    assert rows["vision"]["codecs"] == ["image", "pixels"]
    assert rows["vision"]["dist"] == "mbp"


def test_directly_registered_plugin_joins_the_table() -> None:
    platform = new_platform({"good": GoodPlugin()}, entry_points=False)
    assert platform.components.get("codecs", "reverse").plugin == "good"


def test_failing_hook_is_reported_and_withdrawn(capsys: pytest.CaptureFixture[str]) -> None:
    platform = new_platform({"good": GoodPlugin(), "bad": HookFailsPlugin()}, entry_points=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["mbp: plugin 'bad' (local 0) failed to load: RuntimeError: boom inside the hook"]
    assert "half" not in platform.components.names("codecs")
    assert "reverse" in platform.components.names("codecs")
    assert "bad" not in platform.plugins


def test_strict_mode_makes_failures_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MBP_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="plugin 'bad'"):
        new_platform({"bad": HookFailsPlugin()}, entry_points=False)


def test_disabled_plugins_are_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MBP_DISABLE_PLUGINS", "audio, mamba")
    platform = new_platform()
    assert "wav" not in platform.components.names("codecs")
    assert "mamba" not in platform.components.names("backbones")
    assert "text" in platform.components.names("codecs")


def test_name_clash_names_both_plugins(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    """Issue 11: the clash withholds the name from both and names both distributions; the rest works."""
    platform = new_platform({"clash": ClashPlugin()})
    message = (
        "codec 'text' is registered by two plugins: 'text' (mbp 0.1.0) and 'clash' (local 0); "
        "set MBP_DISABLE_PLUGINS=text or MBP_DISABLE_PLUGINS=clash to keep one"
    )
    assert capsys.readouterr().err.strip() == f"mbp: {message}"
    assert "text" not in platform.components.names("codecs") and "wav" in platform.components.names("codecs")
    with pytest.raises(PluginError) as error:
        platform.components.get("codecs", "text")
    assert str(error.value) == message
    monkeypatch.setenv("MBP_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="registered by two plugins"):
        new_platform({"clash": ClashPlugin()})


class WordyPlugin:
    @hookimpl
    def mbp_register_codecs(self, register):
        raise PluginError("my codec is registered by two plugins in my head")


def test_only_a_real_name_clash_is_fatal_whatever_a_message_says(capsys: pytest.CaptureFixture[str]) -> None:
    platform = new_platform({"good": GoodPlugin(), "wordy": WordyPlugin()}, entry_points=False)
    assert "wordy" in platform.failures and "reverse" in platform.components.names("codecs")
    assert "plugin 'wordy' (local 0) failed to load" in capsys.readouterr().err


def test_misspelled_hook_is_caught(capsys: pytest.CaptureFixture[str]) -> None:
    platform = new_platform({"typo": TypoPlugin()}, entry_points=False)
    assert "typo" not in platform.plugins
    assert "mbp_register_codec" in capsys.readouterr().err


def test_params_models_are_made_strict() -> None:
    platform = new_platform({"p": ParamsPlugin()}, entry_points=False)
    component = platform.components.get("heads", "sized")
    assert component.params.model_validate({"size": 3}).size == 3  # type: ignore[attr-defined]
    with pytest.raises(Exception, match="Extra inputs"):
        component.params.model_validate({"sise": 3})


def _broken_distribution(tmp_path: Path) -> Path:
    """A distribution whose entry point names a module that does not exist."""
    info = tmp_path / "brokenplug-1.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenplug\nVersion: 1.2\n")
    (info / "entry_points.txt").write_text("[mbp]\nbroken = brokenplug_does_not_exist\n")
    return tmp_path


def test_cli_survives_a_broken_plugin(tmp_path: Path) -> None:
    env = {"PYTHONPATH": str(_broken_distribution(tmp_path))}
    result = run_mbp("plugins", "--json", env=env)
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(rows) >= BUILTINS and all("error" not in rows[name] for name in BUILTINS)
    assert rows["broken"] == {  # issue 11: a failed plugin is listed with its error
        "name": "broken",
        "dist": "brokenplug",
        "version": "1.2",
        "codecs": [],
        "backbones": [],
        "heads": [],
        "sinks": [],
        "error": "ModuleNotFoundError: No module named 'brokenplug_does_not_exist'",
    }
    assert result.stderr.strip() == (
        "mbp: plugin 'broken' (brokenplug 1.2) failed to load: "
        "ModuleNotFoundError: No module named 'brokenplug_does_not_exist'"
    )
    assert run_mbp("--help", env=env).returncode == 0
    assert run_mbp("validate", env=env).returncode == 0
    strict = run_mbp("plugins", env={**env, "MBP_STRICT_PLUGINS": "1"})
    assert strict.returncode == 2
    assert "Traceback" not in strict.stderr and "plugin 'broken'" in strict.stderr


def test_plugins_json_is_pure_json() -> None:
    result = run_mbp("plugins", "--json")
    assert result.returncode == 0
    rows = json.loads(result.stdout)
    keys = {"name", "dist", "version", "codecs", "backbones", "heads", "sinks"}
    assert all(set(row) == keys for row in rows)
    text = invoke_mbp("plugins")  # the listing's text; the process's stdout is checked just above
    assert "codecs: image, pixels" in text.stdout


def test_schema_lists_every_component() -> None:
    result = run_mbp("schema", "--json")
    document = json.loads(result.stdout)
    assert "heads" in document["backbones"]["transformer"]["params"]["properties"]
    assert set(document["codecs"]) >= {"text", "pixels", "image", "wav"}


def test_schema_lists_each_codecs_traits_and_each_heads_defaults() -> None:
    document = json.loads(run_mbp("schema", "--json").stdout)
    assert document["codecs"]["pixels"]["traits"] == {
        "context_weight": None,
        "augment": "run",
        "rows": True,
        "reading_view": False,
        "segment_extension": False,
        "boundaries": None,  # one row of its rows, planned from the data
    }
    assert document["codecs"]["text"]["traits"]["boundaries"] == {"rule": "words", "longest": None}
    assert document["codecs"]["wav"]["reading_traits"]["context_weight"] == 0.1  # the log-mel view's
    assert document["heads"]["lm"]["defaults"] == {
        "answers": None,
        "batch_size": 1,
        "dropout": 0.0,
        "split_samples": True,
        "thins_context": False,
        "selection_metric": "bpb",
        "selection_mode": "min",
    }
    assert "traits" not in document["backbones"]["transformer"]
    text = run_mbp("schema").stdout.splitlines()
    at = text.index("  lm (plugin tasks): params: none")
    assert text[at + 1] == (
        "    defaults: answers=None, batch_size=1, dropout=0.0, split_samples=True, thins_context=False, "
        "selection_metric=bpb, selection_mode=min"
    )


def test_example_plugin_source_registers_a_codec() -> None:
    source = Path(__file__).resolve().parents[1] / "examples" / "mbp-rot13"
    text = (source / "pyproject.toml").read_text()
    assert "[project.entry-points.mbp]" in text
    assert textwrap.dedent("rot13") in (source / "mbp_rot13" / "__init__.py").read_text()


def test_validation_explains_a_missing_name_from_the_table_it_was_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # no process-wide platform behind the scenes: the table passed in knows why 'wav' is absent
    monkeypatch.setenv("MBP_DISABLE_PLUGINS", "audio")
    table = new_platform().components
    registry = load_registry()
    with pytest.raises(ConfigError, match=r"unknown codec 'wav' .*disabled by MBP_DISABLE_PLUGINS: audio"):
        check_pipeline(registry, "vqa-mixed", table)
    with pytest.raises(ConfigError, match="unknown codec") as plain:
        check_pipeline(registry, "vqa-mixed", ComponentTable())
    assert "disabled" not in str(plain.value)


def _distribution(tmp_path: Path, dist: str, entry: str, source: str) -> Path:
    """A distribution ``dist`` 1.0 whose plugin ``entry`` is the module ``source``."""
    info = tmp_path / f"{dist}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[mbp]\n{entry} = {dist}_mod\n")
    (tmp_path / f"{dist}_mod.py").write_text(textwrap.dedent(source))
    return tmp_path


def test_plugin_calling_sys_exit_at_import_is_reported(tmp_path: Path) -> None:
    """Issue 11: before the fix every command, ``mbp plugins`` included, ended with no output."""
    env = {"PYTHONPATH": str(_distribution(tmp_path, "exiter", "exiter", "import sys\nsys.exit(3)\n"))}
    result = run_mbp("plugins", env=env)
    assert result.returncode == 0
    assert result.stderr.strip() == "mbp: plugin 'exiter' (exiter 1.0) failed to load: called sys.exit(3)"
    assert "exiter (exiter 1.0): failed to load: called sys.exit(3)" in result.stdout
    assert "codecs: image, pixels" in result.stdout
    assert run_mbp("validate", env=env).returncode == 0


def test_clash_between_distributions_keeps_other_commands_working(tmp_path: Path) -> None:
    source = """\
        from mbp.hookspecs import hookimpl

        @hookimpl
        def mbp_register_codecs(register):
            register("wav", lambda: None)
        """
    env = {"PYTHONPATH": str(_distribution(tmp_path, "wavtoo", "wavtoo", source))}
    clash = (
        "mbp: codec 'wav' is registered by two plugins: 'audio' (mbp 0.1.0) and 'wavtoo' (wavtoo 1.0); "
        "set MBP_DISABLE_PLUGINS=audio or MBP_DISABLE_PLUGINS=wavtoo to keep one"
    )
    listed = run_mbp("plugins", "--json", env=env)
    assert listed.returncode == 0 and listed.stderr.strip() == clash
    assert "wav" not in {c for row in json.loads(listed.stdout) for c in row["codecs"]}
    registry = tmp_path / "reg.yaml"
    registry.write_text(
        "pipelines:\n  t:\n    fields: {txt: {type: text}}\n    head: {type: lm}\n"
        "    model: {stages: [{backbone: {type: transformer, heads: 2}, dim: 32, layers: 1}]}\n"
    )
    assert run_mbp("validate", str(registry), env=env).returncode == 0  # needs no wav
    needs_wav = run_mbp("validate", env=env)  # the built-in registry has a wav field
    assert needs_wav.returncode == 2
    assert (
        "pipelines.vqa-mixed.fields.tone.type: codec 'wav' is registered by two plugins" in needs_wav.stderr
    )
    chosen = run_mbp("validate", env={**env, "MBP_DISABLE_PLUGINS": "wavtoo"})
    assert chosen.returncode == 0 and chosen.stderr.count("registered by two") == 0
