"""Reading a registry file: the YAML with the line of every key, checked against the pipeline schema
(pass one of validation), each problem named by ``file:line: dotted.path``."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mbp.config.schema import Pipeline, RegistryFile
from mbp.config.yamlpos import dotted, line_of, load_with_lines
from mbp.errors import ConfigError


class Registry:
    """A validated registry file."""

    def __init__(self, source: str, raw: dict[str, Any], parsed: RegistryFile, lines: dict[Any, int]):
        self.source = source
        self.raw = raw
        self.parsed = parsed
        self.lines = lines

    @property
    def default_pipeline(self) -> str:
        return self.parsed.default or next(iter(self.parsed.pipelines))

    def pipeline(self, name: str | None) -> Pipeline:
        name = name or self.default_pipeline
        if name not in self.parsed.pipelines:
            valid = ", ".join(self.parsed.pipelines)
            raise ConfigError(f"{self.source}: unknown pipeline '{name}' (valid: {valid})")
        return self.parsed.pipelines[name]

    def where(self, path: tuple[str | int, ...]) -> str:
        line = line_of(self.lines, path)
        return f"{self.source}:{line}" if line else self.source


def default_registry_path() -> Path:
    return Path(str(resources.files("mbp") / "registry.yaml"))


def load_registry(path: str | Path | None = None) -> Registry:
    """Read and validate pass one of a registry file (default: the one shipped with mbp)."""
    file = Path(path) if path is not None else default_registry_path()
    source = str(path) if path is not None else "registry.yaml (built-in)"
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: registry file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{source}: cannot read registry file: {error}") from None
    raw, lines = load_with_lines(text, source)
    if raw is None:
        raise ConfigError(f"{source}: registry file is empty (expected a top-level 'pipelines:' mapping)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}:1: expected a mapping with a top-level 'pipelines:' key")
    return Registry(source, raw, parse_registry(raw, source, lines), lines)


def parse_registry(raw: dict[str, Any], source: str, lines: dict[Any, int]) -> RegistryFile:
    try:
        parsed = RegistryFile.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(format_validation(error, source, lines)) from None
    if parsed.default is not None and parsed.default not in parsed.pipelines:
        raise ConfigError(
            f"{source}:{line_of(lines, ('default',))}: default pipeline '{parsed.default}' is not defined "
            f"(valid: {', '.join(parsed.pipelines)})"
        )
    return parsed


def format_validation(error: ValidationError, source: str, lines: dict[Any, int], prefix: tuple = ()) -> str:
    """Every problem pydantic found, one a line: ``file:line: dotted.path: message``."""
    problems = []
    for found in error.errors():
        path = (*prefix, *found["loc"])
        line = line_of(lines, path)
        where = f"{source}:{line}" if line else source
        message = "unknown key" if found["type"] == "extra_forbidden" else found["msg"]
        problems.append(f"{where}: {dotted(path)}: {message}")
    return "\n".join(problems)
