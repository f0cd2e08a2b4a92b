"""The hooks a plugin implements. Each takes a ``register`` callback, as simonw/llm does.

Components (codecs, backbones, heads, sinks): ``register(name, factory, params=None)``. ``name`` is what
registry.yaml refers to; ``params`` is the pydantic model of the component's parameters (``extra="forbid"``
is enforced by the core), and the core calls ``factory`` with an instance of it, validated, as the one
positional argument (plus the keywords each hook names). Importers: ``register(name, command)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

import pluggy
from pydantic import BaseModel

if TYPE_CHECKING:
    import click

    from mbp.codec import Codec
    from mbp.heads import TaskHead
    from mbp.model.backbone import Backbone
    from mbp.sinks import MetricsSink

PROJECT = "mbp"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Component = TypeVar("Component", contravariant=True)


class Register(Protocol[Component]):
    """The callback a component hook receives: ``Register[Codec]`` takes factories that build codecs, and
    so on, so that mypy checks a plugin's components against the protocols."""

    def __call__(
        self, name: str, factory: Callable[..., Component], /, params: type[BaseModel] | None = None
    ) -> None: ...


class RegisterImporter(Protocol):
    """The callback ``mbp_register_importers`` receives: ``command`` runs as ``mbp import NAME``."""

    def __call__(self, name: str, command: click.Command, /) -> None: ...


@hookspec
def mbp_register_codecs(register: Register[Codec]) -> None:
    """Register modality codecs: the core calls ``factory(params) -> Codec``."""


@hookspec
def mbp_register_backbones(register: Register[Backbone]) -> None:
    """Register sequence blocks: the core calls ``factory(params, dim=..., layers=...) -> Backbone``."""


@hookspec
def mbp_register_heads(register: Register[TaskHead]) -> None:
    """Register task heads: the core calls ``factory(params) -> TaskHead``."""


@hookspec
def mbp_register_sinks(register: Register[MetricsSink]) -> None:
    """Register metrics sinks (trackers): the core calls ``factory(params, out=..., resume_step=...)
    -> MetricsSink`` (``out`` the run's folder, ``resume_step`` the step a resumed run continues from,
    else None), then ``write(row)`` for every metric row and ``close()`` when the run ends.

    A factory whose library is missing raises ``mbp.sinks.SinkUnavailableError``: the sink is then left out of
    runs that did not ask for it by name.
    """


@hookspec
def mbp_register_importers(register: RegisterImporter) -> None:
    """Register ``mbp import NAME`` commands that turn another tool's checkpoints into mbp checkpoints:
    ``register(name, command)`` with a ``click.Command``. The hook runs only when ``mbp import`` does."""
