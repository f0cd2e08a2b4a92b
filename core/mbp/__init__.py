"""mbp: a plugin platform for multimodal byte modeling with multiscale hierarchical decoders.

The user's Python API, loaded on first use so that ``import mbp`` stays cheap (no torch)::

    import mbp

    summary = mbp.run("vqa-mixed", out="runs/demo", settings={"train.steps": 20})  # bundled shards
    model = mbp.load("runs/demo")              # its best checkpoint, else its last
    model.answer({"question": "what colour is the square?", "scene": png_bytes})

Plugin authors import ``mbp.api``.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from mbp.errors import MbpError

if TYPE_CHECKING:
    from mbp.loaded import Evaluation, LoadedModel, load
    from mbp.running import RunSummary, run

__version__ = "0.1.0"
__all__ = ["Evaluation", "LoadedModel", "MbpError", "RunSummary", "__version__", "load", "run"]

_LAZY = {
    "load": "mbp.loaded",
    "LoadedModel": "mbp.loaded",
    "Evaluation": "mbp.loaded",
    "run": "mbp.running",
    "RunSummary": "mbp.running",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mbp' has no attribute {name!r}")
