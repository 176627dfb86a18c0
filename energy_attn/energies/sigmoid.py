"""Sigmoid attention:  F(ζ) = Σ_ij softplus(s_ij + b + ζ_i·v_j),  ∂F/∂ζ_i = Σ_j σ(s_ij + b) v_j.

No normalisation across keys, so each pair contributes on its own. The bias b
defaults to -log n_i, n_i the number of keys query i sees, which keeps its total
weight near 1 at init (Ramapuram et al. 2024, "Theory, analysis, and best
practices for sigmoid self-attention", use -log T). Counting visible keys rather
than buffer length makes a KV-cache decode step see exactly the bias training saw.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ..primitives import blockwise_sum
from ..registry import register_energy


def masked_softplus_sum(s):
    """Σ softplus(s) over the entries that are not -inf (masked pairs add nothing)."""
    finite = jnp.isfinite(s)
    return jnp.sum(jnp.where(finite, jax.nn.softplus(jnp.where(finite, s, 0.0)), 0.0))


def visible_keys_bias(s):
    """-log(number of keys each query row sees), from the -inf pattern of the scores."""
    seen = jnp.sum(jnp.isfinite(s), axis=-1, keepdims=True)
    return -jnp.log(jnp.maximum(seen, 1).astype(s.dtype))


@register_energy("sigmoid")
def sigmoid(q, k, v, zeta, *, mask=None, beta=None, bias=None, block_q=128):
    def row_energy(s):
        return masked_softplus_sum(s + (visible_keys_bias(s) if bias is None else bias))
    return blockwise_sum(row_energy, q, k, v, zeta, mask=mask, beta=beta, block_q=block_q)
