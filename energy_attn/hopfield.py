"""Modern Hopfield networks (Ramsauer et al. 2020) from one energy.

Stored patterns are the rows x_i of X (N, d); a state (query) ξ has width d.

    lse(ξ)  = β⁻¹ log Σ_i exp(β x_i·ξ)                               lse_energy
    E(ξ)    = −lse(ξ) + ½ ξ·ξ + β⁻¹ log N + ½ M²,  M = max_i ‖x_i‖     hopfield_energy
    update  = ∇_ξ lse = X softmax(β Xᵀξ)                              one CCCP step

E is convex (½ξ·ξ) plus concave (−lse). CCCP linearises the concave part and
minimises the convex bound exactly, which gives ξ ← ∇lse(ξ): so `update` is
`jax.grad` of `lse_energy`, nothing is written by hand, and E never increases
along `retrieve`. One update is softmax attention with values = keys, i.e. the
core's ∂F/∂ζ of the softmax energy with q = ξ, k = v = X (tests check this).

Choosing β (the inverse temperature; `scaling` in the layers)
-------------------------------------------------------------
The fixed points of the update depend on β relative to the pattern separation
Δ_i = x_i·x_i − max_{j≠i} x_i·x_j (`separation`):

* small β (β·Δ ≪ 1): the softmax is nearly uniform, every query falls into one
  global fixed point near the mean of the patterns ("global averaging").
* intermediate β: metastable states, fixed points that average a *subset* of
  similar patterns (the attention heads Ramsauer et al. call "metastable").
* large β: every well-separated pattern is its own fixed point and a query
  close to x_i retrieves x_i, usually in one step ("single-pattern retrieval").
  Ramsauer et al. (Thm. 3/4) guarantee that x_i is (ε-close to) a fixed point once
        Δ_i ≥ 2/(βN) + β⁻¹ log(2 (N−1) N β M²).
  `suggest_beta` returns the smallest β meeting this for every pattern, times a
  safety factor; roughly β ≈ (2 log N + log(2βM²)) / Δ_min, i.e. the familiar
  "β ∝ log N / Δ_min" rule with the constant made explicit.

Plain retrieval mode (no projections, no layer): `retrieve(query, patterns,
suggest_beta(patterns))`. `posterior` gives the Bayesian reading: mean and
covariance of the values under p(i | ξ) ∝ exp(β x_i·ξ), from the core's
`ea.attend` / `ea.posterior_covariance`.

The NNX layers `Hopfield`, `HopfieldPooling`, `HopfieldLayer` follow
ml-jku/hopfield-layers: project stored/state/projection patterns into a
per-head association space, iterate `update` there (`update_steps_max`,
`update_steps_eps`, per head allowed), then read the final association out
onto the projected pattern projection with `ea.attend("softmax", ...)`.
"""
from __future__ import annotations

import dataclasses
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .contract import attend, attention_weights, posterior_covariance
from .primitives import logsumexp

__all__ = [
    "lse_energy", "hopfield_energy", "update", "association", "Retrieval", "retrieve",
    "suggest_beta", "separation", "top_k_mass", "classify_heads", "HEAD_CLASSES",
    "stationarity", "posterior", "Hopfield", "HopfieldPooling", "HopfieldLayer",
]

# ------------------------------------------------------------------ validation


