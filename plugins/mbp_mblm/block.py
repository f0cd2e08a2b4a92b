"""The ``mblm-transformer`` backbone: mblm 0.4.2's ``TransformerBlock`` (MEGABYTE's decoder), computed the
same way, with a cache for generation.

Per layer: ``x = attn(shift(x)) + x; x = ff(shift(x)) + x``, then a final norm, where ``shift`` is
MEGABYTE's token shift (the second half of the channels comes from the previous position, zeros at
position 0), attention is pre-normed with separate ``to_q``/``to_kv`` projections and rotate-half rotary
embeddings over positions 0..L-1, the feed-forward is ``norm -> Linear -> GELU -> Linear`` with biases, and
every norm is MEGABYTE's RMSNorm (``x / max(|x| / sqrt(D), 1e-8) * g``). mblm's optional per-stage
positional embedding (``pos_emb_type``) is applied here to positions 1.. (position 0 is the stage's start
token, which mblm never gives a position).

Legend: B batch, L length, D width, H heads, K head width, T cache capacity.
"""

from __future__ import annotations

from typing import Literal, cast

import torch
import torch.nn.functional as F
from mbp.api import KVPlan, KVPlanner, small_attention
from mbp.api import small_tensor_ops as small
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

Turns = tuple[torch.Tensor, torch.Tensor]
"""One step's rotary cosines and sines, (B, K) each."""


class MblmTransformerParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    heads: int = Field(default=8, gt=0, description="mblm attn_num_heads")
    head_dim: int = Field(
        default=64, gt=0, description="mblm attn_head_dims (heads * head_dim may differ from D)"
    )
    rotary: bool = Field(default=True, description="mblm attn_use_rot_embs")
    ff_mult: int = Field(default=2, gt=0, description="mblm ff_multiplier")
    attn_dropout: float = Field(default=0.0, ge=0, lt=1)
    ff_dropout: float = Field(default=0.0, ge=0, lt=1)
    pos_emb: Literal["fixed", "rope"] | None = Field(default=None, description="mblm pos_emb_type")
    max_positions: int | None = Field(default=None, gt=0, description="rows of the fixed position table")

    @model_validator(mode="after")
    def _table_size(self) -> MblmTransformerParams:
        if self.pos_emb == "fixed" and self.max_positions is None:
            raise ValueError("pos_emb 'fixed' needs max_positions (the stage's seq_len)")
        if self.rotary and self.head_dim % 2:
            raise ValueError(f"rotary attention needs an even head_dim, got {self.head_dim}")
        return self


