"""Sigmoid attention:  F(ζ) = Σ_ij softplus(s_ij + b + ζ_i·v_j),  ∂F/∂ζ_i = Σ_j σ(s_ij + b) v_j.

No normalisation across keys, so each pair contributes on its own. The bias b
defaults to -log Tk, which keeps the total weight per query near 1 at init
(Ramapuram et al. 2024, "Theory, analysis, and best practices for sigmoid
self-attention").
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from ..primitives import blockwise_sum
from ..registry import register_energy


def masked_softplus_sum(s):
    """Σ softplus(s) over the entries that are not -inf (masked pairs add nothing)."""
    finite = jnp.isfinite(s)
    return jnp.sum(jnp.where(finite, jax.nn.softplus(jnp.where(finite, s, 0.0)), 0.0))


@register_energy("sigmoid")
def sigmoid(q, k, v, zeta, *, mask=None, beta=None, bias=None, block_q=128):
    b = -math.log(k.shape[1]) if bias is None else bias
    return blockwise_sum(lambda s: masked_softplus_sum(s + b), q, k, v, zeta,
                         mask=mask, beta=beta, block_q=block_q)