def _concrete(x):
    """x as a numpy array, or None under tracing (checks then happen at trace-free call sites)."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _check_finite(name, x):
    c = _concrete(x)
    if c is not None and c.size and not np.all(np.isfinite(c)):
        raise ValueError(f"{name} contains NaN or inf ({int(np.sum(~np.isfinite(c)))} entries)")


def _check_beta(beta, name="beta"):
    c = _concrete(beta)
    if c is not None and c.size and not np.all(np.isfinite(c) & (c > 0)):
        raise ValueError(f"{name} must be positive and finite (the inverse temperature); got "
                         f"{c.ravel()[:8].tolist()}")


def _prepare(xi, patterns, beta):
    """Check inputs; broadcast ξ and β to the common batch shape (..., d) / (...).

    ξ must carry the full batch shape: `update` takes jax.grad of a *sum* of
    per-query energies, which is per-query only if no batch axis is implicit.
    """
    X, xi = jnp.asarray(patterns), jnp.asarray(xi)
    if X.ndim < 2:
        raise ValueError(f"patterns must have shape (N, d) or (..., N, d); got {X.shape}")
    if X.shape[-2] == 0:
        raise ValueError("patterns is empty: store at least one pattern (N ≥ 1)")
    if xi.ndim < 1:
        raise ValueError("xi must have shape (..., d); got a scalar")
    if xi.shape[-1] != X.shape[-1]:
        raise ValueError(f"xi has width {xi.shape[-1]} but patterns have width {X.shape[-1]}; "
                         "states and stored patterns must live in the same space")
    _check_finite("patterns", X)
    _check_finite("xi", xi)
    _check_beta(beta)
    dtype = jnp.promote_types(jnp.result_type(xi, X), jnp.float32)
    beta = jnp.asarray(beta, dtype)
    try:
        batch = jnp.broadcast_shapes(xi.shape[:-1], X.shape[:-2], beta.shape)
    except ValueError:
        raise ValueError(f"cannot broadcast xi batch {xi.shape[:-1]}, patterns batch "
                         f"{X.shape[:-2]} and beta {beta.shape} together") from None
    xi = jnp.broadcast_to(xi.astype(dtype), batch + xi.shape[-1:])
    return xi, X.astype(dtype), jnp.broadcast_to(beta, batch)


# -------------------------------------------------------- the energy (pure)


def _overlaps(xi, X):
    """x_i·ξ as (..., N); matmul broadcasts pattern batch axes without copying X."""
    return jnp.matmul(X, xi[..., None])[..., 0]


def _lse(xi, X, beta):
    return logsumexp(beta[..., None] * _overlaps(xi, X), axis=-1) / beta


def _energy(xi, X, beta):
    # −lse + β⁻¹ log N = −β⁻¹ log mean_i exp(β s_i), written as
    # −s_max − β⁻¹ log1p(mean_i expm1(β(s_i − s_max))): at small β the two large terms
    # β⁻¹ log Σ and β⁻¹ log N would cancel and leave fp32 noise ~ ulp(log N)/β.
    s = _overlaps(xi, X)
    s_max = jax.lax.stop_gradient(jnp.max(s, axis=-1))        # any shift is exact; derivatives too
    mean = jnp.mean(jnp.expm1(beta[..., None] * (s - s_max[..., None])), axis=-1)
    m2 = jnp.max(jnp.sum(X * X, axis=-1), axis=-1)            # M² per pattern set
    return -s_max - jnp.log1p(mean) / beta + 0.5 * jnp.sum(xi * xi, -1) + 0.5 * m2


def _update(xi, X, beta):
    # The CCCP step is the gradient of the concave part: ∇_ξ lse = X softmax(β Xᵀξ).
    return jax.grad(lambda x: _lse(x, X, beta).sum())(xi)


def _association(xi, X, beta):
    # softmax(β Xᵀξ) = ∂lse/∂(Xᵀξ): the same energy, differentiated at the overlaps.
    s = _overlaps(xi, X)
    return jax.grad(lambda s: (logsumexp(beta[..., None] * s, axis=-1) / beta).sum())(s)


_JITTED = {}


def _jit(fn):
    """Public entry points run jitted: eager jax.grad dispatches (and compiles) op by op."""
    if fn not in _JITTED:
        _JITTED[fn] = jax.jit(fn)
    return _JITTED[fn]


def lse_energy(xi, patterns, beta):
    """β⁻¹ log Σ_i exp(β x_i·ξ): xi (..., d), patterns (N, d) or (..., N, d) -> (...)."""
    return _jit(_lse)(*_prepare(xi, patterns, beta))


def hopfield_energy(xi, patterns, beta):
    """E(ξ) = −lse(β, Xᵀξ) + ½ξᵀξ + β⁻¹ log N + ½M² (Ramsauer et al. 2020) -> (...).

    The constants only shift E, to E ≥ ½(‖ξ‖ − M)² ≥ 0; they do not move the minima."""
    return _jit(_energy)(*_prepare(xi, patterns, beta))


def update(xi, patterns, beta):
    """One CCCP step ξ ← ∇_ξ lse_energy = X softmax(β Xᵀξ), by jax.grad. -> (..., d)."""
    return _jit(_update)(*_prepare(xi, patterns, beta))


def association(xi, patterns, beta):
    """softmax(β Xᵀξ) over the stored patterns -> (..., N)."""
    return _jit(_association)(*_prepare(xi, patterns, beta))


# ----------------------------------------------------------------- retrieval


@partial(jax.tree_util.register_dataclass,
         data_fields=["result", "trajectory", "associations", "energies", "num_steps"],
         meta_fields=[])
@dataclasses.dataclass
class Retrieval:
    """What `retrieve` saw. `steps` is the loop length (static); stopped queries are frozen.

    result:       (..., d)            the final state
    trajectory:   (steps+1, ..., d)   states, trajectory[0] = the query
    associations: (steps, ..., N)     associations[t] = softmax(β Xᵀ trajectory[t]), the
                                      weights step t+1 applies (trajectory[t+1] = X·them
                                      while the query is still running)
    energies:     (steps+1, ...)      hopfield_energy along the trajectory (non-increasing)
    num_steps:    (...) int32         updates actually applied to each query / head
    """
    result: jax.Array
    trajectory: jax.Array
    associations: jax.Array
    energies: jax.Array
    num_steps: jax.Array


def _stop_arg(value, name, batch, dtype, *, integer):
    a = jnp.asarray(value)
    c = _concrete(a)
    if c is not None:
        bad = ~np.isfinite(c) | (c < 0)
        if integer:
            bad |= c != np.round(c)
        if np.any(bad):
            kind = "a non-negative integer" if integer else "non-negative and finite"
            raise ValueError(f"{name} must be {kind} (scalar or per head); got {c.tolist()}")
    try:
        return jnp.broadcast_to(a.astype(dtype), batch)
    except ValueError:
        raise ValueError(f"{name} of shape {a.shape} does not broadcast to the query/head "
                         f"shape {batch}") from None


def retrieve(xi, patterns, beta, *, update_steps_max=None, update_steps_eps=1e-4,
             max_steps: int = 100) -> Retrieval:
    """Iterate `update` from ξ until each query/head stops; jit-able (fixed-shape scan).

    A query/head stops after `update_steps_max` updates, or once an update changes
    its association softmax(β Xᵀξ) by less than `update_steps_eps` (max abs
    difference), whichever comes first; it then stays frozen while others go on.
    Both may be per head: arrays broadcastable to xi.shape[:-1] (e.g. (H,)).
    update_steps_max=None: until convergence. update_steps_eps=None: no eps rule.

    The loop runs `max_steps` iterations when update_steps_max is None (or traced),
    else max(update_steps_max) (an explicit budget wins over max_steps).
    """
    xi, X, beta = _prepare(xi, patterns, beta)
    batch = xi.shape[:-1]
    if not isinstance(max_steps, (int, np.integer)) or max_steps < 0:
        raise ValueError(f"max_steps must be a non-negative int (the static loop length); got {max_steps!r}")
    if update_steps_max is None:
        length, smax = int(max_steps), jnp.full(batch, max_steps, jnp.int32)
    else:
        smax = _stop_arg(update_steps_max, "update_steps_max", batch, jnp.int32, integer=True)
        c = _concrete(update_steps_max)
        length = int(max_steps) if c is None else int(np.max(c))
    eps = jnp.full(batch, -1.0, xi.dtype) if update_steps_eps is None else \
        _stop_arg(update_steps_eps, "update_steps_eps", batch, xi.dtype, integer=False)
    return _retrieve_scan(xi, X, beta, smax, eps, length=length)


@partial(jax.jit, static_argnames="length")
def _retrieve_scan(xi0, X, beta, smax, eps, *, length):
    def step(carry, _):
        xi, p, n, done = carry
        xi_new = _update(xi, X, beta)
        p_new = _association(xi_new, X, beta)
        delta = jnp.max(jnp.abs(p_new - p), axis=-1)
        run = ~done
        p_used = p
        xi = jnp.where(run[..., None], xi_new, xi)             # frozen queries keep their state
        p = jnp.where(run[..., None], p_new, p)
        n = n + run.astype(jnp.int32)
        done = done | (n >= smax) | (delta < eps)
        return (xi, p, n, done), (xi, p_used, _energy(xi, X, beta))

    p0 = _association(xi0, X, beta)
    n0 = jnp.zeros(xi0.shape[:-1], jnp.int32)
    carry0 = (xi0, p0, n0, smax <= 0)
    (xi, _, n, _), (traj, assoc, energies) = jax.lax.scan(step, carry0, None, length=length)
    return Retrieval(
        result=xi,
        trajectory=jnp.concatenate([xi0[None], traj]),
        associations=assoc,
        energies=jnp.concatenate([_energy(xi0, X, beta)[None], energies]),
        num_steps=n,
    )


# ------------------------------------------------------------- β guidance


def separation(patterns):
    """Δ_i = x_iᵀx_i − max_{j≠i} x_iᵀx_j for patterns (..., N, d) -> (..., N).

    Δ_i > 0 is needed for x_i to be a fixed point at any β; +inf when N = 1."""
    X = jnp.asarray(patterns)
    if X.ndim < 2 or X.shape[-2] == 0:
        raise ValueError(f"patterns must have shape (N, d) with N ≥ 1; got {X.shape}")
    _check_finite("patterns", X)
    return _separation(X.astype(jnp.promote_types(X.dtype, jnp.float32)))


@jax.jit
def _separation(X):
    gram = X @ jnp.swapaxes(X, -1, -2)
    n = X.shape[-2]
    self_overlap = jnp.diagonal(gram, axis1=-2, axis2=-1)
    others = jnp.where(jnp.eye(n, dtype=bool), -jnp.inf, gram)
    return self_overlap - jnp.max(others, axis=-1)


def suggest_beta(patterns, *, safety: float = 1.0) -> float:
    """A β at which every stored pattern is a well-separated fixed point.

    The smallest β with Δ_min ≥ 2/(βN) + β⁻¹ log(2(N−1)NβM²) (Ramsauer et al.
    2020, Thm. 3/4: then x_i's fixed point is ε-close to x_i and retrieval from
    its neighbourhood converges to it), times `safety`. Solved by bisection: the
    condition reads βΔ − log β ≥ C, increasing in β for β > 1/Δ. The answer is
    roughly (2 log N + log(2βM²))/Δ_min, the "β ∝ log N / Δ_min" rule. Below it
    expect metastable mixtures; far below, one global average (see module doc).
    """
    X = np.asarray(patterns, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"patterns must have shape (N, d) with N ≥ 1; got {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError("patterns contains NaN or inf")
    if not safety > 0:
        raise ValueError(f"safety must be positive; got {safety}")
    n, d = X.shape
    m2 = float(np.max(np.sum(X * X, axis=1)))
    if n == 1:           # one pattern: the unique minimum for every β
        return safety * d ** -0.5
    delta = float(np.min(np.asarray(separation(X))))
    if not delta > 0:
        raise ValueError(f"patterns are not separable (Δ_min = {delta:.4g} ≤ 0: a duplicate, or a "
                         "pattern inside the cone of a longer one); no β makes every pattern a "
                         "fixed point. Deduplicate or normalise the patterns.")
    c = 2.0 / n + math.log(2.0 * (n - 1) * n * m2)
    h = lambda b: b * delta - math.log(b) - c                  # condition: h(β) ≥ 0
    lo, hi = 1.0 / delta, 2.0 / delta
    if h(lo) >= 0:       # holds for every β ≥ 1/Δ: return the natural scale
        return safety * lo
    while h(hi) < 0:
        hi *= 2.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if h(mid) >= 0 else (mid, hi)
    return safety * hi


# -------------------------------------------------------------- diagnostics


def top_k_mass(weights, mass: float = 0.9):
    """How many of the largest weights hold `mass` of each row's total (..., N) -> (...) int32.

    Ramsauer et al. §4's head statistic: k small = retrieval of few patterns."""
    if not 0 < mass <= 1:
        raise ValueError(f"mass must be in (0, 1]; got {mass}")
    return _top_k_mass(jnp.asarray(weights), mass)


