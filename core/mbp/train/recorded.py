"""What a checkpoint's run settled by measuring, which a resumed run keeps rather than measuring again:
its steps (at the time ceiling), its precision (``auto``) and whether its samples varied."""

from __future__ import annotations

from typing import Any

from mbp.train.precision import Precision


def recorded_steps(document: dict[str, Any], default: int) -> int:
    """The ``train.steps`` a checkpoint's run trained to (planned or given), else ``default``."""
    steps = ((document.get("pipeline") or {}).get("train") or {}).get("steps")
    return steps if isinstance(steps, int) and steps > 0 else default


def recorded_precision(document: dict[str, Any]) -> Precision | None:
    """The precision a checkpoint's run trained in, where it recorded one (``auto`` is settled at start)."""
    precision = ((document.get("pipeline") or {}).get("train") or {}).get("precision")
    return precision if precision in ("fp32", "bf16") else None


def recorded_augment(document: dict[str, Any]) -> bool:
    """Whether a checkpoint's run varied its training samples (``data.augment``); a run recorded before
    the setting existed did not, unless its codecs said so themselves."""
    return ((document.get("pipeline") or {}).get("data") or {}).get("augment") is True
