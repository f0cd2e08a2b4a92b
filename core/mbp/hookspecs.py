"""The hooks a plugin implements. Each takes a ``register`` callback, as simonw/llm does.

``register(name, factory, params=None)``: ``name`` is what registry.yaml refers to; ``factory`` builds the
component from validated parameters; ``params`` is the pydantic model of those parameters
(``extra="forbid"`` is enforced by the core).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

import pluggy
from pydantic import BaseModel

if TYPE_CHECKING:
    from mbp.codec import Codec
    from mbp.heads import TaskHead
    from mbp.model.backbone import Backbone

PROJECT = "mbp"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Component = TypeVar("Component", contravariant=True)


class Register(Protocol[Component]):
    """The callback a hook receives: ``Register[Codec]`` takes factories that build codecs, and so on,
    so that mypy checks a plugin's components against the protocols."""

    def __call__(
        self, name: str, factory: Callable[..., Component], /, params: type[BaseModel] | None = None
    ) -> None: ...


@hookspec
def mbp_register_codecs(register: Register[Codec]) -> None:
    """Register modality codecs: ``factory(params) -> Codec``, ``params`` an instance of the registered
    pydantic model."""


@hookspec
def mbp_register_backbones(register: Register[Backbone]) -> None:
    """Register sequence blocks: ``factory(params, dim=..., layers=...) -> Backbone``."""


@hookspec
def mbp_register_heads(register: Register[TaskHead]) -> None:
    """Register task heads: ``factory(params) -> TaskHead``."""


@hookspec
def mbp_register_sinks(register: Register) -> None:
    """Register metrics sinks (trackers): ``factory(params, out=..., resume_step=...) -> MetricsSink``.

    A factory whose library is missing raises ``mbp.sinks.SinkUnavailableError``: the sink is then left out of
    runs that did not ask for it by name.
    """


@hookspec
def mbp_register_importers(register: Register) -> None:
    """Register ``mbp import NAME`` commands that turn another tool's checkpoints into mbp checkpoints:
    ``register(name, command)`` with a ``click.Command``."""
