"""The retrieval energy of any energy, and the dynamics of its attention update.

**The retrieval energy of any energy.** Use the stored patterns X (N, d) as keys
*and* values and a state ξ as the only query. With F(ξ) the energy value from
`attend_with_energy(name, q=ξ, k=X, v=X)` (one query, one head, ζ = 0):

    E_name(ξ) = −F(ξ)/β + ½‖ξ‖²

For softmax this is the modern-Hopfield energy of Ramsauer et al. (2020),
−lse(β, Xᵀξ) + ½ξᵀξ (`hopfield.lse_energy`). For every energy that sees ξ only
through the scores β ξ·x_j (softmax, sigmoid, sparsemax, entmax, and a user energy
built with `ea.scores`), ∇E = ξ − ∂F/∂ζ: the fixed points of the attention update

    ξ ← ∂F/∂ζ = attend(name, ξ, X, X)

are the stationary points of E, and since F is convex in the scores the update is a
CCCP step that never increases E. Two exceptions: `distance` already contains the
quadratic (its scores are −β‖ξ − x_j‖²), so E = −F/(2β) there; an energy without a
`beta` parameter (`linear`) gets E = −F + ½‖ξ‖², for which the update is not
guaranteed to descend (its F is not a function of ξ·x_j).

**Labels.** A state that has converged is labelled with stored pattern j when it is
within `tol` of x_j (default a quarter of the smallest distance between two
patterns) *and* its association weight on j exceeds 0.9; otherwise it is
"metastable" (a mixture, or not converged), label N.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ..contract import attend_with_energy, attention_weights
from ..registry import get_energy

Energy = str | Callable



def takes_beta(energy: Energy) -> bool:
    """Does the energy function accept a `beta` keyword?"""
    try:
        sig = inspect.signature(get_energy(energy))
    except (TypeError, ValueError):
        return True
    return "beta" in sig.parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())


def _energy_name(energy: Energy) -> str:
    return energy if isinstance(energy, str) else getattr(energy, "__name__", repr(energy))


def energy_scaling(energy: Energy, beta):
    """(s, c) with E(ξ) = −F(ξ)/s + c·½‖ξ‖² (see the module docstring)."""
    if not takes_beta(energy):
        return 1.0, 1.0
    if _energy_name(energy) == "distance":
        return 2.0 * beta, 0.0
    return beta, 1.0


def energy_formula(energy: Energy) -> str:
    """The retrieval energy of `energy` as a short formula (for titles)."""
    if not takes_beta(energy):
        return "E = −F + ½‖ξ‖²"
    if _energy_name(energy) == "distance":
        return "E = −F/(2β)"
    return "E = −F/β + ½‖ξ‖²"


def _kwargs(energy, beta, params):
    kw = dict(params)
    if takes_beta(energy):
        kw["beta"] = beta
    return kw


def _freeze(params: dict | None) -> tuple:
    """Energy options as a hashable, static tuple (they are names and numbers)."""
    return tuple(sorted((params or {}).items()))


def _one_query(energy, xi, patterns, beta, params):
    """(∂F/∂ζ, E) for a single state ξ (d,) against patterns (N, d)."""
    q = xi[None, None, :]                  # (Tq=1, H=1, d), unbatched
    k = patterns[:, None, :]               # (N, H_kv=1, d): keys = values = patterns
    out, f = attend_with_energy(energy, q, k, k, **_kwargs(energy, beta, dict(params)))
    s, c = energy_scaling(energy, beta)
    return out[0, 0], -f / s + c * 0.5 * jnp.sum(xi * xi)


@partial(jax.jit, static_argnums=(0, 4))
def _update_and_energy(energy, xi, patterns, beta, params):
    return jax.vmap(lambda x: _one_query(energy, x, patterns, beta, params))(xi)


@partial(jax.jit, static_argnums=(0, 4))
def _weights(energy, xi, patterns, beta, params):
    def one(x):
        w = attention_weights(energy, x[None, None, :], patterns[:, None, :],
                              **_kwargs(energy, beta, dict(params)))
        return w[0, 0]                     # unbatched (H, Tq, Tk) -> (Tk,)
    return jax.vmap(one)(xi)


def _flat(xi, patterns):
    xi = jnp.asarray(xi, jnp.float32)
    patterns = jnp.asarray(patterns, jnp.float32)
    if patterns.ndim != 2 or xi.shape[-1] != patterns.shape[-1]:
        raise ValueError(f"states must be (..., d) and patterns (N, d); got {xi.shape} and "
                         f"{patterns.shape}")
    return xi.reshape(-1, xi.shape[-1]), patterns, xi.shape[:-1]


def retrieval_energy(energy: Energy, xi, patterns, *, beta: float = 1.0, **params):
    """E_name(ξ) for states (..., d) against patterns (N, d) -> (...)."""
    flat, patterns, lead = _flat(xi, patterns)
    _, e = _update_and_energy(energy, flat, patterns, jnp.float32(beta), _freeze(params))
    return e.reshape(lead)


def update(energy: Energy, xi, patterns, *, beta: float = 1.0, **params):
    """One attention step ξ ← ∂F/∂ζ with keys = values = patterns: (..., d) -> (..., d)."""
    flat, patterns, lead = _flat(xi, patterns)
    out, _ = _update_and_energy(energy, flat, patterns, jnp.float32(beta), _freeze(params))
    return out.reshape(*lead, -1)


def associations(energy: Energy, xi, patterns, *, beta: float = 1.0, **params):
    """Attention weights ∂F/∂s of each state over the patterns: (..., d) -> (..., N)."""
    flat, patterns, lead = _flat(xi, patterns)
    w = _weights(energy, flat, patterns, jnp.float32(beta), _freeze(params))
    return w.reshape(*lead, -1)


@partial(jax.jit, static_argnums=(0, 4, 5))
def _scan(energy, xi, patterns, beta, params, steps):
    def body(x, _):
        new, e = _update_and_energy(energy, x, patterns, beta, params)
        return new, (x, e)
    last, (traj, energies) = jax.lax.scan(body, xi, None, length=steps)
    _, e_last = _update_and_energy(energy, last, patterns, beta, params)
    return (jnp.concatenate([traj, last[None]]), jnp.concatenate([energies, e_last[None]]))


def iterate(energy: Energy, xi, patterns, *, beta: float = 1.0, steps: int = 20, **params):
    """A fixed number of updates: (trajectory (steps+1, ..., d), energies (steps+1, ...))."""
    flat, patterns, lead = _flat(xi, patterns)
    traj, e = _scan(energy, flat, patterns, jnp.float32(beta), _freeze(params), int(steps))
    return traj.reshape(steps + 1, *lead, -1), e.reshape(steps + 1, *lead)


@partial(jax.jit, static_argnums=(0, 4, 5, 6))
def _converge(energy, xi, patterns, beta, params, max_steps, eps):
    def cond(state):
        _, _, done, it = state
        return (it < max_steps) & ~jnp.all(done)

    def body(state):
        x, steps, done, it = state
        new, _ = _update_and_energy(energy, x, patterns, beta, params)
        change = jnp.max(jnp.abs(new - x), axis=-1)
        new = jnp.where(done[:, None], x, new)
        steps = steps + (~done).astype(jnp.int32)
        return new, steps, done | (change < eps), it + 1

    n = xi.shape[0]
    x, steps, done, _ = jax.lax.while_loop(
        cond, body, (xi, jnp.zeros(n, jnp.int32), jnp.zeros(n, bool), 0))
    return x, steps, done


@dataclass
class Converged:
    result: np.ndarray        # (..., d) final states
    num_steps: np.ndarray     # (..., ) updates applied
    converged: np.ndarray     # (..., ) bool: last change below eps
    weights: np.ndarray       # (..., N) association weights of the final states


def converge(energy: Energy, xi, patterns, *, beta: float = 1.0, max_steps: int = 100,
             eps: float = 1e-4, **params) -> Converged:
    """Iterate the update until every state moves less than eps (max-norm) or max_steps.

    Softmax goes through `hopfield.retrieve` (the Hopfield layer's own loop); other
    energies through the generic update ξ ← attend(name, ξ, X, X)."""
    if energy == "softmax" and not params:
        from .. import hopfield
        xi = jnp.asarray(xi, jnp.float32)
        patterns = jnp.asarray(patterns, jnp.float32)
        r = hopfield.retrieve(xi, patterns, beta, update_steps_eps=eps, max_steps=max_steps)
        result = np.asarray(r.result)
        step = np.asarray(hopfield.update(r.result, patterns, beta))
        done = np.max(np.abs(step - result), axis=-1) < max(eps, 1e-6) * 10
        w = np.asarray(hopfield.association(r.result, patterns, beta))
        return Converged(result, np.asarray(r.num_steps), done, w)
    flat, patterns, lead = _flat(xi, patterns)
    x, steps, done = _converge(energy, flat, patterns, jnp.float32(beta), _freeze(params),
                               int(max_steps), float(eps))
    w = _weights(energy, x, patterns, jnp.float32(beta), _freeze(params))
    d = flat.shape[-1]
    return Converged(np.asarray(x).reshape(*lead, d), np.asarray(steps).reshape(lead),
                     np.asarray(done).reshape(lead), np.asarray(w).reshape(*lead, -1))


def min_separation(patterns) -> float:
    """Smallest Euclidean distance between two stored patterns."""
    p = np.asarray(patterns, np.float64)
    d = np.linalg.norm(p[:, None] - p[None], axis=-1)
    d[np.diag_indices_from(d)] = np.inf
    return float(d.min()) if len(p) > 1 else 1.0


def label_states(states, patterns, weights, *, tol: float | None = None,
                 min_weight: float = 0.9, converged=None):
    """Pattern index per state, or N (= len(patterns)) for metastable / not converged."""
    states, patterns, weights = (np.asarray(a, np.float64) for a in (states, patterns, weights))
    tol = 0.25 * min_separation(patterns) if tol is None else tol
    dist = np.linalg.norm(states[..., None, :] - patterns, axis=-1)
    nearest = dist.argmin(-1)
    ok = (dist.min(-1) < tol) & (weights.max(-1) > min_weight)
    if converged is not None:
        ok &= np.asarray(converged, bool)
    return np.where(ok, nearest, len(patterns))


# ============================================================ toy patterns and planes


def toy_patterns(num: int = 5, dim: int = 2, *, seed: int = 0, radius: float = 2.0):
    """Well-separated stored patterns (num, dim).

    dim = 2: points near a circle of the given radius at jittered, evenly spread angles.
    dim > 2: random directions scaled to the radius."""
    rng = np.random.default_rng(seed)
    if dim == 2:
        angles = (np.arange(num) + 0.3 * rng.uniform(-1, 1, num)) * 2 * np.pi / num + rng.uniform(0, 2 * np.pi)
        radii = radius * rng.uniform(0.8, 1.2, num)
        return np.stack([radii * np.cos(angles), radii * np.sin(angles)], -1).astype(np.float32)
    x = rng.standard_normal((num, dim))
    return (radius * x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def clustered_patterns(clusters: int = 4, per_cluster: int = 4, dim: int = 32, *,
                       spread: float = 0.5, seed: int = 0):
    """Unit-norm patterns (clusters·per_cluster, dim) in tight groups around random centres:
    at intermediate β each group merges into one metastable fixed point."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    centres /= np.linalg.norm(centres, axis=-1, keepdims=True)
    x = np.repeat(centres, per_cluster, 0) + spread * rng.standard_normal(
        (clusters * per_cluster, dim)) / math.sqrt(dim)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def plane_through(a, b, origin=None):
    """(origin, u, v): orthonormal basis of the plane origin + span(a - origin, b - origin)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    origin = np.zeros_like(a) if origin is None else np.asarray(origin, np.float64)
    u = a - origin
    if np.linalg.norm(u) < 1e-12:
        raise ValueError("the first direction of the plane is zero")
    u = u / np.linalg.norm(u)
    v = (b - origin) - u * np.dot(b - origin, u)
    if np.linalg.norm(v) < 1e-9 * max(1.0, np.linalg.norm(b)):
        raise ValueError("the two directions of the plane are parallel")
    v = v / np.linalg.norm(v)
    return origin, u, v


def _plane(patterns, plane):
    d = patterns.shape[1]
    if plane is None:
        if d == 2:
            return np.zeros(2), np.array([1.0, 0.0]), np.array([0.0, 1.0])
        plane = (0, 1)
    if isinstance(plane, tuple) and len(plane) == 2 and all(isinstance(i, (int, np.integer)) for i in plane):
        return plane_through(patterns[plane[0]], patterns[plane[1]])
    origin, u, v = (np.asarray(p, np.float64) for p in plane)
    return origin, u, v


def _to_plane(points, origin, u, v):
    rel = np.asarray(points, np.float64) - origin
    return np.stack([rel @ u, rel @ v], -1)


def _grid(extent, n, origin, u, v):
    x0, x1, y0, y1 = extent
    xs, ys = np.linspace(x0, x1, n), np.linspace(y0, y1, n)
    a, b = np.meshgrid(xs, ys)                         # (n, n): rows are y, columns are x
    points = origin + a[..., None] * u + b[..., None] * v
    return xs, ys, points.astype(np.float32)


def _extent(points2d, pad: float = 0.6):
    lo, hi = points2d.min(0), points2d.max(0)
    span = max(float((hi - lo).max()), 1e-3)
    c = (lo + hi) / 2
    half = span / 2 + pad * span
    return (c[0] - half, c[0] + half, c[1] - half, c[1] + half)

