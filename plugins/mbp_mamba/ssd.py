"""The Mamba-2 state-space duality (SSD) scan in plain PyTorch: chunked, and a sequential reference.

Legend: B batch, L length, H heads, P head width, N state width, C chunks, T chunk length.
Per head: S_t = exp(dt_t A) S_{t-1} + dt_t x_t B_t^T,  y_t = S_t C_t.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class DecayedScores(torch.autograd.Function):
    """``scores[..., r, l, s] = cb[..., l, s] * exp(cum[..., r, l] - cum[..., r, s])`` for s <= l, else 0:
    inside a chunk, how much input s reaches output l (C_l . B_s, decayed from s to l) for each head r
    of a group. ``cb: (..., T, T)``, ``cum: (..., R, T)`` (cumulative log-decay); returns (..., R, T, T).

    The backward is written out: with W = grad * scores, d/dcum_t is W's row t summed minus its column t
    summed, and d/dcb sums grad * decay over the heads. Autograd through the difference, the causal mask,
    the exponential and the broadcast product made twice as many passes over these (T x T) tensors,
    the bulk of the scan's elementwise work."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, cb: torch.Tensor, cum: torch.Tensor
    ) -> torch.Tensor:
        t = cum.shape[-1]
        causal = torch.ones(t, t, dtype=torch.bool, device=cum.device).tril()
        decay = torch.exp((cum[..., :, None] - cum[..., None, :]).masked_fill_(~causal, float("-inf")))
        ctx.save_for_backward(cb, decay)
        return cb.unsqueeze(-3) * decay

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cb, decay = ctx.saved_tensors  # type: ignore[attr-defined]
        decayed = grad * decay
        grad_cb = decayed.sum(-3).to(cb.dtype)
        weighted = decayed.mul_(cb.unsqueeze(-3))  # grad * scores
        return grad_cb, weighted.sum(-1) - weighted.sum(-2)


def ssd_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    chunk: int,
    initial: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The scan in chunks: quadratic inside a chunk, recurrent across chunks.

    Args:
        x: (B, L, H, P) inputs. dt: (B, L, H) positive steps. a: (H,) negative decay rates.
        b, c: (B, L, G, N) input and output projections, shared by the H / G heads of each of G groups
            (G = H: one per head). chunk: T.
        initial: (B, H, P, N) state before the sequence, or None for zeros.

    Returns:
        y (B, L, H, P) and the final state (B, H, P, N). Any L works: the tail chunk is zero-padded,
        which leaves the final state untouched (zero input, zero decay).

    Written as batched matrix products over (B, C, G, H / G) with C.B^T made once per group: as one
    four-operand einsum over heads it spent most of a bf16 step on permuted copies and broadcast
    products, and made the group's C.B^T once for each of its heads (16 times in the registry's
    Mamba stage).
    """
    batch, length, heads, width = x.shape
    groups, state_width = b.shape[-2], b.shape[-1]
    per_group = heads // groups
    pad = -length % chunk
    n_chunks = (length + pad) // chunk

    def chunked(t: torch.Tensor) -> torch.Tensor:  # (B, L, G, ...) -> (B, C, G, ..., T, last)
        t = F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)).unflatten(1, (n_chunks, chunk))
        return t.movedim(2, -2) if t.dim() == 5 else t.permute(0, 1, 3, 4, 2, 5)

    xs = chunked((x * dt[..., None]).unflatten(2, (groups, per_group)))  # (B, C, G, R, T, P)
    bs, cs = chunked(b), chunked(c)  # (B, C, G, T, N)
    da = F.pad(dt * a, (0, 0, 0, pad)).unflatten(1, (n_chunks, chunk))  # (B, C, T, H)
    da = da.unflatten(3, (groups, per_group)).permute(0, 1, 3, 4, 2)  # (B, C, G, R, T)
    cum = torch.cumsum(da, dim=-1)
    # inside each chunk: y_l = sum_{s<=l} (C_l . B_s) exp(sum da over (s, l]) x_s
    scores = DecayedScores.apply(cs @ bs.transpose(-1, -2), cum)  # (B, C, G, R, T, T)
    y = scores @ xs
    # the state each chunk leaves behind, from its own inputs only: sum_l exp(da over (l, end]) x_l B_l^T
    to_end = torch.exp(cum[..., -1:] - cum)  # (B, C, G, R, T)
    chunk_states = (xs * to_end[..., None]).transpose(-1, -2) @ bs.unsqueeze(3)  # (B, C, G, R, P, N)
    state = (x.new_zeros(batch, heads, width, state_width) if initial is None else initial).unflatten(
        1, (groups, per_group)
    )
    states, state = _carry_states(state, torch.exp(cum[..., -1]), chunk_states)
    y = y + (cs.unsqueeze(3) @ states.transpose(-1, -2)) * torch.exp(cum)[..., None]
    y = y.permute(0, 1, 4, 2, 3, 5).reshape(batch, n_chunks * chunk, heads, width)[:, :length]
    return y, state.flatten(1, 2)


def _carry_states(
    state: torch.Tensor, chunk_decay: torch.Tensor, chunk_states: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The state entering each chunk (B, C, G, R, P, N) and the one after the last (B, G, R, P, N), from
    the state before the first (B, G, R, P, N), each chunk's decay over its length (B, C, G, R) and the
    state each chunk leaves from its own inputs (B, C, G, R, P, N)."""
    entering = []
    for k in range(chunk_states.shape[1]):
        entering.append(state)
        state = state * chunk_decay[:, k, ..., None, None] + chunk_states[:, k]
    return torch.stack(entering, dim=1), state


def ssd_sequential(
    x: torch.Tensor,
    dt: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    initial: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The recurrence one position at a time: the reference the chunked scan must equal."""
    batch, length, heads, width = x.shape
    b, c = (t.repeat_interleave(heads // t.shape[-2], dim=-2) for t in (b, c))  # groups to heads
    state = initial if initial is not None else x.new_zeros(batch, heads, width, b.shape[-1])
    ys = []
    for t in range(length):
        state = (
            state * torch.exp(dt[:, t] * a)[..., None, None]
            + (dt[:, t, :, None] * x[:, t])[..., None] * b[:, t, :, None, :]
        )
        ys.append(torch.einsum("bhpn,bhn->bhp", state, c[:, t]))
    return torch.stack(ys, dim=1), state
