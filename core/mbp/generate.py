"""Cached generation for multiscale decoders.

Every stage keeps inference state (KV cache or recurrent state). Each new token advances the last stage;
a coarser stage advances only for the rows whose unit below it just completed, and a fresh unit starts
by stepping its start token, exactly as the parallel forward wires it. Rows are independent: prompts of
different lengths sit at different phases of their patches, and masked steps keep them apart.

Legend: B rows, V vocabulary, s stage, P_s stage length, U_s bytes per stage-s unit, D_s width.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch

from mbp.model.backbone import prefill
from mbp.model.decoder import MultiscaleDecoder
from mbp.protocol import BOS, END, EOS, PAD

Callback = Callable[[int, int], None]
"""Called with (row, token) for every generated token."""


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    """0 means greedy."""
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None


class CachedState:
    """Per-stage caches, pending projections and counters for a batch of rows."""

    def __init__(self, model: MultiscaleDecoder, prompts: Sequence[torch.Tensor], max_new: int) -> None:
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token (a sample starts with BOS)")
        self.model = model
        like = next(model.parameters())
        self.device = like.device
        batch = len(prompts)
        n = model.num_stages
        longest = max(len(p) for p in prompts) + max_new + 1
        # Prefill all but each prompt's last token, then feed that one as a step: the step returns the
        # next-token logits directly, also where a prompt ends on a patch boundary (whose predicting
        # state lies in the previous patch), so no full forward over the prompt is needed.
        heads = [p[:-1].to(self.device) for p in prompts]
        sizes = [len(h) for h in heads]
        self.history = torch.full((batch, longest), PAD, dtype=torch.long, device=self.device)
        self.lengths = torch.tensor(sizes, device=self.device)
        for row, head in enumerate(heads):
            self.history[row, : len(head)] = head
        capacities = [longest // model.units[0] + 2] + [model.patch_sizes[s] + 1 for s in range(1, n)]
        backbones: list[Any] = list(model.backbones)
        self.backbones = backbones
        self.caches = [backbones[s].allocate_cache(batch, capacities[s]) for s in range(n)]
        self.pending = [None] + [
            like.new_zeros(batch, model.patch_sizes[s], model.dims[s]) for s in range(1, n)
        ]
        self.counts = [torch.zeros(batch, dtype=torch.long, device=self.device) for _ in range(n)]
        self.rows = torch.arange(batch, device=self.device)
        self.everyone = torch.ones(batch, dtype=torch.bool, device=self.device)
        for size in sorted(set(sizes)):  # rows of one prompt length prefill together
            rows = [row for row, other in enumerate(sizes) if other == size]
            self._prefill_rows(torch.tensor(rows, device=self.device), torch.stack([heads[r] for r in rows]))
        self.feed(torch.stack([p[-1] for p in prompts]).to(self.device))  # sets self.logits

    def _prefill_rows(self, rows: torch.Tensor, prompts: torch.Tensor) -> None:
        """Fill every stage's cache for ``rows`` from their (possibly empty) prompts, (R, L) of one L."""
        model, (count, length) = self.model, prompts.shape
        for s in range(model.num_stages):
            unit = model.units[s]
            begin = 0 if s == 0 else length - length % model.units[s - 1]
            done = (length - begin) // unit
            units = prompts[:, begin : begin + done * unit]
            # the last stage embeds single bytes; earlier stages embed units of U_s bytes
            if s < model.num_stages - 1:
                units = units.reshape(count, done, unit)
            inputs = model.embeddings[s](units)
            if s > 0:
                inputs = inputs + self.pending[s][rows, :done]  # type: ignore[index]
            x = torch.cat((model.start_tokens[s].expand(count, 1, -1), inputs), dim=1)
            out = prefill(self.backbones[s], x, self.caches[s], rows)
            self.counts[s][rows] = done
            if s < model.num_stages - 1:
                nxt = model.patch_sizes[s + 1]
                fresh = model.projections[s](out[:, -1]).view(count, nxt, -1)
                self.pending[s + 1][rows] = fresh  # type: ignore[index]

    def _unit_input(self, s: int, rows: torch.Tensor) -> torch.Tensor:
        """Stage s's input for the unit that just completed in each row (rows not in ``rows``: ignored)."""
        model = self.model
        unit = model.units[s]
        index = (self.lengths[:, None] - unit + torch.arange(unit, device=self.device)).clamp_min(0)
        units = self.history.gather(1, index)
        x = model.embeddings[s](units)
        if s > 0:
            slot = self.counts[s].clamp(max=self.pending[s].shape[1] - 1)  # type: ignore[union-attr]
            x = x + self.pending[s][torch.arange(len(slot)), slot]  # type: ignore[index]
        return x

    def _set_pending(self, s: int, out: torch.Tensor, rows: torch.Tensor) -> None:
        """Project stage s's outputs into stage s+1's pending inputs, for ``rows`` only."""
        model = self.model
        nxt = model.patch_sizes[s + 1]
        fresh = model.projections[s](out).view(len(out), nxt, -1)
        self.pending[s + 1] = torch.where(rows[:, None, None], fresh, self.pending[s + 1])  # type: ignore[arg-type]

    @torch.inference_mode()
    def feed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Consume one token per row; return next-token logits (B, V)."""
        model, last = self.model, self.model.num_stages - 1
        self.history[self.rows, self.lengths] = tokens
        self.lengths = self.lengths + 1
        x = model.embeddings[last](tokens)
        if last > 0:
            x = x + self.pending[last][self.rows, self.counts[last]]  # type: ignore[index]
        out = self.backbones[last].step(x, self.caches[last], self.everyone)
        head = model.to_logits
        self.logits = torch.addmm(head.bias, out, head.weight.t())  # 2-D: cheaper than a Linear call
        if last > 0:
            self.counts[last] = self.counts[last] + 1
            completed = self.counts[last] == model.patch_sizes[last]
            if bool(completed.any()):  # most steps end here: no row finished a patch
                self._advance_coarse_stages(completed)
        return self.logits

    def _advance_coarse_stages(self, completed_last: torch.Tensor) -> None:
        model, last = self.model, self.model.num_stages - 1
        completed = [torch.zeros_like(completed_last) for _ in range(model.num_stages)]
        completed[last] = completed_last
        for s in range(last, 0, -1):  # upwards: a completed unit is one more input for the stage above
            if not bool(completed[s].any()):
                break
            above = s - 1
            x = self._unit_input(above, completed[s])
            self.counts[above] = self.counts[above] + completed[s].long()
            if above > 0:
                completed[above] = completed[s] & (self.counts[above] == model.patch_sizes[above])
            advance = completed[s] & ~completed[above]
            if bool(advance.any()):
                out = self.backbones[above].step(x, self.caches[above], advance)
                self._set_pending(above, out, advance)
        for s in range(1, model.num_stages):  # downwards: fresh units start with their start token
            fresh = completed[s]
            if not bool(fresh.any()):
                continue
            self.caches[s].reset(fresh)
            self.counts[s] = torch.where(fresh, torch.zeros_like(self.counts[s]), self.counts[s])
            start = model.start_tokens[s].expand(len(fresh), -1)
            out = self.backbones[s].step(start, self.caches[s], fresh)
            if s < last:
                self._set_pending(s, out, fresh)


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
        state = CachedState(model, prompts, max_new)
        logits = state.logits
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
            logits = state.feed(tokens)
        return out
    finally:
        model.train(was_training)


@torch.inference_mode()
def generate_uncached(model: MultiscaleDecoder, prompt: torch.Tensor, max_new: int) -> list[int]:
    """Greedy decoding by a full forward at every step: the reference the cached path must match."""
    model.eval()
    sequence = prompt.clone()
    out: list[int] = []
    for _ in range(max_new):
        padded = torch.cat((sequence, sequence.new_full((1,), PAD)))
        logits = model.to_logits(model.hidden(padded[None])[0, -1])
        token = int(sample_next(logits[None], Sampling(), None)[0])
        out.append(token)
        sequence = torch.cat((sequence, sequence.new_full((1,), token)))
    return out


def generate_segment_payload(model: MultiscaleDecoder, sample: Any, field: str, max_bytes: int = 64) -> bytes:
    """Greedy payload of ``field``'s segment given everything before it (used for predicted labels)."""
    from mbp.heads import prompt_length

    cut = prompt_length(sample, field)
    prompt = torch.as_tensor(sample.tokens[:cut].astype("int64"))
    tokens = generate(model, [prompt], max_new=max_bytes, stop_tokens=(END, EOS))[0]
    return bytes(t for t in tokens if t < 256)
