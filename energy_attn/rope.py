"""Rotary position embeddings (Su et al. 2021), half-split (GPT-NeoX) layout.

Each pair (x[d], x[d + D/2]) is rotated by the angle position · base^(-2d/D).
A rotation keeps the norm, and (R_m q)·(R_n k) = q·(R_{n-m} k): after RoPE the
score between two tokens depends only on how far apart they are.
"""
from __future__ import annotations

import jax.numpy as jnp


def rope_frequencies(head_dim: int, base: float = 10000.0):
    """The D/2 angular frequencies base^(-2d/D), d = 0 .. D/2 - 1."""
    if head_dim % 2:
        raise ValueError(f"RoPE rotates pairs of features, so head_dim must be even; got {head_dim}")
    return base ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)


def apply_rope(x, positions, base: float = 10000.0):
    """Rotate x (B, T, H, D) by its integer positions, (B, T) or (T,)."""
    if x.ndim != 4:
        raise ValueError(f"apply_rope expects x of shape (B, T, H, D); got {x.shape}")
    positions = jnp.asarray(positions)
    if positions.shape not in ((x.shape[1],), x.shape[:2]):
        raise ValueError(f"positions has shape {positions.shape}; expected (T,) = ({x.shape[1]},) "
                         f"or (B, T) = {x.shape[:2]} to match x of shape {x.shape}")
    freqs = rope_frequencies(x.shape[-1], base)
    # At least float32 even for bf16 activations: position · freq loses digits fast.
    dtype = jnp.promote_types(x.dtype, jnp.float32)
    angles = positions.astype(dtype)[..., None] * freqs.astype(dtype)     # (..., T, D/2)
    if angles.ndim == 2:
        angles = angles[None]
    cos, sin = jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]   # broadcast over heads
    x1, x2 = jnp.split(x.astype(dtype), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)
