"""A pre-norm causal Transformer with a KV cache whose rows advance independently.

Legend: B batch, L length, D width, H heads, K head width, T cache capacity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from mbp.api import Dropout, KVPlan, KVPlanner, RMSNorm, dropout, small_attention, small_tensor_ops
from pydantic import BaseModel, ConfigDict, Field
from torch import nn


class TransformerParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    heads: int = Field(default=4, gt=0)
    mlp_ratio: float = Field(default=4.0, gt=0)
    mlp: Literal["swiglu", "gelu"] = "swiglu"
    dropout: float = Field(default=0.0, ge=0, lt=1)
    """On the residual branches, in the MLP and, unless ``attention_dropout`` is set, on attention
    probabilities (a head's default fills it in: ``HeadDefaults.dropout``)."""
    # unset: the same as ``dropout``. At the answer heads' 0.1, none on attention lowers held-out loss on
    # the context (letter glyphs, three seeds: 1.688/1.679/1.696 against 1.712/1.705/1.713 bits per byte)
    # but raises the answers' loss in 3 of 4 runs and lowers accuracy on the whole (spoken letters 0.891
    # against 0.921, spoken digits 0.970 against 0.976, letter glyphs 0.994/0.980/0.971 against
    # 0.986/0.981/0.984). 0 makes a CPU step 1.06x faster (SDPA's fused kernel), for runs where
    # overfitting is not the risk
    attention_dropout: float | None = Field(
        default=None, ge=0, lt=1, description="on attention probabilities; unset: dropout"
    )
    rope_base: float = Field(default=10000.0, gt=0)


def rotations(positions: torch.Tensor, head_dim: int, base: float, dtype: torch.dtype) -> torch.Tensor:
    """Unit complex numbers ``exp(i * position * freq)``: (..., K/2) for ``positions: (...)``."""
    half = head_dim // 2
    freqs = base ** (-torch.arange(half, device=positions.device, dtype=torch.float64) / half)
    angles = positions.to(torch.float64)[..., None] * freqs
    turns = torch.polar(torch.ones_like(angles), angles)
    return turns if dtype == torch.float64 else turns.to(torch.complex64)


def rotary(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs of ``x: (B, L, H, K)`` by ``turns: (B or 1, L, 1, K/2)``: one complex product."""
    if x.requires_grad and torch.is_grad_enabled():
        return Rotary.apply(x, turns)
    return _rotate(x, turns)


def _rotate(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    real = torch.float64 if x.dtype == torch.float64 else torch.float32
    pairs = torch.view_as_complex(x.to(real).unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * turns).flatten(-2).to(x.dtype)


class Rotary(torch.autograd.Function):
    """``_rotate`` whose backward is the opposite rotation of the gradient: autograd through the complex
    product and the dtype casts around it took 2.3x as long (a bf16 local stage on CPU, 4M elements)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(turns)
        return _rotate(x, turns)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (turns,) = ctx.saved_tensors
        return _rotate(grad, turns.conj()), None


@dataclass(frozen=True)
class StepPlan:
    """What every layer of one generation step shares: computed once per step, not once per layer."""

    kv: KVPlan  # where each row writes and what it sees
    turns: torch.Tensor  # (B, 2, 1, K/2) query (scaled) and key rotations at each row's position


class KVCache:
    """Keys and values per layer, (B, H, T, K), with a fill length per row."""

    def __init__(
        self,
        layers: int,
        batch: int,
        heads: int,
        capacity: int,
        head_dim: int,
        like: torch.Tensor,
        rope_base: float,
    ):
        shape = (batch, heads, capacity, head_dim)
        self.keys = [like.new_zeros(shape) for _ in range(layers)]
        self.values = [like.new_zeros(shape) for _ in range(layers)]
        self.lengths = torch.zeros(batch, dtype=torch.long, device=like.device)
        self.batch = batch
        self.capacity = capacity
        # every position's rotation, looked up once per step for all layers: (T, 2, K/2), the query's
        # pre-multiplied by attention's 1/sqrt(K) so that steps need not scale the scores
        turns = rotations(torch.arange(capacity, device=like.device), head_dim, rope_base, like.dtype)
        self.turns = torch.stack((turns * head_dim**-0.5, turns), dim=1)
        self.planner = KVPlanner(batch, capacity, like.device)

    def plan(self, active: torch.Tensor) -> StepPlan:
        kv = self.planner.plan(self.lengths, active)
        return StepPlan(kv, self.turns[kv.slot][:, :, None, :])

    def reset(self, rows: torch.Tensor) -> None:
        self.lengths = torch.where(rows, torch.zeros_like(self.lengths), self.lengths)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float, rope_base: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"transformer width {dim} is not divisible by heads={heads}")
        self.heads, self.head_dim, self.dropout, self.rope_base = heads, dim // heads, dropout, rope_base
        if self.head_dim % 2:
            raise ValueError(
                f"rotary positions need an even head width, got {self.head_dim} (width {dim} / {heads} heads)"
            )
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self._cache_key: tuple | None = None
        self._cache = torch.empty(0)

    def _split(self, x: torch.Tensor, turns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries and keys rotated by ``turns``, and values; each (B, H, L, K)."""
        b, length, _ = x.shape
        qkv = self.qkv(x).view(b, length, 3, self.heads, self.head_dim)
        # queries and keys rotate together; split and unbind, not indexing, whose backward zero-fills
        # the whole fused tensor once per part
        qk, v = qkv.split([2, 1], dim=2)
        q, k = rotary(qk, turns).unbind(2)
        v = v.squeeze(2)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def _turns(self, length: int, like: torch.Tensor) -> torch.Tensor:
        """Rotations of positions 0..length-1 for queries and keys, (1, L, 2, 1, K/2), kept while length,
        device and dtype hold. The queries' are pre-multiplied by attention's 1/sqrt(K), as the KV
        cache's are: a query-sized pass (and its backward) fewer, and attention runs at scale 1."""
        key = (length, like.device, like.dtype)
        if self._cache_key != key:
            # made outside inference mode even when generation asks first: an inference tensor, once
            # kept, could never be saved for backward by a later training forward at this length
            with torch.inference_mode(False):
                positions = torch.arange(length, device=like.device)[None]
                turns = rotations(positions, self.head_dim, self.rope_base, like.dtype)[:, :, None, None, :]
                turns = torch.cat((turns * self.head_dim**-0.5, turns), dim=2)
            self._cache_key = key
            self._cache = turns
        return self._cache

    def _merge(self, y: torch.Tensor) -> torch.Tensor:
        b, _, length, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(b, length, -1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Causal self-attention; ``mask: (B, 1, L, L)`` bool, when given, is the whole visibility."""
        q, k, v = self._split(x, self._turns(x.shape[1], x))
        drop = self.dropout if self.training else 0.0
        if x.device.type == "cpu" and (drop > 0 or explicit_is_faster(q)):
            return self._merge(explicit_attention(q, k, v, mask, drop, scale=1.0))
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None, dropout_p=drop, scale=1.0
        )
        return self._merge(y)

    def prefill(self, x: torch.Tensor, cache: KVCache, layer: int, rows: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(x, self._turns(x.shape[1], x))
        keys, values = cache.keys[layer], cache.values[layer]
        keys[rows, :, : x.shape[1]], values[rows, :, : x.shape[1]] = k.to(keys.dtype), v.to(values.dtype)
        return self._merge(F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0))

    def step(self, x: torch.Tensor, cache: KVCache, layer: int, plan: StepPlan) -> torch.Tensor:
        """One position per row, ``x: (B, D)``.

        Written for (B, D) tensors, where fixed per-op costs dominate: 2-D products instead of 3-D
        ``Linear`` calls, and attention over a short cache as a broadcast product instead of SDPA.
        """
        b = x.shape[0]
        qkv = F.linear(x, self.qkv.weight, self.qkv.bias).view(b, 3, self.heads, self.head_dim)
        q, k = rotary(qkv[:, :2], plan.turns).unbind(1)  # (B, H, K), q already scaled by 1/sqrt(K)
        keys, values = cache.keys[layer], cache.values[layer]
        k, v = k.to(keys.dtype), qkv[:, 2].to(values.dtype)  # bf16 under autocast; the cache's dtype kept
        kv = plan.kv
        kv.write(keys, k)
        kv.write(values, v)
        keys, values = keys[:, :, : kv.span], values[:, :, : kv.span]
        if small_attention(keys):
            scores = (q[:, :, None] * keys).sum(-1)  # (B, H, S)
            if kv.visible is not None:
                scores = scores.masked_fill(~kv.visible[:, None], float("-inf"))
            y = (torch.softmax(scores, -1)[..., None] * values).sum(-2)
        else:
            mask = None if kv.visible is None else kv.visible[:, None, None]
            y = F.scaled_dot_product_attention(q[:, :, None], keys, values, attn_mask=mask, scale=1.0)
            y = y[:, :, 0]
        return F.linear(y.reshape(b, -1), self.out.weight, self.out.bias)


EXPLICIT_BF16_LONGEST = 160
"""On CPU in bf16, sequences up to this long attend by ``explicit_attention``. SDPA's fused CPU kernel
is slow backward in bf16 on short sequences: forward+backward of a local stage's attention (256
sequences x 4 heads x 65 positions x 32) took 87 ms against 17 ms explicit, on an AMX CPU with 2
threads; at 192 positions the two were 56 and 43-50 ms, and from 256 on the fused kernel wins (68 against
146 ms). In fp32 the fused kernel is as fast or faster at every length measured, and exact."""


def explicit_is_faster(q: torch.Tensor) -> bool:
    return q.dtype == torch.bfloat16 and q.shape[-2] <= EXPLICIT_BF16_LONGEST


def explicit_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    p: float,
    scale: float | None = None,
) -> torch.Tensor:
    """Causal attention (or ``mask``'s) over ``(B, H, L, K)`` as products and a softmax, with dropout
    ``p`` on the probabilities; ``scale`` multiplies the scores (None: 1/sqrt(K), as SDPA). SDPA's own
    dropout path is unfused too, but ``mbp.api.dropout``'s mask is cheaper: torch's CPU mask for the
    probabilities took 13 of a classifier step's 180 ms.

    In fp32 the softmax runs in fp32. In bf16 the scores stay bf16 and the softmax writes bf16 (it
    computes in fp32 inside), as SDPA's math path does: an fp32 softmax and its casts made this path
    2x slower at a local stage's shapes."""
    if scale is None:
        scale = q.shape[-1] ** -0.5
    scores = (q if scale == 1.0 else q * scale) @ k.transpose(-2, -1)
    if mask is None:
        length = q.shape[-2]
        mask = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
    if scores.dtype == torch.bfloat16:
        probabilities = torch.softmax(scores.masked_fill_(~mask, float("-inf")), dim=-1)
    else:
        probabilities = torch.softmax(scores.float().masked_fill(~mask, float("-inf")), dim=-1).to(v.dtype)
    return dropout(probabilities, p) @ v


class MLP(nn.Module):
    def __init__(self, dim: int, ratio: float, kind: str, dropout: float) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.gated = kind == "swiglu"
        self.up = nn.Linear(dim, 2 * hidden if self.gated else hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        if self.gated:
            gate, value = h.chunk(2, dim=-1)
            h = F.silu(gate) * value
        else:
            h = F.gelu(h)
        return self.drop(self.down(h))

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (B, D)``: the forward pass with 2-D products (no dropout: generation runs in eval).
        Biases pass through (None today) so that a step can never drift from ``forward``."""
        h = F.linear(x, self.up.weight, self.up.bias)
        if self.gated:
            gate, value = h.chunk(2, dim=-1)
            h = F.silu(gate) * value
        else:
            h = small_tensor_ops.gelu(h) if h.numel() <= small_tensor_ops.SMALL else F.gelu(h)
        return F.linear(h, self.down.weight, self.down.bias)


class Layer(nn.Module):
    def __init__(self, dim: int, params: TransformerParams) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(dim)
        attention = params.dropout if params.attention_dropout is None else params.attention_dropout
        self.attn = Attention(dim, params.heads, attention, params.rope_base)
        self.mlp_norm = RMSNorm(dim)
        self.mlp = MLP(dim, params.mlp_ratio, params.mlp, params.dropout)
        self.drop = Dropout(params.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.attn_norm(x), mask))
        return x + self.mlp(self.mlp_norm(x))

    def prefill(self, x: torch.Tensor, cache: KVCache, index: int, rows: torch.Tensor) -> torch.Tensor:
        """``forward`` over ``x: (R, L, D)``, also writing layer ``index``'s keys and values of ``rows``."""
        x = x + self.attn.prefill(self.attn_norm(x), cache, index, rows)
        return x + self.mlp(self.mlp_norm(x))

    def step(self, x: torch.Tensor, cache: KVCache, index: int, plan: StepPlan) -> torch.Tensor:
        """``forward`` for one position per row, ``x: (B, D)``."""
        x = x + self.attn.step(self.attn_norm(x), cache, index, plan)
        return x + self.mlp.step(self.mlp_norm(x))


class Transformer(nn.Module):
    """``layers`` pre-norm blocks and a final RMSNorm; see :mod:`mbp.model.backbone` for the protocol."""

    def __init__(self, params: TransformerParams, *, dim: int, layers: int) -> None:
        super().__init__()
        self.params = params
        self.layers = nn.ModuleList(Layer(dim, params) for _ in range(layers))
        self.norm = RMSNorm(dim)

    def _blocks(self) -> list[Layer]:
        return cast(list[Layer], list(self.layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self._blocks():
            x = layer(x)
        return self.norm(x)

    def forward_segments(self, x: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
        """``forward`` with attention kept inside each segment: one mask shared by every layer."""
        length = x.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
        mask = (segments[:, :, None] == segments[:, None, :]) & causal
        for layer in self._blocks():
            x = layer(x, mask[:, None])
        return self.norm(x)

    def allocate_cache(self, batch: int, max_len: int) -> KVCache:
        like = self.norm.weight
        p = self.params
        return KVCache(
            len(self.layers), batch, p.heads, max_len, like.shape[0] // p.heads, like.detach(), p.rope_base
        )

    def prefill(self, x: torch.Tensor, cache: KVCache, rows: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self._blocks()):
            x = layer.prefill(x, cache, index, rows)
        cache.lengths[rows] = x.shape[1]
        return self.norm(x)

    def step(self, x: torch.Tensor, cache: KVCache, active: torch.Tensor) -> torch.Tensor:
        plan = cache.plan(active)
        for index, layer in enumerate(self._blocks()):
            x = layer.step(x, cache, index, plan)
        cache.lengths = cache.lengths + active.long()
        return self.norm(x)
