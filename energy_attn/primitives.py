"""Building blocks that energies are written with.

Layout: q, zeta are (B, Tq, H, D); k, v are (B, Tk, H_kv, D) with H a multiple of
H_kv (grouped-query attention). Score matrices are (B, H, Tq, Tk). Masked pairs
hold -inf, so any energy that sums exp(score) or softplus(score) excludes them.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from .masks import Mask, as_mask


def default_beta(head_dim: int) -> float:
    return head_dim ** -0.5


def expand_kv_heads(x, num_q_heads: int):
    """Repeat K/V heads so that each query head has its own (GQA → MHA view)."""
    groups = num_q_heads // x.shape[-2]
    return x if groups == 1 else jnp.repeat(x, groups, axis=-2)


def allowed_pairs(mask: Mask | None, tq: int, tk: int):
    """Dense boolean (B|1, H|1, Tq, Tk) of pairs that may interact, or None for all."""
    return as_mask(mask).allowed(0, tq, 0, tk, tq, tk)


def score_beta(beta, q):
    """β shaped to scale (B, H, Tq, Tk) scores: a scalar, or (H, 1, 1) for one β per query
    head (given as (H,)). None: 1/sqrt(head_dim)."""
    beta = jnp.asarray(default_beta(q.shape[-1]) if beta is None else beta)
    if beta.ndim == 1:
        if beta.shape[0] != q.shape[-2]:
            raise ValueError(f"per-head beta has {beta.shape[0]} values for {q.shape[-2]} query heads")
        return beta[:, None, None]
    return beta


def dot_scores(q, k, beta=None):
    """β q_i·k_j as (B, H, Tq, Tk), without any mask. β: a scalar or one per query head (H,)."""
    k = expand_kv_heads(k, q.shape[-2])
    return score_beta(beta, q) * jnp.einsum("bqhd,bkhd->bhqk", q, k)


def apply_mask(s, mask: Mask | None):
    """Add the mask's bias and put -inf on excluded pairs."""
    mask = as_mask(mask)
    tq, tk = s.shape[-2], s.shape[-1]
    b = mask.bias_block(0, tq, 0, tk)
    if b is not None:
        s = s + b
    ok = mask.allowed(0, tq, 0, tk, tq, tk)
    return s if ok is None else jnp.where(ok, s, -jnp.inf)


def scores(q, k, *, mask: Mask | None = None, beta=None):
    """Masked scores s_ij = β q_i·k_j + bias_ij, -inf where excluded. β: a scalar or one per
    query head (H,); default 1/sqrt(head_dim)."""
    return apply_mask(dot_scores(q, k, beta), mask)


def source(zeta, v):
    """The source term ζ_i·v_j as (B, H, Tq, Tk)."""
    v = expand_kv_heads(v, zeta.shape[-2])
    return jnp.einsum("bqhd,bkhd->bhqk", zeta, v)


@partial(jax.custom_jvp)
def source_scores(zeta, v):
    """ζ_i·v_j as (B, H, Tq, Tk) for equal head counts, skipping the matmul when ζ = 0.

    `attend` evaluates at ζ = 0, where this term costs as much as the q·k scores
    and adds nothing. The skip is a value shortcut only: the JVP below is the
    exact bilinear derivative, so every derivative (any order) stays correct.
    """
    return jax.lax.cond(jnp.all(zeta == 0),
                        lambda: varying_like(jnp.zeros(zeta.shape[:1] + zeta.shape[2:3] + zeta.shape[1:2]
                                                        + v.shape[1:2], jnp.result_type(zeta, v)), zeta, v),
                        lambda: jnp.einsum("bqhd,bkhd->bhqk", zeta, v))


def varying_like(x, *refs):
    """x typed as varying over every mesh axis one of `refs` varies over (inside
    shard_map both cond branches must agree; a no-op outside shard_map)."""
    axes = set().union(*(jax.typeof(r).manual_axis_type.varying for r in refs))
    return jax.lax.pcast(x, tuple(sorted(axes)), to="varying") if axes else x


@partial(source_scores.defjvp, symbolic_zeros=True)
def _source_scores_jvp(primals, tangents):
    zeta, v = primals
    dzeta, dv = tangents
    out = source_scores(zeta, v)
    tangent = jnp.zeros_like(out)
    if not isinstance(dzeta, SymbolicZero):
        tangent = tangent + jnp.einsum("bqhd,bkhd->bhqk", dzeta, v)
    if not isinstance(dv, SymbolicZero):
        tangent = tangent + jnp.einsum("bqhd,bkhd->bhqk", zeta, dv)
    return out, tangent


def logsumexp(x, axis: int = -1):
    """log Σ exp(x) that is 0, with zero gradient, on rows where every entry is -inf.

    Fully masked rows would otherwise give -inf - (-inf) = NaN in value or gradient.
    """
    m = jax.lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True))
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    total = jnp.sum(jnp.exp(x - m), axis=axis, keepdims=True)
    nonempty = total > 0
    out = jnp.where(nonempty, jnp.log(jnp.where(nonempty, total, 1.0)) + m, 0.0)
    return jnp.squeeze(out, axis)


MAX_UNROLLED_BLOCKS = 16


def unrolled_block_size(tq: int, block_q: int | None) -> int:
    """Query-block size for a Python-unrolled loop: at most MAX_UNROLLED_BLOCKS blocks,
    since each block is traced and compiled separately (compile time and memory)."""
    if block_q is None:
        return tq
    return max(block_q, -(-tq // MAX_UNROLLED_BLOCKS))


def blockwise_sum(row_energy, q, k, v, zeta, *, mask: Mask | None = None, beta=None,
                  block_q: int | None = 128):
    """Σ over query blocks of row_energy(s), s = masked scores + source on the keys
    that block can see.

    For energies that are sums over queries of a function of the whole score row
    (sigmoid, entmax, ...). It is exact: a causal mask only lets query block i see
    keys before its end, so the skipped keys would have been -inf anyway. This
    halves the work of a causal energy, and autodiff never touches skipped blocks.
    """
    mask = as_mask(mask)
    tq, tk = q.shape[1], k.shape[1]
    beta = score_beta(beta, q)
    block_q = tq if mask.has_dynamic_offset else unrolled_block_size(tq, block_q)
    k_all, v_all = expand_kv_heads(k, q.shape[-2]), expand_kv_heads(v, q.shape[-2])
    total = 0.0
    for q0 in range(0, tq, block_q):
        q1 = min(tq, q0 + block_q)
        k0, k1 = mask.static_key_range(q0, q1, tq, tk)
        if k1 == k0:
            continue
        s = beta * jnp.einsum("bqhd,bkhd->bhqk", q[:, q0:q1], k_all[:, k0:k1])
        s = s + source_scores(zeta[:, q0:q1], v_all[:, k0:k1])
        b = mask.bias_block(q0, q1 - q0, k0, k1 - k0)
        if b is not None:
            s = s + b
        ok = mask.allowed(q0, q1 - q0, k0, k1 - k0, tq, tk)
        if ok is not None:
            s = jnp.where(ok, s, -jnp.inf)
        total = total + row_energy(s)
    return jnp.asarray(total, q.dtype)
