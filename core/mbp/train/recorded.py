"""What a checkpoint's run settled by measuring, which a resumed run keeps rather than measuring again:
its steps (at the time ceiling), its precision (``auto``), whether its samples varied and how many
held-out samples it evaluated, and which optimizer its saved state belongs to."""

from __future__ import annotations

from typing import Any

from mbp.train.precision import Precision


def _setting(document: dict[str, Any], section: str, key: str) -> Any:
    """``pipeline.<section>.<key>`` as a checkpoint's document recorded it, or None where it did not."""
    return ((document.get("pipeline") or {}).get(section) or {}).get(key)


def recorded_steps(document: dict[str, Any], default: int) -> int:
    """The ``train.steps`` a checkpoint's run trained to (planned or given), else ``default``."""
    steps = _setting(document, "train", "steps")
    return steps if isinstance(steps, int) and steps > 0 else default


def recorded_precision(document: dict[str, Any]) -> Precision | None:
    """The precision a checkpoint's run trained in, where it recorded one (``auto`` is settled at start)."""
    precision = _setting(document, "train", "precision")
    return precision if precision in ("fp32", "bf16") else None


def recorded_augment(document: dict[str, Any]) -> bool:
    """Whether a checkpoint's run varied its training samples (``data.augment``); one that records no
    setting did not, unless its codecs said so themselves."""
    return _setting(document, "data", "augment") is True


def recorded_eval_samples(document: dict[str, Any]) -> int | None:
    """The ``data.max_eval_samples`` a checkpoint's run evaluated (given, or planned to keep its
    evaluations within their share of the run), else None: all of them."""
    samples = _setting(document, "data", "max_eval_samples")
    return samples if isinstance(samples, int) and samples > 0 else None


def recorded_optimizer(document: dict[str, Any]) -> str:
    """The ``train.optimizer`` whose state a checkpoint saved: ``adamw`` where its config records no
    optimizer (such a checkpoint holds AdamW state)."""
    chosen = _setting(document, "train", "optimizer")
    return chosen if chosen in ("muon", "adamw") else "adamw"