@jax.jit
def _top_k_mass(w, mass):
    w = w / jnp.sum(w, axis=-1, keepdims=True)
    csum = jnp.cumsum(-jnp.sort(-w, axis=-1), axis=-1)
    k = 1 + jnp.sum(csum < mass - 1e-6, axis=-1)              # tolerance: 0.5+0.4 vs 0.9 in fp32
    return jnp.minimum(k, w.shape[-1]).astype(jnp.int32)


HEAD_CLASSES = ("global", "metastable", "single")


def classify_heads(weights, *, mass: float = 0.9, head_axis: int | None = None):
    """(codes, HEAD_CLASSES): 0 "global" (k > N/2), 1 "metastable" (1 < k ≤ N/2), 2 "single" (k = 1).

    k = top_k_mass(weights, mass). With head_axis (e.g. 1 for ea.attention_weights'
    (B, H, Tq, Tk)), k is the median over every other axis, one code per head;
    otherwise every row (..., N) gets a code."""
    w = jnp.asarray(weights)
    n = w.shape[-1]
    k = top_k_mass(w, mass).astype(jnp.float32)
    if head_axis is not None:
        axis = head_axis + w.ndim if head_axis < 0 else head_axis
        if not 0 <= axis < w.ndim - 1:
            raise ValueError(f"head_axis={head_axis} must name an axis of weights {w.shape} other "
                             "than the last (the stored patterns)")
        k = jnp.moveaxis(k, axis, 0)
        k = jnp.median(k.reshape(k.shape[0], -1), axis=1)
    codes = jnp.where(k <= 1, 2, jnp.where(k > n / 2, 0, 1)).astype(jnp.int32)
    return codes, HEAD_CLASSES


