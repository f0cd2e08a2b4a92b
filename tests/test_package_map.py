"""The package map (core/mbp/README.md) stays true: every module it names exists, and every module of
the package is on it."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from tests.conftest import ROOT

MAP = ROOT / "core" / "mbp" / "README.md"
DOTTED = re.compile(r"^mbp(?:\.[A-Za-z_]\w*)*$")
PATH = re.compile(r"^(?:core|plugins)/[\w/]+\.py$")


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """The file of module ``mbp.a.b`` (``a/b.py`` or ``a/b/__init__.py`` under core/), if there is one."""
    base = root / "core" / Path(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def names_in(text: str) -> list[str]:
    """The backticked module names (``mbp.x.y``) and file paths (``core/mbp/x.py``) of a text."""
    quoted = re.findall(r"`([^`\n]+)`", text)
    return [q for q in quoted if DOTTED.match(q) or PATH.match(q)]


def missing(names: list[str], root: Path = ROOT) -> list[str]:
    """The names that are no module or file; ``mbp.x.attr`` counts where module ``mbp.x`` has ``attr``
    (``mbp.run``, the Python API)."""
    absent = []
    for name in names:
        if PATH.match(name):
            found = (root / name).is_file()
        elif module_file(name, root) is not None:
            found = True
        else:
            parent, _, attr = name.rpartition(".")
            found = module_file(parent, root) is not None and hasattr(importlib.import_module(parent), attr)
        if not found:
            absent.append(name)
    return absent


def package_modules(root: Path = ROOT) -> set[str]:
    package = root / "core" / "mbp"
    modules = set()
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if parts[-1] != "__main__":
            modules.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return modules


def test_every_module_the_map_names_exists() -> None:
    names = names_in(MAP.read_text(encoding="utf-8"))
    assert len(names) > 100  # the map was read
    assert missing(names) == []


def test_every_module_of_the_package_is_on_the_map() -> None:
    named = set(names_in(MAP.read_text(encoding="utf-8")))
    modules = package_modules()
    assert len(modules) > 50
    assert sorted(modules - named) == []


def test_a_moved_module_is_caught() -> None:
    text = "- `mbp.model.io` — saving models; `core/mbp/model/io.py`; `mbp.config.Pipeline`; `mbp.run`."
    assert names_in(text) == ["mbp.model.io", "core/mbp/model/io.py", "mbp.config.Pipeline", "mbp.run"]
    assert missing(names_in(text)) == ["mbp.model.io", "core/mbp/model/io.py"]
