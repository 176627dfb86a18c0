"""Distance (RBF) attention: the softmax energy with s_ij = -β‖q_i - k_j‖².

-β‖q - k‖² = 2β q·k - β‖k‖² - β‖q‖². The last term is constant along a row, so
it changes F but not the attention. The first two are one dot product of the
augmented vectors [q, 1] and [2βk, -β‖k‖²], so the fast softmax kernels serve
this energy unchanged.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ..masks import as_mask
from ..primitives import default_beta
from ..registry import register_energy
from .softmax import softmax


@register_energy("distance")
def distance(q, k, v, zeta, *, mask=None, beta=None, **kernel_options):
    beta = default_beta(q.shape[-1]) if beta is None else beta
    beta = jnp.asarray(beta, q.dtype)
    beta_k = beta[:, None] if beta.ndim == 1 else beta
    if beta.ndim == 1 and k.shape[2] != q.shape[2]:
        raise ValueError("per-head beta for the distance energy needs as many K/V heads as query heads")
    q_sq = jnp.sum(q * q, axis=-1)                                      # (B, Tq, H)
    q_aug = jnp.concatenate([q, jnp.ones_like(q[..., :1])], axis=-1)
    k_aug = jnp.concatenate([2 * beta_k * k, -beta_k * jnp.sum(k * k, -1, keepdims=True)], axis=-1)
    f = softmax(q_aug, k_aug, v, zeta, mask=mask, beta=1.0, **kernel_options)
    has_key = _rows_with_keys(as_mask(mask), q.shape, k.shape[1])
    return f - jnp.sum(jnp.where(has_key, beta * q_sq, 0.0))


def _rows_with_keys(mask, q_shape, tk):
    """(B|1, Tq, H|1) bool: which queries see any key (empty rows have F = 0)."""
    tq = q_shape[1]
    ok = mask.allowed(0, tq, 0, tk, tq, tk)
    if ok is None:
        return True
    return jax.lax.stop_gradient(jnp.any(ok, axis=-1)).transpose(0, 2, 1)