def stationarity(patterns, beta, points=None, *, tol: float = 1e-4):
    """Are the stored patterns (or `points`, (P, d)) minima of hopfield_energy?

    Returns {"grad_norm": (P,), "min_eigenvalue": (P,), "psd": (P,) bool}: ‖∇E‖ and
    the smallest eigenvalue of the Hessian (jax.hessian); psd = min eig ≥ −tol.
    Both go to (0, ≥ 0) at well-separated patterns for large β."""
    X = jnp.asarray(patterns)
    if X.ndim != 2:
        raise ValueError(f"patterns must have shape (N, d); got {X.shape}")
    P = X if points is None else jnp.asarray(points)
    if P.ndim != 2:
        raise ValueError(f"points must have shape (P, d); got {P.shape}")
    grad_norm, min_eig = _stationarity(*_prepare(P, X, jnp.asarray(beta)))
    return {"grad_norm": grad_norm, "min_eigenvalue": min_eig, "psd": min_eig >= -tol}


@jax.jit
def _stationarity(P, X, b):
    e = lambda p, bb: _energy(p, X, bb)
    grads = jax.vmap(jax.grad(e))(P, b)
    hess = jax.vmap(jax.hessian(e))(P, b)                     # (P, d, d)
    return jnp.linalg.norm(grads, axis=-1), jnp.linalg.eigvalsh(hess)[..., 0]


