"""Kernel (linear) attention as an energy.

With a positive feature map φ and κ_ij = φ(q_i)·φ(k_j):

    F(ζ) = Σ_i log Σ_j κ_ij (1 + ζ_i·v_j) = Σ_i log(den_i + ζ_i·num_i),
    den_i = Σ_j κ_ij,  num_i = Σ_j κ_ij v_j,   so  ∂F/∂ζ_i at 0 = num_i / den_i.

Under a causal mask, num and den are prefix sums over keys, computed chunk by
chunk (a C×C masked block inside each chunk plus a running F×Dv state across
chunks), so cost and memory grow linearly in T. Other masks use the dense κ
matrix; an additive bias b_ij multiplies κ_ij by exp(b_ij). Both sums: kernels/linear_sums.py.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from ..kernels.linear_sums import causal_num_den, dense_num_den, is_plain_causal
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
    if is_plain_causal(mask, tq, tk):
        if mask.kv_valid is not None:
            fk = fk * mask.kv_valid[:, :, None, None]
        if mask.q_valid is not None:
            fq = fq * mask.q_valid[:, :, None, None]
        num, den = causal_num_den(fq, fk, v, chunk)
    else:
        num, den = dense_num_den(fq, fk, v, mask)
    # eps keeps rows with no visible key finite (their output is 0).
    return jnp.sum(jnp.log(den + eps + jnp.sum(zeta * num, -1)))
