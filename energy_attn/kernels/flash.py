"""Memory-lean softmax attention for long sequences: online log-sum-exp over key
blocks inside `lax` loops, with a hand-written backward pass that recomputes the
scores block by block (FlashAttention-2's recipe), so memory is O(T·D), not O(T²).

Blocks that the mask rules out entirely (causal future, outside a sliding window)
are never visited: loop bounds are computed per block. The source ζ is always
included here; the derivative is exact for any ζ (reverse mode only).
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from ..masks import Mask
from .blockwise import from_groups, group_pairs, to_groups


def flash_attention(q, k, v, zeta, mask: Mask, block_q: int, block_k: int):
    """q pre-scaled by β. Returns (out (B, Tq, H, Dv), lse (B, H, Tq))."""
    hkv = k.shape[2]
    out, lse = _flash(block_q, block_k, to_groups(q, hkv), to_groups(zeta, hkv),
                      k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), mask)
    b, hk, g, tq = lse.shape
    return from_groups(out), lse.reshape(b, hk * g, tq)


# ------------------------------------------------------------------ block ranges
def _key_blocks(mask: Mask, q0, bq, tq, tk, bk):
    """Key-block index range [lo, hi) that queries [q0, q0+bq) can see."""
    lo, hi = mask.static_key_range(q0, q0 + bq, tq, tk)
    return lo // bk, (hi + bk - 1) // bk


def _query_blocks(mask: Mask, k0, bk, tq, tk, bq):
    """Query-block index range [lo, hi) whose queries can see keys [k0, k0+bk)."""
    if mask.has_dynamic_offset:
        return 0, tq // bq
    off = mask.offset(tq, tk)
    lo, hi = 0, tq
    if mask.causal:
        lo = jnp.clip(k0 - off, 0, tq)
        if mask.window is not None:
            hi = jnp.clip(mask.window + k0 + bk - 1 - off, 0, tq)
    elif mask.window is not None:
        lo = jnp.clip(k0 - off - mask.window + 1, 0, tq)
        hi = jnp.clip(k0 + bk - off + mask.window - 1, 0, tq)
    return lo // bq, (hi + bq - 1) // bq


def _scores(qb, zb, kb, vb, mask: Mask, q0, k0, tq, tk, hkv):
    s = jnp.einsum("bhgqd,bhkd->bhgqk", qb, kb) + jnp.einsum("bhgqd,bhkd->bhgqk", zb, vb)
    nq, nk = qb.shape[-2], kb.shape[-2]
    bias = mask.bias_block(q0, nq, k0, nk)
    if bias is not None:
        s = s + group_pairs(bias, hkv)
    ok = mask.allowed(q0, nq, k0, nk, tq, tk)
    return s if ok is None else jnp.where(group_pairs(ok, hkv), s, -jnp.inf)


def _slice(x, start, size):
    return jax.lax.dynamic_slice_in_dim(x, start, size, axis=x.ndim - 2)


# ------------------------------------------------------------------ forward
def _forward(bq, bk, qg, zg, kg, vg, mask):
    tq, tk, hkv = qg.shape[-2], kg.shape[-2], kg.shape[1]

    def one_query_block(i):
        q0 = i * bq
        qb, zb = _slice(qg, q0, bq), _slice(zg, q0, bq)

        def step(j, carry):
            m, l, acc = carry
            k0 = j * bk
            kb, vb = _slice(kg, k0, bk), _slice(vg, k0, bk)
            s = _scores(qb, zb, kb, vb, mask, q0, k0, tq, tk, hkv)
            m_new = jnp.maximum(m, s.max(-1))
            m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
            p = jnp.exp(s - m_safe[..., None])
            rescale = jnp.exp(m - m_safe)
            l = l * rescale + p.sum(-1)
            acc = acc * rescale[..., None] + jnp.einsum("bhgqk,bhkd->bhgqd", p, vb)
            return m_new, l, acc

        lo, hi = _key_blocks(mask, q0, bq, tq, tk, bk)
        shape = qb.shape[:-1]
        init = (jnp.full(shape, -jnp.inf, qg.dtype), jnp.zeros(shape, qg.dtype),
                jnp.zeros(shape + (vg.shape[-1],), qg.dtype))
        m, l, acc = jax.lax.fori_loop(lo, hi, step, init)
        nonempty = l > 0
        safe_l = jnp.where(nonempty, l, 1.0)
        m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
        return acc / safe_l[..., None], jnp.where(nonempty, jnp.log(safe_l) + m_safe, 0.0)

    out, lse = jax.lax.map(one_query_block, jnp.arange(tq // bq))
    # (nq, B, Hk, G, bq, ...) -> (B, Hk, G, Tq, ...)
    out = jnp.moveaxis(out, 0, -3).reshape(*out.shape[1:4], tq, out.shape[-1])
    lse = jnp.moveaxis(lse, 0, -2).reshape(*lse.shape[1:4], tq)
    return out, lse


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _flash(bq, bk, qg, zg, kg, vg, mask):
    return _forward(bq, bk, qg, zg, kg, vg, mask)


def _flash_fwd(bq, bk, qg, zg, kg, vg, mask):
    out, lse = _forward(bq, bk, qg, zg, kg, vg, mask)
    return (out, lse), (qg, zg, kg, vg, mask, out, lse)


def _flash_bwd(bq, bk, res, cts):
    qg, zg, kg, vg, mask, out, lse = res
    dout, dlse = cts
    tq, tk, hkv = qg.shape[-2], kg.shape[-2], kg.shape[1]
    # ∂lse_i/∂s_ij = P_ij, ∂out_i/∂s_ij = P_ij (v_j - out_i): fold both into one row term.
    row = dlse - jnp.sum(dout * out, axis=-1)

    def probs_and_dscores(q0, k0):
        qb, zb = _slice(qg, q0, bq), _slice(zg, q0, bq)
        kb, vb = _slice(kg, k0, bk), _slice(vg, k0, bk)
        s = _scores(qb, zb, kb, vb, mask, q0, k0, tq, tk, hkv)
        p = jnp.exp(s - _slice(lse[..., None], q0, bq))          # masked: exp(-inf) = 0
        dp = jnp.einsum("bhgqd,bhkd->bhgqk", _slice(dout, q0, bq), vb)
        ds = p * (dp + _slice(row[..., None], q0, bq))
        return qb, zb, kb, vb, p, ds

    def query_side(i):           # dq, dζ for query block i, and its bias gradient
        q0 = i * bq

        def step(j, carry):
            dq, dz, dbias = carry
            k0 = j * bk
            _, _, kb, vb, _, ds = probs_and_dscores(q0, k0)
            dq = dq + jnp.einsum("bhgqk,bhkd->bhgqd", ds, kb)
            dz = dz + jnp.einsum("bhgqk,bhkd->bhgqd", ds, vb)
            if dbias is not None:
                dbias = _add_bias_block(dbias, ds, k0, bk, hkv)
            return dq, dz, dbias

        lo, hi = _key_blocks(mask, q0, bq, tq, tk, bk)
        init = (jnp.zeros_like(_slice(qg, q0, bq)), jnp.zeros_like(_slice(zg, q0, bq)),
                None if mask.bias is None else _bias_slab(mask.bias, bq))
        return jax.lax.fori_loop(lo, hi, step, init)

    def key_side(j):             # dk, dv for key block j
        k0 = j * bk

        def step(i, carry):
            dk, dv = carry
            q0 = i * bq
            qb, zb, _, _, p, ds = probs_and_dscores(q0, k0)
            dk = dk + jnp.einsum("bhgqk,bhgqd->bhkd", ds, qb)
            dv = dv + jnp.einsum("bhgqk,bhgqd->bhkd", p, _slice(dout, q0, bq)) \
                    + jnp.einsum("bhgqk,bhgqd->bhkd", ds, zb)
            return dk, dv

        lo, hi = _query_blocks(mask, k0, bk, tq, tk, bq)
        init = (jnp.zeros_like(_slice(kg, k0, bk)), jnp.zeros_like(_slice(vg, k0, bk)))
        return jax.lax.fori_loop(lo, hi, step, init)

    dq, dz, dbias = jax.lax.map(query_side, jnp.arange(tq // bq))
    dk, dv = jax.lax.map(key_side, jnp.arange(tk // bk))
    unblock = lambda x: jnp.moveaxis(x, 0, -3).reshape(*x.shape[1:-2], -1, x.shape[-1])
    dq, dz, dk, dv = unblock(dq), unblock(dz), unblock(dk), unblock(dv)
    dmask = jax.tree_util.tree_map(lambda _: None, mask)
    if dbias is not None:
        dmask = _mask_cotangent(mask, _collect_bias(dbias, mask.bias))
    return dq, dz, dk, dv, dmask


def _bias_slab(bias, bq):
    rows = 1 if bias.shape[-2] == 1 else bq
    return jnp.zeros(bias.shape[:2] + (rows, bias.shape[-1]), bias.dtype)


def _add_bias_block(slab, ds, k0, bk, hkv):
    b, h, rows, cols = slab.shape
    blk = ds.reshape(ds.shape[0], hkv * ds.shape[2], *ds.shape[-2:])   # (B, H, bq, bk)
    blk = blk.sum(axis=tuple(a for a, n in ((0, b), (1, h)) if n == 1), keepdims=True)
    if rows == 1:
        blk = blk.sum(-2, keepdims=True)
    if cols == 1:
        return slab + blk.sum(-1, keepdims=True)
    cur = jax.lax.dynamic_slice_in_dim(slab, k0, bk, axis=3)
    return jax.lax.dynamic_update_slice_in_dim(slab, cur + blk, k0, axis=3)


def _collect_bias(slabs, bias):
    if bias.shape[-2] == 1:
        return slabs.sum(0)
    return jnp.moveaxis(slabs, 0, 2).reshape(bias.shape)


def _mask_cotangent(mask, dbias):
    return jax.tree_util.tree_map(lambda x: dbias if x is mask.bias else None, mask)


_flash.defvjp(_flash_fwd, _flash_bwd)