def posterior(xi, patterns, beta, values=None):
    """Mean and covariance of the values under p(i | ξ) ∝ exp(β x_i·ξ), from the core.

    xi (..., d), patterns (N, d), values (N, dv) (default: the patterns), β scalar
    or broadcastable to xi.shape[:-1] -> mean (..., dv), cov (..., dv, dv). These
    are ∂F/∂ζ and ∂²F/∂ζ² of the softmax energy with q = ξ, k = X, v = values
    (ea.attend / ea.posterior_covariance); the mean at values = X is `update`.
    """
    X = jnp.asarray(patterns)
    if X.ndim != 2:
        raise ValueError(f"patterns must have shape (N, d); got {X.shape}")
    xi, X, beta = _prepare(xi, X, beta)
    V = X if values is None else jnp.asarray(values, X.dtype)
    if V.ndim != 2 or V.shape[0] != X.shape[0]:
        raise ValueError(f"values must have shape (N={X.shape[0]}, dv); got {V.shape}")
    _check_finite("values", V)
    batch, dv = xi.shape[:-1], V.shape[-1]
    b = _concrete(beta)
    one_beta = b is not None and b.size > 0 and bool(np.all(b == b.flat[0]))
    mean, cov = _posterior(xi.reshape(-1, xi.shape[-1]), X, V, beta.reshape(-1), one_beta=one_beta)
    return mean.reshape(batch + (dv,)), cov.reshape(batch + (dv, dv))


