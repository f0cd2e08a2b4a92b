"""``--set key=value``: override any pipeline field by dotted path, validated like the file."""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import ValidationError

from mbp.config import Pipeline, format_validation
from mbp.errors import ConfigError
from mbp.resolve import Resolved


def apply_overrides(resolved: Resolved, settings: list[str]) -> Pipeline:
    """The registry's pipeline with ``settings`` applied, before anything is filled in from the head:
    set on the resolved pipeline, ``model.dropout=0`` would come after the head's 0.1 is written into
    every backbone, and the run would train at 0.1 while its first line says 0."""
    document: dict[str, Any] = resolved.registry.pipeline(resolved.name).model_dump(exclude_unset=False)
    for setting in settings:
        key, sep, text = setting.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {setting!r}: expected KEY=VALUE, e.g. train.steps=100")
        _assign(document, key.split("."), _value(key, text), key)
    try:
        return Pipeline.model_validate(document)
    except ValidationError as error:
        raise ConfigError(format_validation(error, "--set", {})) from None


def _value(key: str, text: str) -> Any:
    """``text`` as a YAML value. Aliases are refused: one setting has no use for them, and nested ones
    expand a few bytes into more data than memory holds (or into data that contains itself)."""
    if not text:
        return ""
    try:
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader)):
            raise ConfigError(f"--set {key}: YAML aliases (*name) are not allowed in a value")
        return yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError):
        raise ConfigError(f"--set {key}: cannot parse value {text!r}") from None


def _assign(node: Any, path: list[str], value: Any, dotted: str) -> None:
    for index, part in enumerate(path[:-1]):
        node = _child(node, part, dotted, path[: index + 1])
    last = path[-1]
    if isinstance(node, list):
        node[_index(node, last, dotted)] = value
    elif isinstance(node, dict):
        node[last] = value  # unknown keys are caught by validation with extra="forbid"
    else:
        raise ConfigError(f"--set {dotted}: '{'.'.join(path[:-1])}' is not a mapping or list")


def _child(node: Any, part: str, dotted: str, walked: list[str]) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, dotted)]
    if isinstance(node, dict):
        if part not in node or not isinstance(node[part], dict | list):
            raise ConfigError(f"--set {dotted}: '{'.'.join(walked)}' is not a section of the pipeline")
        return node[part]
    raise ConfigError(f"--set {dotted}: '{'.'.join(walked)}' is not a mapping or list")


def _index(node: list, part: str, dotted: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"--set {dotted}: '{part}' is not an index below {len(node)}")
    return int(part)
