"""MultiscaleDecoder: MBLM's hierarchical decoder stack with any registered backbone per stage.

Legend: B batch, L flat length, V vocabulary, n stages, P_s stage s's sequence length
(P_1 patches, P_s>1 sub-units per unit), U_s bytes per stage-s unit (U_s = P_{s+1} * ... * P_n),
D_s stage width, N_s rows stage s runs in parallel (B * P_1 * ... * P_{s-1}).

The wiring is MBLM's (and MEGABYTE's): each stage embeds its units (bytes for the last stage; the
concatenated byte embeddings of a patch, normed and projected, for earlier stages), prepends a learned
start token, adds the previous stage's projected output to every position but the start, and projects
its own outputs (all but the last) to ``P_{s+1} * D_{s+1}`` for the next stage. Logits come from the last
stage, shifted right by one through the very first start token, so no output ever sees its own target.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from mbp.boundaries import BoundaryRule, patch_starts
from mbp.errors import ConfigError
from mbp.model import decoder_steps
from mbp.model.backbone import Backbone, run_segments
from mbp.model.decoder_cache import DecoderCache
from mbp.model.kept_rows import kept_rows
from mbp.model.parts import LossOutput, ParamGroups, UnitEmbedding
from mbp.model.varying_patches import varying_hidden
from mbp.model.varying_steps import grid_capacity, grid_prompts, placers
from mbp.protocol import PAD, VOCAB_SIZE

CHECKPOINT_POSITIONS = 1 << 14


@dataclass(frozen=True)
class Stage:
    backbone: nn.Module
    dim: int
    seq_len: int | None
    checkpoint: bool = False


class MultiscaleDecoder(nn.Module):
    def __init__(
        self,
        stages: Sequence[Stage],
        *,
        vocab_size: int = VOCAB_SIZE,
        loss_chunk: int | None = None,
        rules: Mapping[str, BoundaryRule] | None = None,
    ) -> None:
        super().__init__()
        self.rules = None if rules is None or len(stages) == 1 else dict(rules)
        """The model's boundary rules by codec (``mbp.boundaries``): where set, ``hidden``, ``loss`` and
        generation place byte-level patches by them, the last stage's patch the longest; None: fixed."""
        if not stages:
            raise ConfigError("a multiscale decoder needs at least one stage")
        for index, stage in enumerate(stages[1:], start=2):
            if not stage.seq_len:
                raise ConfigError(f"stage {index} needs a patch size")
        self.num_stages = len(stages)
        self.seq_lens = [s.seq_len for s in stages]
        self.patch_sizes = [int(s.seq_len or 1) for s in stages]
        """Stage sequence lengths with stage 1's unbounded length read as 1 (only later ones are used)."""
        self.dims = [s.dim for s in stages]
        self.checkpointed = [s.checkpoint for s in stages]
        self.vocab_size = vocab_size
        self.loss_chunk = loss_chunk
        self.units = [math.prod(int(p or 1) for p in self.seq_lens[s + 1 :]) for s in range(self.num_stages)]
        local_dim = self.dims[-1]
        self.backbones = nn.ModuleList(s.backbone for s in stages)
        self.start_tokens = nn.ParameterList(nn.Parameter(torch.randn(d)) for d in self.dims)
        self.embeddings = nn.ModuleList(
            UnitEmbedding(vocab_size, local_dim, self.units[s], self.dims[s])
            if s < self.num_stages - 1
            else nn.Embedding(vocab_size, local_dim, padding_idx=PAD)
            for s in range(self.num_stages)
        )
        self.projections = nn.ModuleList(
            nn.Linear(self.dims[s], self.dims[s + 1] * int(self.seq_lens[s + 1] or 1))
            for s in range(self.num_stages - 1)
        )
        self.to_logits = nn.Linear(local_dim, vocab_size)

    @property
    def patch_len(self) -> int:
        """Bytes per stage-1 patch: inputs are padded to a multiple of it."""
        return self.units[0]

    @property
    def pack_align(self) -> int:
        """Where packed samples may start: any token with boundary rules (a sample's ``BOS`` starts a
        patch of its own), else a multiple of ``patch_len``."""
        return 1 if self.rules is not None else self.patch_len

    @property
    def max_len(self) -> int | None:
        """The longest input in tokens, or None when stage 1 has no fixed length."""
        return None if self.seq_lens[0] is None else int(self.seq_lens[0]) * self.patch_len

    def pad_input(self, ids: torch.Tensor) -> torch.Tensor:
        length = ids.shape[-1]
        if self.max_len is not None and length > self.max_len:
            raise ConfigError(
                f"input of {length} tokens is longer than the model's limit of {self.max_len} "
                f"(stage 1 seq_len {self.seq_lens[0]} x patch {self.patch_len})"
            )
        return F.pad(ids, (0, -length % self.patch_len), value=PAD)

    def hidden(
        self, ids: torch.Tensor, begins: torch.Tensor | None = None, starts: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Last-stage states that predict each token: ``ids: (B, L) -> (B, L, D_n)``.

        Position t's state has seen tokens < t only. ``begins: (B, L)`` bool marks where packed samples
        start (at multiples of ``patch_len``): each sample then sees only itself, exactly as if alone.
        ``starts: (B, L)`` bool marks where byte-level patches start (``mbp.model.varying_patches``);
        without it every patch is full. Packed samples may then begin at any patch start.
        """
        starts = self.patch_starts(ids) if starts is None else starts
        if starts is not None:
            return varying_hidden(self, ids, starts, begins)
        return self._hidden(ids, begins, self.first_patches(begins))

    def patch_starts(self, ids: torch.Tensor) -> torch.Tensor | None:
        """``(B, L)`` bool: where the model's ``rules`` start the byte-level patches of ``ids: (B, L)``
        (each row read as whole samples, the start of one, or, where the rules name one codec, the rest
        of one split across rows); None for a model without rules."""
        if self.rules is None:
            return None
        rows = ids.detach().cpu().numpy()
        lead = next(iter(self.rules)) if len(self.rules) == 1 else None  # a row that continues a sample
        placed = np.stack([patch_starts(row, self.rules, self.patch_sizes[-1], lead) for row in rows])
        return torch.from_numpy(placed).to(ids.device)

    def _hidden(
        self, ids: torch.Tensor, begins: torch.Tensor | None, first: torch.Tensor | None
    ) -> torch.Tensor:
        batch, length = ids.shape
        if length == 0:
            raise ConfigError("cannot run the model on an empty input")
        padded = self.pad_input(ids)
        out = self.stage_outputs(padded, first=first)  # (N_n, P_n + 1, D_n)
        per_row = out.view(batch, -1, out.shape[-2], out.shape[-1])
        rest = per_row[:, :, 1:].reshape(batch, -1, out.shape[-1])
        # the first start token predicts token 0
        hidden = torch.cat((per_row[:, 0, 0:1], rest[:, : length - 1]), dim=1)
        if first is None or begins is None:
            return hidden
        # so does each packed sample's: its first row's start position predicts its first token
        row_starts = per_row[:, :, 0].repeat_interleave(self.patch_sizes[-1], dim=1)[:, :length]
        return torch.where(begins[..., None], row_starts, hidden)

    def first_patches(self, begins: torch.Tensor | None) -> torch.Tensor | None:
        """(B, P_1) bool: the stage-1 patches where a packed sample begins, from ``begins: (B, L)``;
        None when no row holds more than one sample (nothing to keep apart)."""
        if begins is None:
            return None
        tail = -begins.shape[1] % self.patch_len
        padded = F.pad(begins, (0, tail)).view(begins.shape[0], -1, self.patch_len)
        if bool(padded[:, :, 1:].any()):
            raise ValueError(f"packed samples must start at multiples of the patch length {self.patch_len}")
        first = padded[:, :, 0]
        return first if bool(first[:, 1:].any()) else None

    def stage_outputs(
        self, padded: torch.Tensor, keep: torch.Tensor | None = None, first: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The last stage's outputs (N_n, P_n + 1, D_n) for ``padded: (B, L)`` (L a multiple of the patch).

        With ``keep: (N_n,)`` bool, the last stage runs only on those rows (its rows are independent
        sequences, so they come out exactly as in the full run). With ``first: (B, P_1)`` bool, stage 1
        restarts at each marked patch (see ``_restart``); later stages' rows lie inside one patch anyway.
        """
        previous: torch.Tensor | None = None
        last = self.num_stages - 1
        for s in range(self.num_stages):
            units = padded.view(-1, self.units[s])  # all stage-s units in order
            seq = self.patch_sizes[s] if s > 0 else padded.shape[1] // self.units[0]
            if s == last and keep is not None and s > 0:
                units = units.view(-1, seq, self.units[s])[keep].flatten(0, 1)
                previous = previous[keep] if previous is not None else None
            x = self._stage(s, units, seq, previous, first)
            if s < self.num_stages - 1:
                previous = self._to_next_stage(s, x[:, :-1])
        return x

    def _stage(
        self,
        s: int,
        units: torch.Tensor,
        seq: int,
        previous: torch.Tensor | None,
        first: torch.Tensor | None,
    ) -> torch.Tensor:
        """Stage ``s`` over ``units`` (N_s * P_s units of the stage's tokens, ``seq`` a sequence), each
        position given the stage above's projected output ``previous``; its outputs (N_s, P_s + 1, D_s)."""
        tokens = self.embeddings[s](units).view(-1, seq, self.dims[s])  # (N_s, P_s, D_s)
        if previous is not None:
            tokens = tokens + previous
        x = torch.cat((self._start(s, tokens.shape[0])[:, None], tokens), dim=1)
        segments = None
        if s == 0 and first is not None:
            x, segments = self._restart(x, first)
        return self._run(s, x, segments)

    def _restart(self, x: torch.Tensor, first: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 1's inputs ``x: (B, P_1 + 1, D_1)`` with each packed sample made a sequence of its own:
        the position that predicts a sample's first patch holds the start token instead of the previous
        sample's last patch, and ``segments: (B, P_1 + 1)`` numbers the samples so that attention stays
        inside one. A sample then sees exactly what it would alone (positions are relative)."""
        restart = F.pad(first[:, 1:], (1, 1))  # position j >= 1 holds patch j - 1 and predicts patch j
        x = torch.where(restart[..., None], self.start_tokens[0].to(x.dtype), x)
        return x, torch.cumsum(restart, dim=1)

    def _start(self, s: int, rows: int) -> torch.Tensor:
        """Stage s's learned start token for ``rows`` sequences: (rows, D_s)."""
        return self.start_tokens[s].expand(rows, -1)

    def _to_next_stage(self, s: int, out: torch.Tensor) -> torch.Tensor:
        """Stage s's outputs ``(..., D_s)`` as stage s+1's inputs: ``(prod(...), P_{s+1}, D_{s+1})``."""
        return self.projections[s](out).reshape(-1, self.patch_sizes[s + 1], self.dims[s + 1])

    def _backbone(self, s: int) -> Backbone:
        return cast(Backbone, self.backbones[s])

    def _run(self, s: int, x: torch.Tensor, segments: torch.Tensor | None = None) -> torch.Tensor:
        """Stage s's backbone over ``x: (N_s, P_s + 1, D_s)``, attending within ``segments`` if given.
        A checkpointed stage keeps only its inputs and recomputes in backward, in row chunks of about
        CHECKPOINT_POSITIONS positions, so a stage's activations never exist all at once (rows are
        independent sequences: results are identical)."""
        backbone = self.backbones[s]

        def run(part: torch.Tensor, part_segments: torch.Tensor | None) -> torch.Tensor:
            return backbone(part) if part_segments is None else run_segments(backbone, part, part_segments)

        if not (self.checkpointed[s] and self.training and torch.is_grad_enabled()):
            return run(x, segments)
        rows = max(1, CHECKPOINT_POSITIONS // x.shape[1])
        chunks = segments.split(rows) if segments is not None else [None] * -(-x.shape[0] // rows)
        parts = [
            checkpoint(run, part, chunk, use_reentrant=False)
            for part, chunk in zip(x.split(rows), chunks, strict=True)
        ]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def forward(
        self, ids: torch.Tensor, begins: torch.Tensor | None = None, starts: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits ``(B, L, V)`` predicting each token from the tokens before it (of its own sample)."""
        return self.to_logits(self.hidden(ids, begins, starts))

    def loss(
        self,
        ids: torch.Tensor,
        weights: torch.Tensor | None = None,
        begins: torch.Tensor | None = None,
        starts: torch.Tensor | None = None,
    ) -> LossOutput:
        """Weighted cross-entropy of predicting ``ids`` (PAD targets never count); ``begins`` and
        ``starts`` as in ``hidden``.

        With ``loss_chunk`` set, logits are made and dropped chunk by chunk (recomputed in backward),
        so the full (B, L, V) logits never exist at once.
        """
        w = (ids != PAD).float()
        if weights is not None:
            w = w * weights.float()
        starts = self.patch_starts(ids) if starts is None else starts
        first = None if starts is not None else self.first_patches(begins)  # once: it syncs with the device
        sparse = None if starts is not None else self._weighted_rows(ids, w, begins, first)
        if sparse is not None:
            hidden, ids, w = sparse
        elif starts is not None:  # varying patches: those predicting a weighted token run
            hidden = varying_hidden(self, ids, starts, begins, w)
        else:
            hidden = self._hidden(ids, begins, first)
        w = w.to(hidden.dtype)
        chunk = self.loss_chunk or hidden.shape[1]
        nats = hidden.new_zeros(())
        for start in range(0, hidden.shape[1], chunk):
            part = (
                hidden[:, start : start + chunk],
                ids[:, start : start + chunk],
                w[:, start : start + chunk],
            )
            if self.loss_chunk and torch.is_grad_enabled():
                nats = nats + checkpoint(self._chunk_nats, *part, use_reentrant=False)
            else:
                nats = nats + self._chunk_nats(*part)
        weight = w.sum()
        return LossOutput(nats / weight.clamp_min(1e-12), nats.detach(), weight.detach())

    def _weighted_rows(
        self, ids: torch.Tensor, w: torch.Tensor, begins: torch.Tensor | None, first: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The states, targets and weights of only the last-stage rows whose targets carry weight
        (``mbp.model.kept_rows``); None when every row does (or the model has a single stage)."""
        if self.num_stages == 1:
            return None
        length = ids.shape[1]
        padded = self.pad_input(ids)
        # tokens predicted by the start position of their own last-stage row: each row's token 0, and
        # each packed sample's first token when samples are kept apart
        lead = torch.zeros_like(padded, dtype=torch.bool)
        lead[:, 0] = True
        if first is not None and begins is not None:
            lead[:, :length] |= begins
        rows = kept_rows(padded, F.pad(w, (0, padded.shape[1] - length)), lead, self.patch_sizes[-1])
        if rows is None:
            return None
        return rows.scored(self.stage_outputs(padded, rows.keep, first))

    def _chunk_nats(self, hidden: torch.Tensor, ids: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        ce, _ = self.token_nats(hidden, ids)
        return (ce * w.to(ce.dtype).flatten()).sum()

    def token_nats(self, hidden: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nats ``(N,)`` of the N tokens ``ids: (..., L)`` given ``hidden()``'s states ``(..., L, D_n)``, and
        their logits ``(N, V)``: the loss and evaluation both score here (bf16 in fp32, fp64 kept)."""
        logits = self.to_logits(hidden)
        wide = logits.to(torch.promote_types(logits.dtype, torch.float32)).reshape(-1, logits.shape[-1])
        return F.cross_entropy(wide, ids.long().flatten(), reduction="none"), wide

    def param_groups(self) -> ParamGroups:
        """The parameters by how training treats them; the byte-level stage is the last one."""
        return ParamGroups.of(self, skip_decay=self.start_tokens, byte_level=self.backbones[-1])

    def sharding_units(self) -> list[nn.Module]:
        """What FSDP shards one by one before the rest: each stage's backbone, but for the byte-level
        stage's under boundary rules. That stage then runs a number of times that differs between
        processes (once per patch length, or per chunk of packed rows a checkpointed stage takes), and
        a unit of its own gathers its shards at every call: the processes' collectives would not
        match. With the rest, it is gathered once a forward."""
        units = list(self.backbones)
        return units[:-1] if self.rules is not None else units

    # Inference (``mbp.model.decoder_steps``): the wiring of ``stage_outputs`` one position at a time.

    def allocate_cache(
        self, batch: int, max_len: int, rules: Mapping[str, BoundaryRule] | None = None
    ) -> DecoderCache:
        """Inference state for ``batch`` rows of up to ``max_len`` tokens each; with boundary ``rules``,
        byte-level patches start where they place them (``mbp.model.varying_steps``)."""
        like = next(self.parameters()).detach()
        rules = self.rules if rules is None else rules
        max_len = grid_capacity(max_len, rules, self.patch_sizes[-1])
        capacities = [max_len // self.units[0] + 2] + [p + 1 for p in self.patch_sizes[1:]]
        caches = [self._backbone(s).allocate_cache(batch, capacities[s]) for s in range(self.num_stages)]
        history = torch.full((batch, max_len), PAD, dtype=torch.long, device=like.device)
        projected = [
            like.new_zeros(batch, self.patch_sizes[s], self.dims[s]) for s in range(1, self.num_stages)
        ]
        return DecoderCache(caches, history, projected, placers(rules, batch, self.patch_sizes[-1]))

    def prime(
        self,
        prompts: Sequence[torch.Tensor],
        max_new: int,
        rules: Mapping[str, BoundaryRule] | None = None,
    ) -> tuple[DecoderCache, torch.Tensor]:
        """A cache holding ``prompts`` (a row each, room for ``max_new`` more; patches placed by
        ``rules`` where given) and each row's next logits (B, V): a prompt is prefilled but for its last
        token, whose step yields them (see ``prefill``)."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token (a sample starts with BOS)")
        device = next(self.parameters()).device
        cache = self.allocate_cache(len(prompts), max(len(p) for p in prompts) + max_new + 1, rules)
        sizes = [len(p) - 1 for p in prompts]
        for size in sorted(set(sizes)):
            rows = [row for row, other in enumerate(sizes) if other == size]
            heads = torch.stack([prompts[r][:-1] for r in rows]).to(device)
            self.prefill(heads, cache, torch.tensor(rows, device=device))
        return cache, self.step(torch.stack([p[-1] for p in prompts]).to(device), cache)

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor, cache: DecoderCache, rows: torch.Tensor) -> None:
        """Make ``rows: (R,)`` of ``cache`` hold the tokens ``ids: (R, L)`` (prompts of one length, L >= 0).

        Returns no logits: those of the next token come from stepping a prompt's last token, also where
        a prompt ends on a patch boundary (whose predicting state lies in the previous patch), so a
        prompt is prefilled without its last token and no full forward over it is needed.
        """
        if cache.placers is None:
            return decoder_steps.prefill_rows(self, ids, cache, rows)
        # varying patches: each row's prompt laid out in its grid
        for grid, row in grid_prompts(ids, rows, cache.placers, self.patch_sizes[-1], self.units[0]):
            decoder_steps.prefill_rows(self, grid, cache, row)

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor, cache: DecoderCache) -> torch.Tensor:
        """Consume one token per row, ``tokens: (B,)``; return the next token's logits (B, V)."""
        return decoder_steps.step(self, tokens, cache)