@partial(jax.jit, static_argnames="one_beta")
def _posterior(xi, X, V, beta, *, one_beta):
    k, v = X[:, None, :], V[:, None, :]                        # (N, 1 kv head, ·)
    if one_beta:    # queries along the sequence axis: (Q, 1 head, d)
        q, b = xi[:, None, :], beta[0]
    else:           # per-query β: queries as heads (1, Q, d), so the core's per-head β applies
        q, b = xi[None], beta
    mean = attend("softmax", q, k, v, beta=b)
    cov = posterior_covariance("softmax", q, k, v, beta=b)
    if not one_beta:
        mean, cov = mean[0], cov[0]
    else:
        mean, cov = mean[:, 0], cov[:, 0]
    return mean, cov


# ------------------------------------------------------------------ layers


def _per_head(value, name, num_heads, cast):
    """A scalar or one value per head, as a hashable static (float/int or tuple)."""
    if value is None:
        return None
    a = np.asarray(value)
    if a.ndim == 0:
        return cast(a)
    if a.shape != (num_heads,):
        raise ValueError(f"{name} must be a scalar or have one entry per head ({num_heads},); "
                         f"got shape {a.shape}")
    return tuple(cast(x) for x in a)


class Hopfield(nnx.Module):
    """Hopfield association (ml-jku/hopfield-layers semantics) on top of the energy core.

    __call__(stored (B, N, stored_pattern_size), state (B, S, input_size),
             projection (B, N, pattern_projection_size) = stored) -> (B, S, output_size)

    Each input is LayerNorm-ed (normalize_*) and projected to num_heads heads
    (static_*: no projection, the input already is num_heads × head width). In
    that association space the state is updated by `update` (CCCP steps on the
    projected stored patterns, with per-head β = `scaling`) until
    `update_steps_max` (0 = none: plain attention; None = until convergence,
    capped by `max_steps`) or `update_steps_eps`, then the final association is
    read out onto the projected pattern projection by ea.attend("softmax", ...),
    and the heads are mixed by the output projection (unless disable_out_projection).

    hidden_size / pattern_size are per-head widths of the association space and of
    the read-out patterns (defaults input_size // num_heads, hidden_size).
    """

    def __init__(self, input_size: int, hidden_size: int | None = None,
                 output_size: int | None = None, pattern_size: int | None = None, *,
                 num_heads: int = 1, scaling=None, update_steps_max=0, update_steps_eps=1e-4,
                 max_steps: int = 100,
                 normalize_stored_pattern: bool = True, normalize_state_pattern: bool = True,
                 normalize_pattern_projection: bool = True,
                 static_stored_pattern: bool = False, static_state_pattern: bool = False,
                 static_pattern_projection: bool = False, disable_out_projection: bool = False,
                 stored_pattern_size: int | None = None, pattern_projection_size: int | None = None,
                 input_bias: bool = True, rngs: nnx.Rngs):
        if num_heads < 1:
            raise ValueError(f"num_heads must be ≥ 1; got {num_heads}")
        if hidden_size is None:
            if input_size % num_heads:
                raise ValueError(f"input_size={input_size} is not divisible by num_heads={num_heads}; "
                                 "pass hidden_size (the per-head association width)")
            hidden_size = input_size // num_heads
        pattern_size = hidden_size if pattern_size is None else pattern_size
        stored_pattern_size = input_size if stored_pattern_size is None else stored_pattern_size
        pattern_projection_size = (stored_pattern_size if pattern_projection_size is None
                                   else pattern_projection_size)
        heads_out = num_heads * pattern_size
        if disable_out_projection:
            if output_size not in (None, heads_out):
                raise ValueError(f"disable_out_projection: the output is num_heads × pattern_size = "
                                 f"{heads_out} wide, so output_size={output_size} cannot be honoured")
            output_size = heads_out
        output_size = input_size if output_size is None else output_size

        self.scaling = _per_head(hidden_size ** -0.5 if scaling is None else scaling,
                                 "scaling", num_heads, float)
        _check_beta(np.asarray(self.scaling), "scaling")
        self.update_steps_max = _per_head(update_steps_max, "update_steps_max", num_heads, int)
        if self.update_steps_max is not None and np.any(np.asarray(self.update_steps_max) < 0):
            raise ValueError(f"update_steps_max must be ≥ 0 (0 = plain attention) or None; "
                             f"got {update_steps_max}")
        self.update_steps_eps = _per_head(update_steps_eps, "update_steps_eps", num_heads, float)
        if self.update_steps_eps is not None and np.any(np.asarray(self.update_steps_eps) < 0):
            raise ValueError(f"update_steps_eps must be ≥ 0 (or None: no eps rule); got {update_steps_eps}")
        self.max_steps = int(max_steps)
        self.num_heads, self.hidden_size, self.pattern_size = num_heads, hidden_size, pattern_size
        self.input_size, self.output_size = input_size, output_size
        self.stored_pattern_size, self.pattern_projection_size = stored_pattern_size, pattern_projection_size
        self.static = (static_stored_pattern, static_state_pattern, static_pattern_projection)

        def norm(width, on):
            return nnx.LayerNorm(width, epsilon=1e-5, rngs=rngs) if on else None

        def proj(width, head_width, static, name):
            if static:   # identity: the input must already be the heads, side by side
                if width != num_heads * head_width:
                    raise ValueError(f"static_{name}: input width {width} must equal num_heads × "
                                     f"head width = {num_heads} × {head_width}")
                return None
            return nnx.Linear(width, num_heads * head_width, use_bias=input_bias, rngs=rngs)

        self.norm_stored = norm(stored_pattern_size, normalize_stored_pattern)
        self.norm_state = norm(input_size, normalize_state_pattern)
        self.norm_projection = norm(pattern_projection_size, normalize_pattern_projection)
        self.stored_proj = proj(stored_pattern_size, hidden_size, static_stored_pattern, "stored_pattern")
        self.state_proj = proj(input_size, hidden_size, static_state_pattern, "state_pattern")
        self.projection_proj = proj(pattern_projection_size, pattern_size, static_pattern_projection,
                                    "pattern_projection")
        self.out_proj = None if disable_out_projection else nnx.Linear(heads_out, output_size, rngs=rngs)

    def _heads(self, x, norm, proj, width, name):
        if getattr(x, "ndim", None) != 3 or x.shape[-1] != width:
            raise ValueError(f"{name} must have shape (B, length, {width}); got "
                             f"{getattr(x, 'shape', type(x).__name__)}")
        if norm is not None:
            x = norm(x)
        if proj is not None:
            x = proj(x)
        return x.reshape(*x.shape[:-1], self.num_heads, -1)

    def __call__(self, stored, state, projection=None, *, return_info: bool = False):
        """(B, N, d_stored), (B, S, d_state), (B, N, d_proj) -> (B, S, output_size).

        return_info: also a dict, per head: "association" (B, H, S, N) the read-out
        weights; "associations" (steps, B, H, S, N) and "energies" (steps+1, B, H, S)
        along the retrieval; "num_steps" (B, H, S)."""
        projection = stored if projection is None else projection
        k = self._heads(stored, self.norm_stored, self.stored_proj, self.stored_pattern_size, "stored")
        q = self._heads(state, self.norm_state, self.state_proj, self.input_size, "state")
        v = self._heads(projection, self.norm_projection, self.projection_proj,
                        self.pattern_projection_size, "projection")
        if not (k.shape[0] == q.shape[0] == v.shape[0]) or k.shape[1] != v.shape[1]:
            raise ValueError(f"stored {stored.shape}, state {state.shape} and projection "
                             f"{projection.shape} must share B, and stored/projection share N")
        beta = jnp.asarray(self.scaling, jnp.float32)                       # () or (H,)
        # Retrieval in the association space: each (batch, query, head) is one Hopfield state
        # against that head's projected stored patterns, (B, 1, H, N, hidden).
        r = retrieve(q, jnp.swapaxes(k, 1, 2)[:, None], beta,
                     update_steps_max=self.update_steps_max, update_steps_eps=self.update_steps_eps,
                     max_steps=self.max_steps)
        # Read-out = one more association of the final state, onto the pattern projection:
        # with update_steps_max=0 this is exactly softmax attention, ∂F/∂ζ of the core's energy.
        out = attend("softmax", r.result.astype(q.dtype), k, v, beta=beta)  # (B, S, H, pattern)
        out = out.reshape(*out.shape[:2], -1)
        if self.out_proj is not None:
            out = self.out_proj(out)
        if not return_info:
            return out
        info = {
            "association": attention_weights("softmax", r.result, k, beta=beta),
            "associations": jnp.moveaxis(r.associations, 3, 2),
            "energies": jnp.moveaxis(r.energies, 3, 2),
            "num_steps": jnp.moveaxis(r.num_steps, 2, 1),
        }
        return out, info


