"""Exact softmax attention, one query block at a time, skipping keys no query in
the block can see.

For a causal mask, query block i only needs keys [0, end of block i): the loop is
unrolled in Python with static slices, so about half the T×T work of a dense
kernel disappears and every block is an ordinary (exact, not online) softmax.
The code is plain jnp, so every JAX transformation — forward mode, reverse mode,
any order — works through it. With one block it *is* the dense kernel.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ..masks import Mask
from ..primitives import unrolled_block_size


def to_groups(x, num_kv_heads: int):
    """(B, T, H, D) -> (B, H_kv, G, T, D): query heads grouped by their K/V head."""
    b, t, h, d = x.shape
    return x.reshape(b, t, num_kv_heads, h // num_kv_heads, d).transpose(0, 2, 3, 1, 4)


def from_groups(x):
    """(B, H_kv, G, T, D) -> (B, T, H, D)."""
    b, hk, g, t, d = x.shape
    return x.transpose(0, 3, 1, 2, 4).reshape(b, t, hk * g, d)


def group_pairs(x, num_kv_heads: int):
    """A (B|1, H|1, q, k) mask or bias block -> (B|1, H_kv|1, G|1, q, k)."""
    if x.shape[1] == 1:
        return x[:, :, None]
    return x.reshape(x.shape[0], num_kv_heads, x.shape[1] // num_kv_heads, *x.shape[2:])


def attention_blocks(q, k, v, zeta, mask: Mask, block_q: int):
    """q pre-scaled by β. Returns (out (B, Tq, H, Dv), lse (B, H, Tq)); `zeta=None` is a zero source."""
    b, tq, h, _ = q.shape
    tk, hkv = k.shape[1], k.shape[2]
    if h == hkv:     # plain multi-head: (B, H, T, D), no group axis (measurably faster on CPU)
        heads_first = lambda x: x.transpose(0, 2, 1, 3)
        regroup = lambda pairs: pairs
    else:            # grouped-query: (B, H_kv, G, T, D)
        heads_first = lambda x: to_groups(x, hkv)
        regroup = lambda pairs: group_pairs(pairs, hkv)
    qg = heads_first(q)
    zg = None if zeta is None else heads_first(zeta)
    kg = k.transpose(0, 2, 1, 3)                       # (B, Hk, Tk, D)
    vg = v.transpose(0, 2, 1, 3)
    guard_empty_rows = not mask.rows_never_empty(tq, tk)
    block_q = unrolled_block_size(tq, block_q)
    outs, lses = [], []
    for q0 in range(0, tq, block_q):
        q1 = min(tq, q0 + block_q)
        k0, k1 = mask.static_key_range(q0, q1, tq, tk)
        o, lse = _one_block(qg[..., q0:q1, :], None if zg is None else zg[..., q0:q1, :],
                            kg[..., k0:k1, :], vg[..., k0:k1, :], mask, q0, k0, tq, tk,
                            regroup, guard_empty_rows)
        outs.append(o)
        lses.append(lse)
    out = jnp.concatenate(outs, axis=-2)
    out = out.transpose(0, 2, 1, 3) if h == hkv else from_groups(out)
    lse = jnp.concatenate(lses, axis=-1)
    return out, lse.reshape(b, h, tq)


def _one_block(qb, zb, kb, vb, mask: Mask, q0, k0, tq, tk, regroup, guard_empty_rows):
    nq, nk = qb.shape[-2], kb.shape[-2]
    if nk == 0:   # no key is visible from this block: zero output, zero log-partition
        shape = qb.shape[:-1]
        return jnp.zeros(shape + (vb.shape[-1],), qb.dtype), jnp.zeros(shape, qb.dtype)
    s = jnp.einsum("bh...qd,bhkd->bh...qk", qb, kb)
    if zb is not None:
        s = s + jnp.einsum("bh...qd,bhkd->bh...qk", zb, vb)
    bias = mask.bias_block(q0, nq, k0, nk)
    if bias is not None:
        s = s + regroup(bias)
    ok = mask.allowed(q0, nq, k0, nk, tq, tk)
    if ok is not None:
        s = jnp.where(regroup(ok), s, -jnp.inf)
    m = jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True))  # shift only; cancels exactly
    if not guard_empty_rows:
        p = jnp.exp(s - m)
        total = jnp.sum(p, axis=-1, keepdims=True)
        o = jnp.einsum("bh...qk,bhkd->bh...qd", p, vb) / total
        return o, (jnp.log(total) + m)[..., 0]
    # Rows that see no key: max is -inf, so shift by 0 and report zeros, never NaN.
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.exp(s - m)
    total = jnp.sum(p, axis=-1, keepdims=True)
    nonempty = total > 0
    safe_total = jnp.where(nonempty, total, 1.0)
    o = jnp.einsum("bh...qk,bhkd->bh...qd", p, vb) / safe_total
    lse = jnp.where(nonempty, jnp.log(safe_total) + m, 0.0)
    return o, lse[..., 0]
