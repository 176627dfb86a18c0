"""The scans and the causal conv of Mamba-1 and Mamba-2: pure functions of arrays,
shared by the layers (models/mamba.py) and their sequence-sharded form
(models/mamba_sharding.py).

- `selective_scan` (Mamba-1): h_t = exp(Δ_t A) ⊙ h_t-1 + Δ_t x_t B_t, y_t = C_t·h_t + D x_t,
  A diagonal (D_inner, N). `jax.lax.associative_scan` inside chunks of
  `chunk_size`, `lax.scan` over chunks carrying h, each chunk under
  `jax.checkpoint`: only one chunk's (B, L, D_inner, N) expansion is ever live,
  in the forward and in the backward pass.
- `ssd_scan` (Mamba-2): A = a_h·I per head, so the intra-chunk part is a masked
  matmul (C_t·B_s)·exp(Σ_{s<r≤t} Δ_r a), computed for all chunks at once; only the
  (H, P, N) states the chunks pass on form a recurrence (an associative scan).
- `selective_step` / `ssd_step`: one token, for decoding.
- `causal_conv`: the depthwise causal conv; `segment_starts`: where documents start.

All in float32. Sequence lengths that are not a multiple of `chunk_size` are padded
with Δ = 0 (decay 1, input 0), which carries the state through unchanged. Given
document starts, the state and the conv window reset there (Mamba-1: the decay is
zeroed at a start; Mamba-2: the decay mask also requires "no start between s and t";
conv: taps reaching back across a start are dropped).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

# ------------------------------------------------------------------ helpers
def segment_starts(segment_ids):
    """(B, T) ids -> (B, T) bool, True where a new document starts (never at t = 0:
    the state there is the initial state anyway)."""
    change = segment_ids[:, 1:] != segment_ids[:, :-1]
    return jnp.concatenate([jnp.zeros_like(change[:, :1]), change], axis=1)


def causal_conv(x, w, b, *, history=None, starts=None):
    """Depthwise causal conv. x (B, T, C), w (K, C), b (C,); history (B, K-1, C) are the
    inputs before x (default zeros). starts (B, T) bool: drop taps that reach back
    across a document start. Returns (y (B, T, C), new history (B, K-1, C))."""
    K, T = w.shape[0], x.shape[1]
    if history is None:
        history = jnp.zeros((x.shape[0], K - 1, x.shape[2]), x.dtype)
    xp = jnp.concatenate([history.astype(x.dtype), x], axis=1)          # (B, T + K - 1, C)
    if starts is not None:   # documents seen so far, padded like xp: tap valid iff same count
        count = jnp.cumsum(starts, axis=1)
        count_p = jnp.pad(count, ((0, 0), (K - 1, 0)))
    y = b.astype(x.dtype)
    for j in range(K):       # tap j looks back K - 1 - j steps
        tap = xp[:, j:j + T]
        if starts is not None and j < K - 1:
            tap = tap * (count == count_p[:, j:j + T])[..., None].astype(x.dtype)
        y = y + tap * w[j].astype(x.dtype)
    return y, xp[:, T:]


def _chunk(arrays, length: int, chunk: int):
    """Pad axis 1 of each (B, T, ...) array to a multiple of `chunk` and reshape to
    (T // chunk, B, chunk, ...) for lax.scan. Returns (chunked arrays, pad)."""
    pad = -length % chunk
    out = []
    for a in arrays:
        a = jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))
        a = a.reshape(a.shape[0], -1, chunk, *a.shape[2:])
        out.append(jnp.moveaxis(a, 1, 0))
    return out, pad


def _unchunk(y, length: int):
    """(nc, B, chunk, ...) -> (B, length, ...)."""
    y = jnp.moveaxis(y, 0, 1)
    return y.reshape(y.shape[0], -1, *y.shape[3:])[:, :length]


# ------------------------------------------------------------------ Mamba-1 scan
def selective_scan(x, dt, A, B, C, D, *, h0=None, starts=None, chunk_size: int = 64):
    """Mamba-1 selective scan. x, dt (B, T, Di); A (Di, N), negative; B, C (B, T, N);
    D (Di,); h0 (B, Di, N) initial state. Returns (y (B, T, Di), h_T (B, Di, N))."""
    batch, length, inner = x.shape
    n = A.shape[1]
    h0 = jnp.zeros((batch, inner, n), jnp.float32) if h0 is None else h0
    starts = jnp.zeros((batch, length), bool) if starts is None else starts   # padding: no starts
    chunk = min(chunk_size, length)
    (xc, dtc, Bc, Cc, sc), _ = _chunk((x, dt, B, C, starts), length, chunk)

    @jax.checkpoint     # the backward pass recomputes one chunk at a time
    def one_chunk(h, inputs):
        x_, dt_, B_, C_, s_ = inputs
        decay = jnp.where(s_[..., None, None], 0.0, jnp.exp(dt_[..., None] * A))   # (B, L, Di, N)
        drive = (dt_ * x_)[..., None] * B_[:, :, None, :]
        drive = drive.at[:, 0].add(decay[:, 0] * h)                      # fold the carry in
        combine = lambda l, r: (l[0] * r[0], r[0] * l[1] + r[1])         # noqa: E731  (h ← a h + u)
        _, hs = jax.lax.associative_scan(combine, (decay, drive), axis=1)
        return hs[:, -1], jnp.einsum("bldn,bln->bld", hs, C_)

    h, y = jax.lax.scan(one_chunk, h0, (xc, dtc, Bc, Cc, sc))
    return _unchunk(y, length) + x * D, h