class HopfieldPooling(nnx.Module):
    """A trainable state pattern (`quantity` queries) attending over the input.

    (B, N, input_size) -> (B, quantity, output_size), or (B, quantity · output_size)
    with flatten=True (hopfield-layers' shape). __call__(x, projection=None): x is
    the stored pattern, and the pattern projection too unless given. The other
    options are Hopfield's; the query is projected like any state pattern (or, with
    static_state_pattern, lives directly in the association space)."""

    def __init__(self, input_size: int, hidden_size: int | None = None,
                 output_size: int | None = None, *, quantity: int = 1, flatten: bool = False,
                 rngs: nnx.Rngs, **hopfield_kwargs):
        if quantity < 1:
            raise ValueError(f"quantity (number of pooling queries) must be ≥ 1; got {quantity}")
        self.hopfield = Hopfield(input_size, hidden_size, output_size, rngs=rngs, **hopfield_kwargs)
        width = (self.hopfield.num_heads * self.hopfield.hidden_size
                 if self.hopfield.static[1] else input_size)
        self.query = nnx.Param(0.02 * jax.random.normal(rngs.params(), (quantity, width)))
        self.quantity, self.flatten = quantity, flatten

    def __call__(self, x, projection=None, *, return_info: bool = False):
        if getattr(x, "ndim", None) != 3:
            raise ValueError(f"input must have shape (B, N, d); got {getattr(x, 'shape', x)}")
        query = self.query[...]
        state = jnp.broadcast_to(query, (x.shape[0],) + query.shape)
        res = self.hopfield(x, state.astype(x.dtype), projection, return_info=return_info)
        out, info = res if return_info else (res, None)
        if self.flatten:
            out = out.reshape(out.shape[0], -1)
        return (out, info) if return_info else out