class MegabyteRMSNorm(nn.Module):
    """MEGABYTE's RMSNorm: the norm's eps clamps the RMS itself (1e-8), unlike torch's ``rms_norm``."""

    def __init__(self, dim: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.scale, self.eps = dim**-0.5, eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True) * self.scale
        return x / norm.clamp(min=self.eps) * self.weight


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope_interleaved(x: torch.Tensor, positions: torch.Tensor, base: float = 10_000.0) -> torch.Tensor:
    """mblm's ``RoPE`` positional embedding over the whole width (one head, adjacent pairs), in float32 as
    mblm computes it: ``x: (..., L, D)``, ``positions: (L,)`` or (B,) broadcasting against x[..., 0]."""
    dim = x.shape[-1]
    theta = 1.0 / (base ** (torch.arange(0, dim, 2, device=x.device)[: dim // 2].float() / dim))
    angles = positions.float()[:, None] * theta  # (L, D/2)
    cos, sin = angles.cos(), angles.sin()
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    out = torch.stack(
        (pairs[..., 0] * cos - pairs[..., 1] * sin, pairs[..., 1] * cos + pairs[..., 0] * sin), dim=-1
    )
    return out.flatten(-2).type_as(x)


class MblmCache:
    """Per layer: keys and values (B, H, T, K) and the previous position's second channel half before
    attention and before the feed-forward (B, D - ceil(D/2)), for the token shift; a length per row."""

    def __init__(self, model: MblmTransformer, batch: int, capacity: int) -> None:
        like = model.norm.weight.detach()
        p, dim, layers = model.params, like.shape[0], len(model.layers)
        shape = (batch, p.heads, capacity, p.head_dim)
        self.keys = [like.new_zeros(shape) for _ in range(layers)]
        self.values = [like.new_zeros(shape) for _ in range(layers)]
        half = dim - (dim + 1) // 2
        self.shift_attn = [like.new_zeros(batch, half) for _ in range(layers)]
        self.shift_ff = [like.new_zeros(batch, half) for _ in range(layers)]
        self.lengths = torch.zeros(batch, dtype=torch.long, device=like.device)
        self.batch, self.capacity = batch, capacity
        self.planner = KVPlanner(batch, capacity, like.device)

    def reset(self, rows: torch.Tensor) -> None:
        self.lengths = torch.where(rows, torch.zeros_like(self.lengths), self.lengths)
        for states in (self.shift_attn, self.shift_ff):
            for index, state in enumerate(states):
                states[index] = torch.where(rows[:, None], torch.zeros_like(state), state)

    @staticmethod
    def shift(x: torch.Tensor, states: list[torch.Tensor], index: int, plan: KVPlan) -> torch.Tensor:
        """``token_shift`` for one position ``x: (B, D)``, keeping this position's second half in
        ``states[index]`` for the next (only for the rows that advance)."""
        previous = states[index]
        current = x[:, x.shape[-1] - previous.shape[-1] :]
        current = current.to(previous.dtype)
        states[index] = (
            current if plan.active is None else torch.where(plan.active[:, None], current, previous)
        )
        return shift_step(x, previous)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.head_dim, self.dropout = heads, head_dim, dropout
        inner = heads * head_dim
        self.norm = MegabyteRMSNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def qkv(self, x: torch.Tensor, angles: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """``x: (B, L, D)`` -> q, k, v each (B, H, L, K); q and k rotated by ``angles: (L or B, K)``."""
        x = self.norm(x)
        k, v = self.to_kv(x).chunk(2, dim=-1)
        q, k, v = (t.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2) for t in (self.to_q(x), k, v))
        if angles is not None:
            cos, sin = angles.cos(), angles.sin()
            q, k = (t * cos + rotate_half(t) * sin for t in (q, k))
        return q, k, v

    def merge(self, y: torch.Tensor) -> torch.Tensor:
        return self.to_out(y.transpose(1, 2).flatten(-2))

    def step(
        self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, plan: KVPlan, turns: Turns | None
    ) -> torch.Tensor:
        """One position per row, ``x: (B, D)`` (token-shifted): writes its key and value into ``keys`` and
        ``values`` (B, H, T, K) at the plan's slots and attends over them. 2-D products on the weights
        instead of module calls: at (B, D) fixed per-op costs dominate."""
        h = self.norm(x)
        q = F.linear(h, self.to_q.weight).view(len(h), self.heads, self.head_dim)
        k, v = F.linear(h, self.to_kv.weight).view(len(h), 2, self.heads, self.head_dim).unbind(1)
        if turns is not None:
            cos, sin = turns[0][:, None], turns[1][:, None]
            q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = k.to(keys.dtype), v.to(values.dtype)  # bf16 under autocast; the cache's dtype kept
        plan.write(keys, k)
        plan.write(values, v)
        y = attend(q, keys[:, :, : plan.span], values[:, :, : plan.span], plan.visible)
        return F.linear(y.flatten(1), self.to_out.weight)


def attend(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, visible: torch.Tensor | None
) -> torch.Tensor:
    """One query per row, ``q: (B, H, K)``, over ``keys/values: (B, H, S, K)``; returns (B, H, K)."""
    scale = q.shape[-1] ** -0.5
    if small_attention(keys):
        scores = (q[:, :, None] * keys).sum(-1) * scale  # (B, H, S)
        if visible is not None:
            scores = scores.masked_fill(~visible[:, None], float("-inf"))
        return (torch.softmax(scores, -1)[..., None] * values).sum(-2)
    mask = None if visible is None else visible[:, None, None]
    return F.scaled_dot_product_attention(q[:, :, None], keys, values, attn_mask=mask)[:, :, 0]


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int, dropout: float) -> None:
        super().__init__()
        self.norm = MegabyteRMSNorm(dim)
        self.up = nn.Linear(dim, dim * mult)
        self.down = nn.Linear(dim * mult, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.drop(F.gelu(self.up(self.norm(x)))))

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` for ``x: (B, D)`` with 2-D products (no dropout: generation runs in eval)."""
        h = F.linear(self.norm(x), self.up.weight, self.up.bias)
        h = small.gelu(h) if h.numel() <= small.SMALL else F.gelu(h)
        return F.linear(h, self.down.weight, self.down.bias)


class Layer(nn.Module):
    """``x = attn(shift(x)) + x; x = ff(shift(x)) + x``."""

    def __init__(self, dim: int, p: MblmTransformerParams) -> None:
        super().__init__()
        self.attn = Attention(dim, p.heads, p.head_dim, p.attn_dropout)
        self.ff = FeedForward(dim, p.ff_mult, p.ff_dropout)

    def forward(
        self,
        x: torch.Tensor,
        angles: torch.Tensor | None,
        cache: MblmCache | None = None,
        index: int = 0,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The layer over ``x: (B, L, D)``, rotating queries and keys by ``angles: (L, K)``; with ``cache``,
        also keeps layer ``index``'s keys, values and shift states for ``rows: (B,)`` of it."""
        half = x.shape[-1] // 2
        q, k, v = self.attn.qkv(token_shift(x), None if angles is None else angles.to(x.dtype))
        if cache is not None:
            keys, values, length = cache.keys[index], cache.values[index], x.shape[1]
            keys[rows, :, :length], values[rows, :, :length] = k.to(keys.dtype), v.to(values.dtype)
            cache.shift_attn[index][rows] = x[:, -1, x.shape[-1] - half :].to(keys.dtype)  # bf16: cast
        drop = self.attn.dropout if self.training else 0.0
        x = self.attn.merge(F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=drop)) + x
        if cache is not None:
            cache.shift_ff[index][rows] = x[:, -1, x.shape[-1] - half :].to(cache.keys[index].dtype)
        return self.ff(token_shift(x)) + x

    def step(
        self, x: torch.Tensor, cache: MblmCache, index: int, plan: KVPlan, turns: Turns | None
    ) -> torch.Tensor:
        """``forward`` for one position per row, ``x: (B, D)``, with layer ``index``'s states in ``cache``;
        rows the plan leaves out keep their shift states."""
        shifted = cache.shift(x, cache.shift_attn, index, plan)
        x = self.attn.step(shifted, cache.keys[index], cache.values[index], plan, turns) + x
        return self.ff.step(cache.shift(x, cache.shift_ff, index, plan)) + x


def token_shift(x: torch.Tensor) -> torch.Tensor:
    """``x: (B, L, D)``: the second half of the channels moved one position later (zeros first)."""
    keep, shift = x.chunk(2, dim=-1)
    return torch.cat((keep, F.pad(shift, (0, 0, 1, -1))), dim=-1)


def shift_step(x: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """``token_shift`` for one position: ``x: (B, D)`` with the previous position's second half."""
    return torch.cat((x[:, : x.shape[-1] - previous.shape[-1]], previous), dim=-1)


class MblmTransformer(nn.Module):
    """``layers`` MEGABYTE decoder layers and a final norm; see :mod:`mbp.model.backbone`."""

    inv_freq: torch.Tensor

    def __init__(self, params: MblmTransformerParams, *, dim: int, layers: int) -> None:
        super().__init__()
        self.params = p = params
        self.layers = nn.ModuleList(Layer(dim, p) for _ in range(layers))
        self.norm = MegabyteRMSNorm(dim)
        self.pos = nn.Embedding(p.max_positions, dim) if p.pos_emb == "fixed" and p.max_positions else None
        # MEGABYTE's RotaryEmbedding(head_dim): float32 frequencies, duplicated for rotate-half
        inv_freq = 1.0 / (10_000 ** (torch.arange(0, p.head_dim, 2).float() / p.head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def _blocks(self) -> list[Layer]:
        return cast(list[Layer], list(self.layers))

    def _angles(self, positions: torch.Tensor) -> torch.Tensor | None:
        if not self.params.rotary:
            return None
        freqs = positions.to(self.inv_freq.dtype)[:, None] * self.inv_freq
        return torch.cat((freqs, freqs), dim=-1)

    def _positioned(self, x: torch.Tensor) -> torch.Tensor:
        """mblm's stage positional embedding on positions 1.. of ``x: (B, L, D)`` (0 is the start token)."""
        if self.params.pos_emb is None or x.shape[1] < 2:
            return x
        tokens = x[:, 1:]
        if self.pos is not None:
            if tokens.shape[1] > self.pos.num_embeddings:
                raise ValueError(
                    f"{tokens.shape[1]} positions exceed the fixed table of {self.pos.num_embeddings}"
                )
            tokens = tokens + self.pos.weight[: tokens.shape[1]]
        else:
            tokens = rope_interleaved(tokens, torch.arange(tokens.shape[1], device=x.device))
        return torch.cat((x[:, :1], tokens), dim=1)

    def _run(self, x: torch.Tensor, cache: MblmCache | None, rows: torch.Tensor | None) -> torch.Tensor:
        x = self._positioned(x)
        length = x.shape[1]
        angles = self._angles(torch.arange(length, device=x.device))
        for index, layer in enumerate(self._blocks()):
            x = layer(x, angles, cache, index, rows)
        if cache is not None:
            cache.lengths[rows] = length
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, None, None)

    def allocate_cache(self, batch: int, max_len: int) -> MblmCache:
        return MblmCache(self, batch, max_len)

    def prefill(self, x: torch.Tensor, cache: MblmCache, rows: torch.Tensor) -> torch.Tensor:
        if x.shape[1] > cache.capacity:
            raise RuntimeError(f"cache capacity {cache.capacity} exceeded")
        return self._run(x, cache, rows)

    def _position_step(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """The positional embedding of one step, ``x: (B, D)`` at positions ``pos: (B,)``."""
        if self.params.pos_emb is None:
            return x
        index = (pos - 1).clamp(min=0)
        if self.pos is not None:
            moved = x + self.pos.weight[index.clamp(max=self.pos.num_embeddings - 1)]
        else:
            moved = rope_interleaved(x, index)
        return torch.where((pos > 0)[:, None], moved, x)

    def step(self, x: torch.Tensor, cache: MblmCache, active: torch.Tensor) -> torch.Tensor:
        """One position per row, ``x: (B, D)``: one plan of cache slots and one rotation per step, shared
        by every layer."""
        pos = cache.lengths
        plan = cache.planner.plan(pos, active)
        x = self._position_step(x, pos)
        angles = self._angles(plan.slot)
        turns = None if angles is None else (angles.cos().to(x.dtype), angles.sin().to(x.dtype))
        for index, layer in enumerate(self._blocks()):
            x = layer.step(x, cache, index, plan, turns)
        cache.lengths = cache.lengths + active.long()
        return self.norm(x)
