"""The softmax energy  F(ζ) = Σ_i log Σ_j exp(β q_i·k_j + bias_ij + ζ_i·v_j).

`softmax_reference` is the definition, written as the formula. `softmax` is the
same function with a custom derivative rule: its ζ-tangent is Σ_i dζ_i·out_i,
where out is computed by a fast kernel (blockwise / flash / dot_product_attention)
instead of by differentiating through a materialised T×T score matrix. Tangents
in any other input (q, k, v, β, a mask bias) go through the reference formula,
so every derivative stays exact.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from ..autodiff import all_symbolic_zero, instantiate_zeros
from ..kernels import softmax_attention
from ..masks import as_mask
from ..primitives import default_beta, logsumexp, scores, source
from ..registry import register_energy


def softmax_reference(q, k, v, zeta, *, mask=None, beta=None):
    s = scores(q, k, mask=mask, beta=beta) + source(zeta, v)
    return logsumexp(s, axis=-1).sum()


@register_energy("softmax")
def softmax(q, k, v, zeta, *, mask=None, beta=None, impl="auto", block_q=128, block_k=512):
    beta = default_beta(q.shape[-1]) if beta is None else beta
    return _softmax_fast(impl, block_q, block_k, q, k, v, zeta, as_mask(mask), jnp.asarray(beta, q.dtype))


@partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def _softmax_fast(impl, block_q, block_k, q, k, v, zeta, mask, beta):
    _, lse = softmax_attention(q, k, v, zeta, mask, beta, impl, block_q, block_k)
    return lse.sum()


@partial(_softmax_fast.defjvp, symbolic_zeros=True)
def _softmax_fast_jvp(impl, block_q, block_k, primals, tangents):
    q, k, v, zeta, mask, beta = primals
    dq, dk, dv, dzeta, dmask, dbeta = tangents
    if not all(all_symbolic_zero(t) for t in (dq, dk, dv, dmask, dbeta)):
        # A derivative other than ∂/∂ζ: use the definition (exact, O(T²) memory).
        ref = lambda q, k, v, z, m, b: softmax_reference(q, k, v, z, mask=m, beta=b)
        return jax.jvp(ref, primals, instantiate_zeros(tangents))
    out, lse = softmax_attention(q, k, v, zeta, mask, beta, impl, block_q, block_k)
    if isinstance(dzeta, SymbolicZero):
        return lse.sum(), jnp.zeros((), lse.dtype)
    return lse.sum(), jnp.sum(dzeta * out)
