"""YAML loading that remembers the line of every node, so config errors can say where they are."""

from __future__ import annotations

from typing import Any

import yaml

from mbp.errors import ConfigError

Path = tuple[str | int, ...]


class _LineLoader(yaml.SafeLoader):
    pass


NODES = 100_000
"""The most nodes a registry may hold once its aliases are expanded: hand-written registries hold a few
hundred, while nine nested anchors of nine aliases each (a 500-byte file) expand to 400 million."""


def load_with_lines(text: str, source: str) -> tuple[Any, dict[Path, int]]:
    """Parse YAML text; return the data and a map from key path to 1-based line number."""
    try:
        node = yaml.compose(text, Loader=_LineLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"{where}: invalid YAML: {' '.join(str(problem).split())}") from None
    except RecursionError:  # the composer recurses once per level of nesting
        raise ConfigError(f"{source}: invalid YAML: nested too deeply") from None
    if node is None:
        return None, {}
    walk = _Walk(source)
    walk.visit(node, ())
    if walk.problems:  # every duplicate and foreign tag at once, one a line
        raise ConfigError("\n".join(walk.problems))
    try:
        data = yaml.load(text, Loader=_LineLoader)
    except yaml.YAMLError as error:  # e.g. a tag the safe loader cannot construct
        mark = getattr(error, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise ConfigError(f"{where}: invalid YAML: {' '.join(str(error).split())}") from None
    return data, walk.lines


class _Walk:
    """One pass over the composed nodes, aliases expanded as the data will be: records each key's line,
    collects duplicate keys and foreign tags, and refuses an alias that contains itself or a document
    that expands beyond :data:`NODES` (everything after this pass, validation included, walks the
    expanded data, so this is where an alias bomb must stop)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: dict[Path, int] = {}
        self.problems: list[str] = []
        self.visited = 0
        self.open: set[int] = set()
        """The nodes being walked: an alias to one of them makes the data contain itself."""

    def visit(self, node: yaml.Node, path: Path) -> None:
        line = self.lines[path] = node.start_mark.line + 1
        self.visited += 1
        if self.visited > NODES:
            raise ConfigError(
                f"{self.source}:{line}: {dotted(path)}: aliases expand the registry beyond {NODES} nodes"
            )
        if id(node) in self.open:
            raise ConfigError(
                f"{self.source}:{line}: {dotted(path)}: an alias refers to a node that holds it"
            )
        if node.tag.startswith("tag:yaml.org,2002:python/") or node.tag.startswith("!"):
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            self.problems.append(
                f"{self.source}:{line}: {dotted(path)}: tag {tag} is not allowed (a registry is plain data)"
            )
        self.open.add(id(node))
        if isinstance(node, yaml.MappingNode):
            self._mapping(node, path)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self.visit(item, (*path, index))
        self.open.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, path: Path) -> None:
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in seen:  # PyYAML keeps the last silently: a lost setting nobody would notice
                first = f"first at line {seen[key]}"
                self.problems.append(f"{self.source}:{line}: {dotted((*path, key))}: duplicate key ({first})")
                continue
            seen[key] = line
            self.visit(value_node, (*path, key))
            self.lines[(*path, key)] = line


def dotted(path: Path) -> str:
    """``pipelines.p.fields`` for a key path; a key that holds a line break or other unprintable
    character is quoted with it escaped, so that a problem stays on its one line."""
    return ".".join(str(p) if str(p).isprintable() else repr(p) for p in path) or "(top level)"


def line_of(lines: dict[Path, int], path: Path) -> int | None:
    """The line of the deepest known prefix of ``path``."""
    for end in range(len(path), -1, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None
