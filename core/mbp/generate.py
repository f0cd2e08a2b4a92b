"""Generation: sampling and the loop. The decoder owns its inference state and how prompts start it
(``prime``, ``step``); this module reaches it through those methods only.

Legend: B rows, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

import torch

from mbp.model.decoder import MultiscaleDecoder
from mbp.protocol import BOS, EOS, PAD

Callback = Callable[[int, int], None]
"""Called with (row, token) for every generated token."""


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    """0 means greedy."""
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None


@cache
def _never_sampled(vocab: int, device: torch.device) -> torch.Tensor:
    """Added to logits: -inf at PAD and BOS, which generation must never emit."""
    with torch.inference_mode(False):
        banned = torch.zeros(vocab, device=device)
        banned[[PAD, BOS]] = float("-inf")
        return banned


def sample_next(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> torch.Tensor:
    logits = logits.float() + _never_sampled(logits.shape[-1], logits.device)
    if not sampling.temperature:
        return logits.argmax(-1)
    logits = logits / sampling.temperature
    if sampling.top_k:
        kth = logits.topk(min(sampling.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p is not None and sampling.top_p < 1:
        ordered, order = logits.sort(dim=-1, descending=True)
        cumulative = ordered.softmax(-1).cumsum(-1)
        drop = cumulative - ordered.softmax(-1) > sampling.top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


@torch.inference_mode()
def generate(
    model: MultiscaleDecoder,
    prompts: Sequence[torch.Tensor],
    *,
    max_new: int,
    sampling: Sampling | None = None,
    stop_tokens: Sequence[int] = (EOS,),
    callback: Callback | None = None,
) -> list[list[int]]:
    """Generate up to ``max_new`` tokens for each prompt; a row stops after emitting a stop token."""
    sampling = sampling or Sampling()
    was_training = model.training
    model.eval()
    generator = None
    if sampling.seed is not None:
        generator = torch.Generator(device=next(model.parameters()).device).manual_seed(sampling.seed)
    try:
        state, logits = model.prime(prompts, max_new)
        out: list[list[int]] = [[] for _ in prompts]
        done = [False] * len(prompts)
        stops = set(stop_tokens)
        for step in range(max_new):
            tokens = sample_next(logits, sampling, generator)
            chosen = tokens.tolist()
            for row, token in enumerate(chosen):
                if not done[row]:
                    out[row].append(token)
                    if callback:
                        callback(row, token)
            done = [d or t in stops for d, t in zip(done, chosen, strict=True)]
            if all(done) or step == max_new - 1:
                break
            logits = model.step(tokens, state)
        return out
    finally:
        model.train(was_training)
