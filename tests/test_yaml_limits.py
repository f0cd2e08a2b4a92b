"""YAML aliases that expand beyond any registry's size, or into data that holds itself, are refused in one
line (exit 2) before anything walks the expanded data: a 500-byte registry of nested anchors once held
`mbp validate` while its memory grew by 130 MB/s."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from mbp.config import load_registry
from mbp.config.yamlpos import NODES, load_with_lines
from mbp.errors import ConfigError
from mbp.overrides import apply_overrides
from mbp.resolve import resolve

from tests.conftest import invoke_mbp
from tests.test_config import GOOD


def laughs(levels: int, width: int = 9) -> str:
    """Anchors ``a0`` .. ``a{levels-1}``, each a list of ``width`` aliases to the one before:
    ``width ** levels`` nodes from a few hundred bytes."""
    lines = [f"a0: &a0 [{', '.join(['x'] * width)}]"]
    for level in range(1, levels):
        lines.append(f"a{level}: &a{level} [{', '.join([f'*a{level - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def test_nested_aliases_beyond_the_limit_are_refused(tmp_path: Path) -> None:
    """9**6 = 531441 nodes: before the fix this one loaded (its unknown keys then listed); a few levels
    more and nothing came back."""
    path = tmp_path / "bomb.yaml"
    path.write_text(laughs(6) + GOOD)
    with pytest.raises(ConfigError) as refused:
        load_registry(path)
    assert str(refused.value) == f"{path}:1: a5.0.3.3.7.2.1: aliases expand the registry beyond {NODES} nodes"
    path.write_text(laughs(9) + GOOD)  # 387 million nodes, 767 bytes
    result = invoke_mbp("validate", str(path))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.endswith(f"aliases expand the registry beyond {NODES} nodes\n")


def test_aliases_within_the_limit_still_load() -> None:
    data, _ = load_with_lines(laughs(3) + "b: *a2\n", "r.yaml")  # 3 * 729 nodes
    assert data["b"] == [[["x"] * 9] * 9] * 9


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x: &x [1, *x]\n", "r.yaml:1: x.1: an alias refers to a node that holds it"),
        ("x: &x {a: {b: *x}}\n", "r.yaml:1: x.a.b: an alias refers to a node that holds it"),
        ("x: " + "[" * 3000 + "]" * 3000 + "\n", "r.yaml: invalid YAML: nested too deeply"),
    ],
)
def test_data_that_holds_itself_or_nests_without_end_is_refused(text: str, message: str) -> None:
    """Before the fix: RecursionError, exit 1 ("maximum recursion depth exceeded")."""
    with pytest.raises(ConfigError) as refused:
        load_with_lines(text, "r.yaml")
    assert str(refused.value) == message


@pytest.mark.parametrize(
    "value",
    [
        "[&s {backbone: {type: transformer, heads: 2}, dim: 32, layers: 1}, *s]",  # harmless, refused too
        "&a [*a]",  # data that holds itself: before the fix validation never returned
        "[&a [x, x, x, x], &b [*a, *a, *a, *a], &c [*b, *b, *b, *b], [*c, *c, *c, *c]]",
    ],
)
def test_set_refuses_any_alias(tmp_path: Path, components, value: str) -> None:
    path = tmp_path / "reg.yaml"
    path.write_text(GOOD)
    base = resolve(str(path), "tiny", components=components)
    with pytest.raises(ConfigError) as refused:
        apply_overrides(base, [f"model.stages={value}"])
    assert str(refused.value) == "--set model.stages: YAML aliases (*name) are not allowed in a value"
    assert "&" not in "".join(apply_overrides(base, ["data.batch_size=3"]).model_dump_json())


def test_a_key_with_a_line_break_stays_on_its_problems_line(tmp_path: Path) -> None:
    """Before the fix "a\\x85b: unknown key" printed as two error lines, the second naming no file."""
    path = tmp_path / "reg.yaml"
    path.write_text(yaml.safe_dump({"pipelines": {"p": {}}, "a\x85b": 1, "c\nd": 2, "e\u2028": 3}))
    result = invoke_mbp("validate", str(path))
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and all(line.startswith(f"mbp: error: {path}:") for line in lines), lines
    assert [line for line in lines if "unknown key" in line] == [
        f"mbp: error: {path}:1: 'a\\x85b': unknown key",
        f"mbp: error: {path}:3: 'c\\nd': unknown key",
        f"mbp: error: {path}:7: 'e\\u2028': unknown key",
    ]
    path.write_text('pipelines: {}\n"x\\ny": 1\n"x\\ny": 2\n')
    duplicate = invoke_mbp("validate", str(path)).stderr
    assert duplicate == f"mbp: error: {path}:3: 'x\\ny': duplicate key (first at line 2)\n"
