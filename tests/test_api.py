"""Issue 12: plugins see one public API (mbp.api) and the core never imports a plugin."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import torch
from mbp import api
from mbp.components import ComponentTable
from mbp.traits import codec_traits, head_defaults

from tests.conftest import ROOT

PLUGIN_PACKAGES = {p.parent.name for p in (ROOT / "plugins").glob("*/__init__.py")} | {"mbp_rot13"}


def imports_of(path: Path) -> set[str]:
    """Every module a file imports (at any depth of the file, lazily or not)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def test_no_core_module_imports_a_plugin_package() -> None:
    modules = sorted((ROOT / "core" / "mbp").rglob("*.py"))
    assert len(modules) > 40 and {"mbp_transformer", "mbp_tasks", "mbp_text"} <= PLUGIN_PACKAGES
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            name for name in imports_of(path) if name.split(".")[0] in PLUGIN_PACKAGES
        )
        for path in modules
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_plugins_import_only_the_public_api() -> None:
    files = sorted((ROOT / "plugins").rglob("*.py")) + sorted((ROOT / "examples" / "mbp-rot13").rglob("*.py"))
    used = {
        str(path.relative_to(ROOT)): sorted(
            name for name in imports_of(path) if name.split(".")[0] == "mbp" and name != "mbp.api"
        )
        for path in files
    }
    assert len(files) > 15
    assert {path: names for path, names in used.items() if names} == {}


def test_built_in_components_satisfy_the_protocols_at_run_time(components: ComponentTable) -> None:
    # mypy checks the same statically through Register[Codec] / Register[Backbone] / Register[TaskHead]
    codecs = {name: components.build("codecs", {"type": name}) for name in components.names("codecs")}
    assert set(codecs) >= {"text", "pixels", "image", "wav"}
    assert all(isinstance(codec, api.Codec) for codec in codecs.values())
    traits = {name: codec_traits(codec) for name, codec in codecs.items()}
    assert {name for name, t in traits.items() if t.segment_extension} == {"image", "wav"}
    assert {name: t.augment for name, t in traits.items() if t.augment != "never"} == {
        "pixels": "run",
        "image": "run",
    }
    assert {name for name, t in traits.items() if t.reading_view} == {"wav"}
    assert {name for name, t in traits.items() if t.rows} == {"pixels", "wav"}
    heads = {name: components.build("heads", {"type": name}) for name in components.names("heads")}
    assert all(isinstance(head, api.TaskHead) for head in heads.values())
    defaults = {name: head_defaults(head) for name, head in heads.items()}
    assert {name: d.answers for name, d in defaults.items() if d.answers} == {
        "vqa": "answer",
        "classify": "label",
    }
    segmented = set()
    for name in components.names("backbones"):
        backbone = components.build("backbones", {"type": name}, dim=32, layers=1)
        if isinstance(backbone, api.SegmentedBackbone):
            segmented.add(name)
        cache = backbone.allocate_cache(3, 8)
        assert isinstance(backbone, api.PrefillBackbone) and isinstance(cache, api.Cache)
        assert cache.batch == 3
        cache.reset(torch.tensor([True, False, True]))
    assert segmented == {"transformer"}  # mamba and mblm's blocks use the core's fallback


def test_only_the_cli_loads_the_process_wide_platform() -> None:
    # everything below the CLI receives its component table (Resolved.components, function arguments);
    # api.load_components is the one door for importer plugins, which the CLI's `mbp import` runs
    loaders = sorted(
        str(path.relative_to(ROOT / "core" / "mbp"))
        for path in (ROOT / "core" / "mbp").rglob("*.py")
        if "mbp.plugins" in imports_of(path) and path.name != "plugins.py"
    )
    assert loaders and all(path.startswith("cli/") or path == "api.py" for path in loaders), loaders


def test_factories_receive_the_validated_params_model(components: ComponentTable) -> None:
    # defaults live in the params model only: no factory takes (and so defaults) a parameter by name
    shapes = {
        (kind, name): list(inspect.signature(components.get(kind, name).factory).parameters)
        for kind in ("codecs", "heads", "backbones")
        for name in components.names(kind)
    }
    expected = {key: ["params", "dim", "layers"] if key[0] == "backbones" else ["params"] for key in shapes}
    assert len(shapes) >= 9 and shapes == expected
    backbone = components.build("backbones", {"type": "transformer", "heads": 2}, dim=16, layers=1)
    assert backbone.params == components.get("backbones", "transformer").params(heads=2)
    assert components.build("codecs", {"type": "pixels", "size": [4, 3]}).size == (4, 3)


def test_every_built_in_hook_declares_the_typed_register_of_its_hookspec() -> None:
    # mypy checks what a plugin registers only through the annotation of ``register``: an untyped
    # ``Register`` would let a sink or importer of any shape through
    import importlib

    from mbp import hookspecs

    specs = {
        name: inspect.signature(getattr(hookspecs, name)).parameters["register"].annotation
        for name in dir(hookspecs)
        if name.startswith("mbp_register_")
    }
    assert specs["mbp_register_sinks"] == "Register[MetricsSink]"
    assert specs["mbp_register_importers"] == "RegisterImporter"
    declared = {}
    for package in sorted(PLUGIN_PACKAGES - {"mbp_rot13"}):  # the built-in ones
        module = importlib.import_module(package)
        for hook in specs.keys() & set(vars(module)):
            parameters = inspect.signature(getattr(module, hook)).parameters
            declared[(package, hook)] = parameters["register"].annotation
    assert len(declared) >= 9 and {hook for _, hook in declared} == set(specs)
    assert {key: text for key, text in declared.items() if text != specs[key[1]]} == {}


def test_the_sink_and_importer_contracts_are_public() -> None:
    from mbp_mblm.cli import import_mblm
    from mbp_tracking.tensorboard import TensorBoardSink

    assert {"MetricsSink", "RegisterImporter", "Register"} <= set(api.__all__)
    found: dict[str, object] = {}

    def register(name: str, command: object, /) -> None:
        found[name] = command

    importer_hook: api.RegisterImporter = register
    import mbp_mblm

    mbp_mblm.mbp_register_importers(importer_hook)
    assert found == {"mblm": import_mblm}
    assert {"write", "close"} <= set(vars(TensorBoardSink))  # what the training loop calls
