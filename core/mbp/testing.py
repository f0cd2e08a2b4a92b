"""A reusable test harness for backbones and whole models; third-party plugin tests import it.

``generate_uncached`` is the reference that cached generation must match. Every check runs in eval mode
and, unless told otherwise, in float64 so "unchanged" can mean exactly unchanged: a causal model's
outputs before position t do not move at all when the input at t changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from mbp.boundaries import BoundaryRule, patch_starts
from mbp.generate import Sampling, sample_next
from mbp.model.backbone import prefill, run_segments
from mbp.model.decoder import MultiscaleDecoder
from mbp.protocol import PAD


def _positions(length: int, chosen: Iterable[int] | None) -> list[int]:
    return sorted(set(chosen)) if chosen is not None else sorted({0, 1, length // 2, length - 2, length - 1})


@torch.no_grad()
def assert_backbone_causal(
    backbone: nn.Module,
    dim: int,
    *,
    length: int = 33,
    positions: Iterable[int] | None = None,
    atol: float = 0.0,
) -> None:
    """Changing input t leaves outputs before t unchanged (within ``atol``) and changes output t."""
    backbone = backbone.double().eval()
    x = torch.randn(2, length, dim, dtype=torch.float64)
    base = backbone(x)
    for t in _positions(length, positions):
        moved = x.clone()
        moved[:, t] += torch.randn(2, dim, dtype=torch.float64)
        out = backbone(moved)
        before = (out[:, :t] - base[:, :t]).abs().max().item() if t else 0.0
        assert before <= atol, f"output before position {t} moved by {before:.3g} when input {t} changed"
        assert (out[:, t] - base[:, t]).abs().max().item() > 0, f"output {t} ignores input {t}"


@torch.no_grad()
def assert_step_matches_forward(
    backbone: Any, dim: int, *, length: int = 21, batch: int = 3, atol: float = 1e-9
) -> None:
    """``step`` position by position (and ``prefill`` when present) reproduce ``forward``."""
    backbone = backbone.double().eval()
    x = torch.randn(batch, length, dim, dtype=torch.float64)
    full = backbone(x)
    cache = backbone.allocate_cache(batch, length + 1)
    active = torch.ones(batch, dtype=torch.bool)
    stepped = torch.stack([backbone.step(x[:, t], cache, active) for t in range(length)], dim=1)
    error = (stepped - full).abs().max().item()
    assert error <= atol, f"step differs from forward by {error:.3g}"
    # rows that sit out a step keep their state; prefilling some rows equals stepping them
    cache = backbone.allocate_cache(batch, length + 1)
    half = length // 2
    rows = torch.tensor([0, batch - 1])
    prefill(backbone, x[rows, :half], cache, rows)
    only = torch.zeros(batch, dtype=torch.bool)
    only[rows] = True
    tail = torch.stack([backbone.step(x[:, t], cache, only)[rows] for t in range(half, length)], dim=1)
    error = (tail - full[rows, half:]).abs().max().item()
    assert error <= atol, f"prefill + masked steps differ from forward by {error:.3g}"


@torch.no_grad()
def assert_model_causal(
    model: MultiscaleDecoder,
    *,
    length: int | None = None,
    positions: Iterable[int] | None = None,
    atol: float = 0.0,
    ids: torch.Tensor | None = None,
    starts_of: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> None:
    """Changing token t leaves every logit before position t+1 unchanged (logit t predicts token t from
    tokens < t), for positions inside patches and on patch boundaries. ``ids: (2, L)`` replaces the
    random tokens; ``starts_of`` places varying patches (``(B, L)`` tokens to ``(B, L)`` bool starts,
    as a boundary rule does), placed anew for every changed input."""
    model = model.double().eval()
    length = length or (ids.shape[1] if ids is not None else 3 * model.patch_len + 5)
    ids = torch.randint(0, 256, (2, length)) if ids is None else ids

    def run(tokens: torch.Tensor) -> torch.Tensor:
        return model(tokens) if starts_of is None else model(tokens, starts=starts_of(tokens))

    base = run(ids)
    patch = model.patch_len
    chosen = (
        positions if positions is not None else {0, patch - 1, patch, patch + 1, 2 * patch - 1, length - 1}
    )
    for t in _positions(length, [p for p in chosen if 0 <= p < length]):
        moved = ids.clone()
        moved[:, t] = (moved[:, t] + 1 + torch.randint(0, 254, (2,))) % 256
        out = run(moved)
        before = (out[:, : t + 1] - base[:, : t + 1]).abs().max().item()
        assert before <= atol, f"logits up to position {t} moved by {before:.3g} when token {t} changed"
        if t + 1 < length:
            assert (out[:, t + 1 :] - base[:, t + 1 :]).abs().max().item() > 0, (
                f"no logit after {t} saw token {t}"
            )


@torch.no_grad()
def assert_segments_kept_apart(
    backbone: nn.Module, dim: int, *, lengths: tuple[int, ...] = (5, 1, 9)
) -> None:
    """Running segments of one row together (``forward_segments``, or the core's fallback) gives each
    segment exactly the outputs of running it alone."""
    backbone = backbone.double().eval()
    parts = [torch.randn(1, n, dim, dtype=torch.float64) for n in lengths]
    segments = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])[None]
    together = run_segments(backbone, torch.cat(parts, dim=1), segments)
    offset = 0
    for index, part in enumerate(parts):
        alone = backbone(part)
        got = together[:, offset : offset + part.shape[1]]
        moved = (got - alone).abs().max().item()
        assert moved <= 1e-9, f"segment {index} differs from running it alone by {moved:.3g}"
        offset += part.shape[1]


@torch.inference_mode()
def generate_uncached(
    model: MultiscaleDecoder,
    prompt: torch.Tensor,
    max_new: int,
    rules: Mapping[str, BoundaryRule] | None = None,
) -> list[int]:
    """Greedy decoding by a full forward at every step: the reference the cached path must match. With
    boundary ``rules``, each forward's byte-level patches are those ``patch_starts`` places on the whole
    sequence. Runs in eval mode and leaves the model in the mode it found."""
    was_training = model.training
    model.eval()
    try:
        sequence = prompt.clone()
        out: list[int] = []
        for _ in range(max_new):
            padded = torch.cat((sequence, sequence.new_full((1,), PAD)))
            if rules is None:
                logits = model(padded[None])[0, -1]
            else:
                placed = patch_starts(padded.cpu().numpy(), rules, model.patch_sizes[-1])
                logits = model(padded[None], starts=torch.from_numpy(placed)[None].to(padded.device))[0, -1]
            token = int(sample_next(logits[None], Sampling(), None)[0])
            out.append(token)
            sequence = torch.cat((sequence, sequence.new_full((1,), token)))
        return out
    finally:
        model.train(was_training)
