"""No two modules of mbp import each other, directly or through others: every import counts, also one
inside a function or under ``TYPE_CHECKING`` (a lazy import that only dodges a cycle hides it)."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "core" / "mbp"


def module_names(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package by its ``__init__``)."""
    names = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imported_modules(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules a file imports anywhere in it (``from a.b import c`` is ``a.b.c`` where that is
    a module, else ``a.b``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            wanted = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            wanted = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in wanted:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the modules it imports; a module's own packages are left out (importing ``mbp.x.y``
    runs ``mbp/x/__init__.py`` first, whatever imports what)."""
    modules = module_names(package)
    return {
        name: {
            other
            for other in imported_modules(path, modules)
            if other != name and not name.startswith(f"{other}.")
        }
        for name, path in modules.items()
    }


def cycle_of(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as error:
        return list(error.args[1])
    return None


def test_no_module_of_mbp_is_part_of_an_import_cycle() -> None:
    graph = import_graph(PACKAGE)
    assert len(graph) > 50  # the walk found the package
    assert cycle_of(graph) is None, " -> ".join(cycle_of(graph) or [])


def test_a_cycle_through_a_lazy_import_is_found(tmp_path: Path) -> None:
    package = tmp_path / "mbp"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "data" / "__init__.py").write_text("")
    (package / "heads.py").write_text("from mbp.data.encode import Span\n")
    (package / "data" / "encode.py").write_text("def f():\n    from mbp.heads import TaskHead\n")
    (package / "alone.py").write_text("import mbp.heads\n")
    graph = import_graph(package)
    assert graph["mbp.alone"] == {"mbp.heads"}
    assert sorted(cycle_of(graph) or []) == ["mbp.data.encode", "mbp.heads", "mbp.heads"]
