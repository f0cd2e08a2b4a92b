"""The Mamba-2 state-space duality (SSD) scan in plain PyTorch: chunked, and a sequential reference.

Legend: B batch, L length, H heads, P head width, N state width, C chunks, T chunk length.
Per head: S_t = exp(dt_t A) S_{t-1} + dt_t x_t B_t^T,  y_t = S_t C_t.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def segment_sums(a: torch.Tensor) -> torch.Tensor:
    """``a: (..., T) -> (..., T, T)`` with ``[i, j] = a[j+1] + ... + a[i]`` for j <= i, else -inf."""
    t = a.shape[-1]
    cum = torch.cumsum(a, dim=-1)
    sums = cum[..., :, None] - cum[..., None, :]
    causal = torch.ones(t, t, dtype=torch.bool, device=a.device).tril()
    return sums.masked_fill(~causal, float("-inf"))


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
        b, c: (B, L, H, N) input and output projections. chunk: T.
        initial: (B, H, P, N) state before the sequence, or None for zeros.

    Returns:
        y (B, L, H, P) and the final state (B, H, P, N). Any L works: the tail chunk is zero-padded,
        which leaves the final state untouched (zero input, zero decay).
    """
    batch, length, heads, width = x.shape
    pad = -length % chunk
    xs = F.pad(x * dt[..., None], (0, 0, 0, 0, 0, pad))
    da = F.pad(dt * a, (0, 0, 0, pad))  # (B, L', H)
    bs, cs = F.pad(b, (0, 0, 0, 0, 0, pad)), F.pad(c, (0, 0, 0, 0, 0, pad))
    n_chunks = xs.shape[1] // chunk
    xs = xs.view(batch, n_chunks, chunk, heads, width)
    bs = bs.view(batch, n_chunks, chunk, heads, -1)
    cs = cs.view(batch, n_chunks, chunk, heads, -1)
    da = da.view(batch, n_chunks, chunk, heads).permute(0, 3, 1, 2)  # (B, H, C, T)
    cum = torch.cumsum(da, dim=-1)
    # inside each chunk: y_l = sum_{s<=l} C_l.B_s exp(sum da over (s, l]) x_s
    decay = torch.exp(segment_sums(da))  # (B, H, C, T, T)
    y_diag = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", cs, bs, decay, xs)
    # state each chunk leaves behind, from its own inputs only
    to_end = torch.exp(cum[..., -1:] - cum)  # (B, H, C, T)
    chunk_states = torch.einsum("bclhn,bhcl,bclhp->bchpn", bs, to_end, xs)
    if initial is None:
        initial = x.new_zeros(batch, heads, width, bs.shape[-1])
    # carry states across chunks: state entering chunk k
    chunk_decay = torch.exp(cum[..., -1])  # (B, H, C)
    entering = []
    state = initial
    for k in range(n_chunks):
        entering.append(state)
        state = state * chunk_decay[:, :, k, None, None] + chunk_states[:, k]
    states = torch.stack(entering, dim=1)  # (B, C, H, P, N)
    y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", cs, states, torch.exp(cum))
    y = (y_diag + y_off).reshape(batch, n_chunks * chunk, heads, width)[:, :length]
    return y, state


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
    state = initial if initial is not None else x.new_zeros(batch, heads, width, b.shape[-1])
    ys = []
    for t in range(length):
        state = (
            state * torch.exp(dt[:, t] * a)[..., None, None]
            + (dt[:, t, :, None] * x[:, t])[..., None] * b[:, t, :, None, :]
        )
        ys.append(torch.einsum("bhpn,bhn->bhp", state, c[:, t]))
    return torch.stack(ys, dim=1), state
