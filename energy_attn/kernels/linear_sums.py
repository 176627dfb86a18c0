"""The sums kernel (linear) attention needs: num_i = Σ_j κ_ij v_j and den_i = Σ_j κ_ij.

    if is_plain_causal(mask, tq, tk): num, den = causal_num_den(fq, fk, v, chunk)   # O(T)
    else:                             num, den = dense_num_den(fq, fk, v, mask)     # the κ matrix

Under a plain causal mask they are prefix sums over keys, chunk by chunk: a C×C masked
block inside each chunk plus a running F×Dv state across chunks, so cost and memory
grow linearly in T. Other masks use the dense κ_ij = φ(q_i)·φ(k_j), an additive bias
b_ij multiplying κ_ij by exp(b_ij). energies/linear.py is the energy built on them.
"""
from __future__ import annotations

import jax.numpy as jnp


def is_plain_causal(mask, tq, tk):
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