class HopfieldLayer(nnx.Module):
    """A trainable lookup memory of `quantity` stored patterns, queried by the input.

    (B, S, input_size) -> (B, S, output_size). The stored patterns (and, with
    lookup_weights_as_separated, separate trainable targets used as the pattern
    projection) are parameters of width stored_pattern_size (default input_size)."""

    def __init__(self, input_size: int, hidden_size: int | None = None,
                 output_size: int | None = None, *, quantity: int = 1,
                 lookup_weights_as_separated: bool = False, rngs: nnx.Rngs, **hopfield_kwargs):
        if quantity < 1:
            raise ValueError(f"quantity (number of stored patterns) must be ≥ 1; got {quantity}")
        self.hopfield = h = Hopfield(input_size, hidden_size, output_size, rngs=rngs, **hopfield_kwargs)
        if not lookup_weights_as_separated and h.pattern_projection_size != h.stored_pattern_size:
            raise ValueError("pattern_projection_size differs from stored_pattern_size: pass "
                             "lookup_weights_as_separated=True for separate lookup targets")
        init = lambda width: nnx.Param(0.02 * jax.random.normal(rngs.params(), (quantity, width)))
        self.lookup = init(h.stored_pattern_size)
        self.targets = init(h.pattern_projection_size) if lookup_weights_as_separated else None
        self.quantity = quantity

    def __call__(self, x, *, return_info: bool = False):
        if getattr(x, "ndim", None) != 3:
            raise ValueError(f"input must have shape (B, S, d); got {getattr(x, 'shape', x)}")
        b = x.shape[0]
        expand = lambda p: jnp.broadcast_to(p[...], (b,) + p[...].shape).astype(x.dtype)
        targets = None if self.targets is None else expand(self.targets)
        stored = expand(self.lookup)
        return self.hopfield(stored, x, targets, return_info=return_info)
