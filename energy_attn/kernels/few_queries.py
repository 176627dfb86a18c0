"""Exact softmax attention for a few queries against many keys (decoding).

A matmul on CPU wants its batch axes in front, so the usual score einsum
"bqhd,bkhd->bhqk" first copies K (and V) into heads-first order: for a 256 MB
KV-cache shard that copy costs more than the attention itself. Here K and V are
read in their own (B, Tk, H_kv·D) layout by two plain matmuls instead:

    scores  = K  @ Q_blockdiag     Q_blockdiag: (H_kv·D, Tq·H), query h's vector in its K/V head's rows
    numer   = Pᵀ @ V               then keep each query head's own K/V head block

The block-diagonal trick multiplies zeros too (flops × H_kv), which is cheap
while Tq·H is small; `choose_implementation` only picks this kernel then.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ..masks import Mask


def _block_diagonal(x, num_kv_heads: int):
    """(B, Tq, H, D) -> (B, H_kv·D, Tq·H): column (q, h) holds x[q, h] in the rows of h's K/V head."""
    b, tq, h, d = x.shape
    groups = x.reshape(b, tq, num_kv_heads, h // num_kv_heads, d)
    eye = jnp.eye(num_kv_heads, dtype=x.dtype)
    blocks = jnp.einsum("bqkgd,kl->bldqkg", groups, eye)
    return blocks.reshape(b, num_kv_heads * d, tq * h)


def _keys_first(pairs):
    """A (B|1, H|1, Tq, Tk) mask or bias block -> (B|1, Tk, Tq, H|1), the score layout here."""
    return pairs.transpose(0, 3, 2, 1)


def few_query_attention(q, k, v, zeta, mask: Mask, block_q=None):
    """q pre-scaled by β. Returns (out (B, Tq, H, Dv), lse (B, H, Tq)); `zeta=None` is a zero source."""
    del block_q                      # one block: every query at once
    b, tq, h, _ = q.shape
    tk, hkv, dv = k.shape[1], k.shape[2], v.shape[-1]
    v_rows = v.reshape(b, tk, hkv * dv)
    s = jnp.einsum("btc,bcn->btn", k.reshape(b, tk, -1), _block_diagonal(q, hkv))
    if zeta is not None:
        s = s + jnp.einsum("btc,bcn->btn", v_rows, _block_diagonal(zeta, hkv))
    s = s.reshape(b, tk, tq, h)
    bias = mask.bias_block(0, tq, 0, tk)
    if bias is not None:
        s = s + _keys_first(jnp.asarray(bias, s.dtype))
    ok = mask.allowed(0, tq, 0, tk, tq, tk)
    if ok is not None:
        s = jnp.where(_keys_first(ok), s, -jnp.inf)
    m = jax.lax.stop_gradient(jnp.max(s, axis=1, keepdims=True))   # shift only; cancels exactly
    m = jnp.where(jnp.isfinite(m), m, 0.0)      # rows that see no key: report zeros, never NaN
    p = jnp.exp(s - m)
    total = jnp.sum(p, axis=1)                                      # (B, Tq, H)
    numer = jnp.einsum("btn,btc->bnc", p.reshape(b, tk, tq * h), v_rows)
    numer = numer.reshape(b, tq, hkv, h // hkv, hkv, dv)
    numer = jnp.einsum("bqkgld,kl->bqkgd", numer, jnp.eye(hkv, dtype=numer.dtype)).reshape(b, tq, h, dv)
    nonempty = total > 0
    safe_total = jnp.where(nonempty, total, 1.0)
    out = numer / safe_total[..., None]
    lse = jnp.where(nonempty, jnp.log(safe_total) + m[:, 0], 0.0)
    return out, lse.transpose(0, 2, 1)
