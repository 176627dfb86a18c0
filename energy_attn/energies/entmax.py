"""Sparse attention from the Fenchel–Young view (Blondel et al. 2020, Peters et al. 2019).

With the Tsallis regulariser Ω_α(p) = (Σ_j p_j^α - 1) / (α(α-1)) on the simplex,
its convex conjugate Ω*(z) = max_p ⟨p, z⟩ - Ω_α(p) is the energy of one query row:

    F(ζ) = Σ_i Ω*(s_i + V ζ_i),     ∇Ω*(z) = α-entmax(z),   so  ∂F/∂ζ_i = Σ_j p_ij v_j.

α = 2 is sparsemax; α → 1 would be softmax (use the softmax energy for that).
Both Ω* and entmax carry exact derivative rules (Danskin for Ω*, the implicit
function theorem for entmax), so first- and second-order gradients are exact: the
solver and those rules are in kernels/entmax.py.
"""
from __future__ import annotations

from ..kernels.entmax import entmax, tsallis_conjugate  # noqa: F401  (entmax: public here too)
from ..primitives import blockwise_sum
from ..registry import register_energy


def _check_alpha(alpha):
    if not alpha > 1:
        raise ValueError(f"entmax needs alpha > 1 (alpha=2 is sparsemax); got {alpha}. "
                         "For alpha = 1 use the softmax energy.")


@register_energy("entmax")
def entmax_energy(q, k, v, zeta, *, mask=None, beta=None, alpha=1.5, block_q=128):
    _check_alpha(alpha)
    return blockwise_sum(lambda s: tsallis_conjugate(s, float(alpha)).sum(), q, k, v, zeta,
                         mask=mask, beta=beta, block_q=block_q)


@register_energy("sparsemax")
def sparsemax_energy(q, k, v, zeta, *, mask=None, beta=None, block_q=128):
    return entmax_energy(q, k, v, zeta, mask=mask, beta=beta, alpha=2.0, block_q=block_q)
