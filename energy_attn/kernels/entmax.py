"""The α-entmax mapping and its Tsallis conjugate, with exact derivative rules.

    p = entmax(z, alpha)              # per row (last axis): the maximiser over the simplex
    f = tsallis_conjugate(z, alpha)   # Ω*_α(z) = max_p ⟨p, z⟩ − Ω_α(p); its gradient is entmax(z)

The threshold τ (Σ_j [(α−1)z_j − τ]_+^(1/(α−1)) = 1) is found by Newton's method
(bisection for α > 2). entmax's JVP comes from the implicit function theorem and
Ω*'s from Danskin's theorem, so first- and second-order gradients are exact.
energies/entmax.py builds the entmax and sparsemax energies from these.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from ..primitives import varying_like

_MAX_STEPS = 50        # Newton converges in a handful; this only bounds a pathological row
_BISECTION_STEPS = 40  # for alpha > 2, where Newton from below could overshoot


def _threshold(x, valid, alpha):
    """τ with Σ_j [x_j - τ]_+^(1/(α-1)) = 1, per row (x = (α-1) z)."""
    x_max = jnp.max(x, axis=-1, keepdims=True)
    x_max = jnp.where(jnp.isfinite(x_max), x_max, 0.0)
    power = 1.0 / (alpha - 1)

    def excess(tau):
        return jnp.where(valid, jnp.maximum(x - tau, 0.0), 0.0)

    if alpha <= 2:
        # f(τ) = Σ excess^power - 1 is convex and decreasing, so Newton steps from
        # τ = max - 1 (where f >= 0) rise monotonically to the root. For α = 2
        # each step is Michelot's sparsemax update and ends exactly.
        def newton(state):
            tau, _, step = state
            e = excess(tau)
            f = (e ** power).sum(-1, keepdims=True) - 1.0
            slope = power * (e ** (power - 1.0) * (e > 0)).sum(-1, keepdims=True)
            new_tau = tau + f / jnp.where(slope > 0, slope, 1.0)
            return new_tau, jnp.max(jnp.abs(new_tau - tau)), step + 1

        # Stop once a step moves τ by a few ulps: rounding alone can keep it moving
        # by one ulp forever, and Newton's error is already quadratically smaller.
        tol = 8 * jnp.finfo(x.dtype).eps * jnp.maximum(1.0, jnp.max(jnp.abs(x_max)))

        def not_done(state):
            _, change, step = state
            return (change > tol) & (step < _MAX_STEPS)

        start = (x_max - 1.0, varying_like(jnp.asarray(jnp.inf, x.dtype), x), 0)  # shard_map: carry types match
        tau, _, _ = jax.lax.while_loop(not_done, newton, start)
        return tau, excess(tau) ** power

    n = jnp.maximum(valid.sum(-1, keepdims=True), 1)
    lo, hi = x_max - 1.0, x_max - (1.0 / n) ** (alpha - 1)

    def halve(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        too_much = (excess(mid) ** power).sum(-1, keepdims=True) >= 1.0
        return jnp.where(too_much, mid, lo), jnp.where(too_much, hi, mid)

    lo, _ = jax.lax.fori_loop(0, _BISECTION_STEPS, halve, (lo, hi))
    return lo, excess(lo) ** power


@partial(jax.custom_jvp, nondiff_argnums=(1,))
def entmax(z, alpha: float = 1.5):
    """α-entmax over the last axis; -inf entries get probability 0; all -inf rows give 0."""
    valid = jnp.isfinite(z)
    x = jnp.where(valid, (alpha - 1) * z, -jnp.inf)
    _, p = _threshold(x, valid, alpha)
    total = p.sum(-1, keepdims=True)   # 1 up to rounding; renormalise away the residual
    return jnp.where(total > 0, p / jnp.where(total > 0, total, 1.0), 0.0)


@entmax.defjvp
def _entmax_jvp(alpha, primals, tangents):
    (z,), (dz,) = primals, tangents
    p = entmax(z, alpha)
    # dp = s⊙dz - s (s·dz)/Σs with s_j = p_j^(2-α) on the support (0 elsewhere).
    s = jnp.where(p > 0, p ** (2.0 - alpha), 0.0)
    dz = jnp.where(p > 0, dz, 0.0)
    s_sum = s.sum(-1, keepdims=True)
    dp = s * dz - s * (s * dz).sum(-1, keepdims=True) / jnp.where(s_sum > 0, s_sum, 1.0)
    return p, dp


def _conjugate_from(p, z, alpha):
    linear = jnp.where(p > 0, p * jnp.where(jnp.isfinite(z), z, 0.0), 0.0).sum(-1)
    regulariser = ((p ** alpha).sum(-1) - 1.0) / (alpha * (alpha - 1))
    return jnp.where(jnp.any(jnp.isfinite(z), -1), linear - regulariser, 0.0)


@partial(jax.custom_jvp, nondiff_argnums=(1,))
def tsallis_conjugate(z, alpha: float = 1.5):
    """Ω*_α(z) per row (last axis): max over the simplex of ⟨p, z⟩ - Ω_α(p). 0 for all -inf rows."""
    return _conjugate_from(entmax(z, alpha), z, alpha)


@tsallis_conjugate.defjvp
def _tsallis_conjugate_jvp(alpha, primals, tangents):
    (z,), (dz,) = primals, tangents
    # Danskin: the gradient of a max over p is the maximiser, entmax(z).
    p = entmax(z, alpha)
    return _conjugate_from(p, z, alpha), jnp.sum(jnp.where(p > 0, p * dz, 0.0), -1)
