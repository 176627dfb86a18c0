"""Kernel (linear) attention as an energy.

With a positive feature map φ and κ_ij = φ(q_i)·φ(k_j):

    F(ζ) = Σ_i log Σ_j κ_ij (1 + ζ_i·v_j) = Σ_i log(den_i + ζ_i·num_i),
    den_i = Σ_j κ_ij,  num_i = Σ_j κ_ij v_j,   so  ∂F/∂ζ_i at 0 = num_i / den_i.

Under a causal mask, num and den are prefix sums over keys, computed chunk by
chunk (a C×C masked block inside each chunk plus a running F×Dv state across
chunks), so cost and memory grow linearly in T. Other masks use the dense κ
matrix; an additive bias b_ij multiplies κ_ij by exp(b_ij).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from ..masks import as_mask
from ..primitives import expand_kv_heads
from ..registry import register_energy

FEATURE_MAPS = ("elu", "relu", "exp")


def features(x, feature_map: str = "elu", *, num_features: int | None = None, seed: int = 0,
             is_query: bool = True):
    """Positive features φ(x) for x (B, T, H, D)."""
    if feature_map == "elu":
        return jax.nn.elu(x) + 1.0
    if feature_map == "relu":
        return jax.nn.relu(x)
    if feature_map == "exp":
        # Positive random features (Performer, FAVOR+): E[φ(q)·φ(k)] = exp(q·k/√D).
        d = x.shape[-1]
        m = num_features or d
        w = jax.random.normal(jax.random.PRNGKey(seed), (m, d), x.dtype)
        x = x * d ** -0.25
        proj = jnp.einsum("bthd,md->bthm", x, w) - 0.5 * jnp.sum(x * x, -1, keepdims=True)
        # A shift keeps exp in range; it scales num and den alike, so the output is unchanged.
        axes = (-1,) if is_query else (1, -1)
        shift = jax.lax.stop_gradient(jnp.max(proj, axis=axes, keepdims=True))
        return jnp.exp(proj - shift) / math.sqrt(m)
    raise ValueError(f"unknown feature_map {feature_map!r}; choose one of {FEATURE_MAPS}")


def _is_plain_causal(mask, tq, tk):
    """Causal (optionally with padding) from position 0: the O(T) prefix-sum path applies."""
    return (mask.causal and not mask.restricts_beyond("causal", "kv_valid", "q_valid")
            and tq == tk and mask.offset(tq, tk) == 0)


def causal_num_den(fq, fk, v, chunk: int):
    """Prefix sums num_i = Σ_{j≤i} κ_ij v_j and den_i = Σ_{j≤i} κ_ij, chunked. Shapes (B,T,H,·)."""
    b, t, h, f = fq.shape
    c = min(chunk, t)
    pad = (-t) % c
    if pad:
        fq, fk, v = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (fq, fk, v))
    n = (t + pad) // c
    fq, fk, v = (x.reshape(b, n, c, h, x.shape[-1]) for x in (fq, fk, v))
    # Within a chunk: masked C×C kernel matrix.
    kappa = jnp.einsum("bnchf,bnkhf->bnhck", fq, fk) * jnp.tril(jnp.ones((c, c), fq.dtype))
    num = jnp.einsum("bnhck,bnkhd->bnchd", kappa, v)
    den = kappa.sum(-1).transpose(0, 1, 3, 2)
    # Across chunks: running state of everything in earlier chunks (exclusive prefix sum).
    kv_state = jnp.cumsum(jnp.einsum("bnkhf,bnkhd->bnhfd", fk, v), axis=1)
    k_state = jnp.cumsum(fk.sum(2), axis=1)
    kv_state = jnp.concatenate([jnp.zeros_like(kv_state[:, :1]), kv_state[:, :-1]], 1)
    k_state = jnp.concatenate([jnp.zeros_like(k_state[:, :1]), k_state[:, :-1]], 1)
    num = num + jnp.einsum("bnchf,bnhfd->bnchd", fq, kv_state)
    den = den + jnp.einsum("bnchf,bnhf->bnch", fq, k_state)
    num = num.reshape(b, n * c, h, -1)[:, :t]
    den = den.reshape(b, n * c, h)[:, :t]
    return num, den


def dense_num_den(fq, fk, v, mask):
    tq, tk = fq.shape[1], fk.shape[1]
    kappa = jnp.einsum("bqhf,bkhf->bhqk", fq, fk)
    b = mask.bias_block(0, tq, 0, tk)
    if b is not None:
        kappa = kappa * jnp.exp(b)
    ok = mask.allowed(0, tq, 0, tk, tq, tk)
    if ok is not None:
        kappa = jnp.where(ok, kappa, 0.0)
    num = jnp.einsum("bhqk,bkhd->bqhd", kappa, v)
    return num, kappa.sum(-1).transpose(0, 2, 1)


@register_energy("linear")
def linear(q, k, v, zeta, *, mask=None, feature_map="elu", num_features=None, seed=0,
           eps=1e-6, chunk=64):
    mask = as_mask(mask)
    h = q.shape[2]
    fq = features(q, feature_map, num_features=num_features, seed=seed, is_query=True)
    fk = expand_kv_heads(features(k, feature_map, num_features=num_features, seed=seed,
                                  is_query=False), h)
    v = expand_kv_heads(v, h)
    tq, tk = q.shape[1], k.shape[1]
    if _is_plain_causal(mask, tq, tk):
        if mask.kv_valid is not None:
            fk = fk * mask.kv_valid[:, :, None, None]
        if mask.q_valid is not None:
            fq = fq * mask.q_valid[:, :, None, None]
        num, den = causal_num_den(fq, fk, v, chunk)
    else:
        num, den = dense_num_den(fq, fk, v, mask)
    # eps keeps rows with no visible key finite (their output is 0).
    return jnp.sum(jnp.log(den + eps + jnp.sum(zeta * num, -1)))