def selective_step(h, x, dt, A, B, C, D):
    """One Mamba-1 step. h (B, Di, N); x, dt (B, Di); B, C (B, N). Returns (y (B, Di), h)."""
    h = jnp.exp(dt[..., None] * A) * h + (dt * x)[..., None] * B[:, None, :]
    return jnp.einsum("bdn,bn->bd", h, C) + x * D, h


# ------------------------------------------------------------------ Mamba-2 (SSD) scan
def ssd_scan(x, dt, a, B, C, D, *, h0=None, starts=None, chunk_size: int = 64):
    """Mamba-2 SSD, chunked. x (B, T, H, P); dt (B, T, H); a (H,), negative; B, C (B, T, N)
    (one group shared by all heads); D (H,); h0 (B, H, P, N).
    Returns (y (B, T, H, P), h_T (B, H, P, N)).

    Every chunk is computed at once (batched matmuls over a leading chunk axis); only
    the (H, P, N) states passed between chunks form a recurrence, a short
    `associative_scan` of elementwise ops. Measured on CPU, forward + backward at
    T = 2048, H = 6, P = 32, N = 16: 55 ms as a `lax.scan` over 64-token chunks (00f1285),
    34-44 ms vectorised at chunk 64, 15-17 ms vectorised at chunk 16.
    """
    batch, length, heads, p = x.shape
    n = B.shape[-1]
    h0 = jnp.zeros((batch, heads, p, n), jnp.float32) if h0 is None else h0
    starts = jnp.zeros((batch, length), bool) if starts is None else starts
    chunk = min(chunk_size, length)
    # Leading axis c = chunk index: x (c, B, L, H, P), dt (c, B, L, H), B/C (c, B, L, N), s (c, B, L).
    (x_, dt_, B_, C_, s_), _ = _chunk((x, dt, B, C, starts), length, chunk)
    causal = jnp.tril(jnp.ones((chunk, chunk), bool))

    cum = jnp.cumsum(dt_ * a, axis=2)                                # log-decay so far in the chunk
    docs = jnp.cumsum(s_, axis=2)                                    # starts seen in the chunk so far
    # Within a chunk, s feeds t iff s <= t and no document starts in (s, t]. Heads go
    # before (t, s): the (t, s) matrices stay contiguous, which makes the backward pass
    # of this part ~20% faster on CPU than with heads last.
    same = (causal & (docs[..., :, None] == docs[..., None, :]))[:, :, None]    # (c, B, 1, t, s)
    cum_h = jnp.moveaxis(cum, -1, 2)                                 # (c, B, H, L)
    gap = cum_h[..., :, None] - cum_h[..., None, :]                  # (c, B, H, t, s)
    decay = jnp.where(same, jnp.exp(jnp.where(same, gap, 0.0)), 0.0)
    weights = (jnp.einsum("cbtn,cbsn->cbts", C_, B_)[:, :, None] * decay
               * jnp.moveaxis(dt_, -1, 2)[..., None, :])
    y = jnp.einsum("cbhts,cbshp->cbthp", weights, x_)

    # Each chunk's own end state: positions of its last document, decayed to its end;
    # and how much of the incoming state survives the chunk (none if a document starts in it).
    last = cum[:, :, -1]                                             # (c, B, H)
    tail = jnp.exp(last[:, :, None] - cum) * (docs == docs[..., -1:])[..., None] * dt_
    local = jnp.einsum("cbsh,cbshp,cbsn->cbhpn", tail, x_, B_)
    keep = (jnp.exp(last) * (docs[..., -1] == 0)[..., None])[..., None, None]
    # h_c = keep_c * h_{c-1} + local_c over the chunks, starting from h0.
    local = local.at[0].add(keep[0] * h0)
    combine = lambda l, r: (l[0] * r[0], r[0] * l[1] + r[1])          # noqa: E731
    _, ends = jax.lax.associative_scan(combine, (keep, local), axis=0)
    incoming = jnp.concatenate([h0[None], ends[:-1]], axis=0)       # the state entering each chunk

    # The incoming state reaches t if no document started in the chunk up to t.
    carry_in = jnp.exp(cum) * (docs == 0)[..., None]                 # (c, B, L, H)
    y = y + jnp.einsum("cbtn,cbhpn->cbthp", C_, incoming) * carry_in[..., None]
    return _unchunk(y, length) + x * D[:, None], ends[-1]


def ssd_step(h, x, dt, a, B, C, D):
    """One Mamba-2 step. h (B, H, P, N); x (B, H, P); dt (B, H); B, C (B, N)."""
    h = h * jnp.exp(dt * a)[..., None, None] + (dt[..., None] * x)[..., None] * B[:, None, None, :]
    return jnp.einsum("bhpn,bn->bhp", h, C) + x * D[:, None], h
