"""YAML loading that remembers the line of every node, so config errors can say where they are."""

from __future__ import annotations

from typing import Any

import yaml

from mbp.errors import ConfigError

Path = tuple[str | int, ...]


class _LineLoader(yaml.SafeLoader):
    pass


def load_with_lines(text: str, source: str) -> tuple[Any, dict[Path, int]]:
    """Parse YAML text; return the data and a map from key path to 1-based line number."""
    try:
        node = yaml.compose(text, Loader=_LineLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"{where}: invalid YAML: {' '.join(str(problem).split())}") from None
    if node is None:
        return None, {}
    lines: dict[Path, int] = {}
    problems: list[str] = []
    _walk(node, (), lines, problems, source)
    if problems:  # every duplicate and foreign tag at once, one a line
        raise ConfigError("\n".join(problems))
    try:
        data = yaml.load(text, Loader=_LineLoader)
    except yaml.YAMLError as error:  # e.g. a tag the safe loader cannot construct
        mark = getattr(error, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise ConfigError(f"{where}: invalid YAML: {' '.join(str(error).split())}") from None
    return data, lines


def _walk(node: yaml.Node, path: Path, lines: dict[Path, int], problems: list[str], source: str) -> None:
    lines[path] = node.start_mark.line + 1
    if node.tag.startswith("tag:yaml.org,2002:python/") or node.tag.startswith("!"):
        tag = node.tag.replace("tag:yaml.org,2002:", "!!")
        problems.append(
            f"{source}:{lines[path]}: {_dotted(path)}: tag {tag} is not allowed (a registry is plain data)"
        )
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in seen:  # PyYAML keeps the last silently: a lost setting nobody would notice
                problems.append(
                    f"{source}:{line}: {_dotted((*path, key))}: duplicate key (first at line {seen[key]})"
                )
                continue
            seen[key] = line
            lines[(*path, key)] = line
            _walk(value_node, (*path, key), lines, problems, source)
            lines[(*path, key)] = line
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, (*path, index), lines, problems, source)


def _dotted(path: Path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def line_of(lines: dict[Path, int], path: Path) -> int | None:
    """The line of the deepest known prefix of ``path``."""
    for end in range(len(path), -1, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None
