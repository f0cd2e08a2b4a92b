"""The table of registered components, filled by plugins and owned by the core.

The core knows no codec, backbone or head by name: everything it builds is looked up here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from mbp.errors import ConfigError, NameClashError, PluginError

Kind = Literal["codecs", "backbones", "heads", "sinks"]
KINDS: tuple[Kind, ...] = ("codecs", "backbones", "heads", "sinks")


class NoParams(BaseModel):
    """Parameter model of a component that takes none."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Component:
    kind: Kind
    name: str
    factory: Callable[..., Any]
    params: type[BaseModel]
    plugin: str


def _needed(kind: Kind, name: str) -> str:
    return f"a plugin that registers {kind[:-1]} '{name}' is needed; install or enable it"


@dataclass
class ComponentTable:
    entries: dict[Kind, dict[str, Component]] = field(default_factory=lambda: {k: {} for k in KINDS})
    explain_missing: Callable[[Kind, str], str] = field(default=_needed, repr=False, compare=False)
    """Why nobody registered a name: the platform that filled the table knows which plugins are
    disabled or failed, so the table carries that knowledge instead of a process-wide lookup."""
    clashes: dict[Kind, dict[str, str]] = field(default_factory=lambda: {k: {} for k in KINDS})
    """Names two plugins registered, with the message saying which: nobody gets such a name."""

    def register(
        self, kind: Kind, plugin: str, name: str, factory: Callable[..., Any], params: type[BaseModel] | None
    ) -> None:
        if not isinstance(name, str) or not name or any(c.isspace() or c == "=" for c in name):
            raise PluginError(f"plugin '{plugin}' registered an invalid {kind[:-1]} name {name!r}")
        params = params or NoParams
        if not (isinstance(params, type) and issubclass(params, BaseModel)):
            raise PluginError(f"plugin '{plugin}': params of {kind[:-1]} '{name}' must be a pydantic model")
        if params.model_config.get("extra") != "forbid":
            # Misspelled parameters must fail, whatever the plugin author chose.
            params = type(params.__name__, (params,), {"model_config": ConfigDict(extra="forbid")})
        taken = self.entries[kind].get(name)
        if taken is not None:
            raise NameClashError(
                f"{kind[:-1]} '{name}' is registered by two plugins: '{taken.plugin}' and '{plugin}'"
            )
        self.entries[kind][name] = Component(kind, name, factory, params, plugin)

    def get(self, kind: Kind, name: str) -> Component:
        if name in self.clashes[kind]:
            raise PluginError(self.clashes[kind][name])
        try:
            return self.entries[kind][name]
        except KeyError:
            valid = ", ".join(sorted(self.entries[kind])) or "none registered"
            raise ConfigError(f"unknown {kind[:-1]} '{name}' (valid: {valid})") from None

    def names(self, kind: Kind, plugin: str | None = None) -> list[str]:
        return sorted(n for n, c in self.entries[kind].items() if plugin is None or c.plugin == plugin)

    def build(self, kind: Kind, ref: dict[str, Any], **extra: Any) -> Any:
        """Build a component from a validated reference ``{type: name, **params}``."""
        params = {k: v for k, v in ref.items() if k != "type"}
        component = self.get(kind, ref["type"])
        try:
            validated = component.params.model_validate(params)
            return component.factory(validated, **extra)
        except (ValueError, TypeError) as error:  # pydantic's errors are ValueErrors too
            shown = ", ".join(f"{k}={v}" for k, v in {**params, **extra}.items())
            message = " ".join(str(error).split())
            raise ConfigError(f"{kind[:-1]} '{ref['type']}' ({shown}) cannot be built: {message}") from None
