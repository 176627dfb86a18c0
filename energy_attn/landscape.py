"""Pictures of energy landscapes: what an energy does when its attention is iterated.

    from energy_attn import landscape as ls
    X = ls.toy_patterns(4, seed=0)                            # stored patterns (N, 2)
    E = ls.retrieval_energy("entmax", xi, X, beta=2.0)        # any registered energy
    res = ls.plot_landscape(["softmax", "sparsemax"], X, beta=2.0, out="landscape.png")
    res = ls.plot_basins(X, out="basins.png")                 # res["labels"]: pattern per cell
    ls.report("report/")                                      # every toy picture + index.html
    ls.report("report/", loaded=train.run.load_run("runs/default"), run_label="runs/default")

Every `plot_*` function computes the numbers behind one picture, writes it as a PNG
(matplotlib, Agg canvas, no pyplot state) and returns those numbers as a dict.

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

import html
import inspect
import math
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .contract import attend_with_energy, attention_weights
from .primitives import default_beta
from .registry import available_energies, get_energy

Energy = str | Callable

# Energies whose single-query retrieval picture is meaningless: the Energy Transformer's
# attention excludes the key at the query's own position (the last pattern here).
NOT_RETRIEVAL_ENERGIES = ("energy_transformer",)

DEFAULT_BASIN_PANELS = (("softmax", 0.5), ("softmax", 1.0), ("softmax", 2.0), ("softmax", 8.0),
                        ("sparsemax", 0.5), ("entmax", 0.5))

# ============================================================ the retrieval energy


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
        from . import hopfield
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


# ============================================================ figure helpers


def _columns(panels: int) -> int:
    """Columns of a panel grid: up to 3, and 2 x 2 rather than 3 + 1."""
    return 2 if panels == 4 else min(panels, 3)


def _figure(ncols: int, nrows: int = 1, *, size=(4.6, 4.0)):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).reshape(nrows, ncols)
    return fig, axes


def _save(fig, out) -> str:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return str(out)


def _pattern_colors(n: int):
    from matplotlib import colormaps
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _off_plane(points, origin, u, v):
    """Distance of each point (..., d) from the plane origin + span(u, v)."""
    rel = np.asarray(points, np.float64) - origin
    inplane = (rel @ u)[..., None] * u + (rel @ v)[..., None] * v
    return np.linalg.norm(rel - inplane, axis=-1)


def _mark_patterns(ax, p2d, *, labels=True, colors=None, off_plane=None, max_labels: int = 10,
                   word: str = "patterns"):
    """Stars at patterns in the plane; patterns off it as hollow circles at their projections."""
    n = len(p2d)
    colors = colors or ["white"] * n
    off = np.zeros(n, bool) if off_plane is None else np.asarray(off_plane, bool)
    on = ~off
    ax.scatter(p2d[on, 0], p2d[on, 1], marker="*", s=260, c=[colors[j] for j in np.flatnonzero(on)],
               edgecolors="black", linewidths=1.2, zorder=5, label=f"stored {word}")
    if off.any():
        ax.scatter(p2d[off, 0], p2d[off, 1], marker="o", s=40, facecolors="none",
                   edgecolors="white", linewidths=1.4, zorder=5,
                   label=f"{word} off the plane (projected)")
    if labels:
        for j, (x, y) in enumerate(p2d):
            if off[j] and n > max_labels:
                continue
            ax.annotate(f"x{j}", (x, y), textcoords="offset points", xytext=(7, 7), fontsize=9,
                        fontweight="bold", color="black", zorder=6,
                        bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.7))


def _suptitle(fig, text, ncols=None, fontsize=11):
    """A suptitle wrapped to the figure's width (about 9 characters an inch at 11 pt)."""
    import textwrap
    width = max(30, int(fig.get_figwidth() * 9.5 * 11 / fontsize))
    lines = [w for line in text.split("\n") for w in (textwrap.wrap(line, width) or [""])]
    fig.suptitle("\n".join(lines), fontsize=fontsize)


def _draw_trajectory(ax, t2d, color="crimson"):
    ax.plot(t2d[:, 0], t2d[:, 1], "-", color=color, lw=1.6, zorder=4)
    ax.plot(t2d[:, 0], t2d[:, 1], "o", color=color, ms=2.5, zorder=4)
    ax.plot(t2d[0, 0], t2d[0, 1], "o", mfc="white", mec=color, ms=6, mew=1.5, zorder=4)
    # Arrow heads on the first segments long enough to show a direction.
    scale = np.ptp(t2d, axis=0).max() if len(t2d) > 1 else 0.0
    drawn = 0
    for p0, p1 in zip(t2d[:-1], t2d[1:]):
        if drawn >= 3 or scale == 0:
            break
        if np.linalg.norm(p1 - p0) > 0.04 * scale:
            ax.annotate("", xy=p1, xytext=p0, zorder=4,
                        arrowprops=dict(arrowstyle="-|>", color=color, lw=1.4, mutation_scale=14))
            drawn += 1


# ============================================================ 1. landscape


def _trim(traj, energies, nsteps):
    return ([traj[: s + 1, i] for i, s in enumerate(nsteps)],
            [energies[: s + 1, i] for i, s in enumerate(nsteps)])


def _softmax_trajectories(starts, patterns, beta, steps):
    """hopfield.retrieve trajectories, with energies on the landscape's scale (E without
    hopfield_energy's constants β⁻¹ log N + ½M²)."""
    from . import hopfield
    r = hopfield.retrieve(jnp.asarray(starts), jnp.asarray(patterns), beta, max_steps=steps)
    const = math.log(len(patterns)) / beta + 0.5 * float(np.max(np.sum(patterns ** 2, -1)))
    return _trim(np.asarray(r.trajectory), np.asarray(r.energies) - const, np.asarray(r.num_steps))


def _values_and_trajectories(energy, points, starts, patterns, beta, steps, params):
    """Energies at the grid points, and trajectories from the starts (trimmed once converged).

    Softmax: the grid by `retrieval_energy`, trajectories by `hopfield.retrieve`. Other
    energies: one `iterate` over grid and starts together (one compiled program; the
    grid's step-0 energies are the landscape)."""
    d = patterns.shape[1]
    flat = points.reshape(-1, d)
    if energy == "softmax" and not params:
        values = np.asarray(retrieval_energy("softmax", flat, patterns, beta=beta))
        trajs = _softmax_trajectories(starts, patterns, beta, steps) if len(starts) else ([], [])
        return values.reshape(points.shape[:-1]), trajs
    run_steps = steps if len(starts) else 0
    traj, energies = (np.asarray(a) for a in iterate(
        energy, np.concatenate([flat, starts]), patterns, beta=beta, steps=run_steps, **params))
    values = energies[0, : len(flat)].reshape(points.shape[:-1])
    traj, energies = traj[:, len(flat):], energies[:, len(flat):]
    change = np.abs(np.diff(traj, axis=0)).max(-1)                 # (steps, n)
    nsteps = np.array([int(np.argmax(c < 1e-4)) + 1 if (c < 1e-4).any() else run_steps
                       for c in change.T], int)
    return values, _trim(traj, energies, nsteps)


def landscape(energy: Energy, patterns, *, beta: float = 2.0, grid: int = 60, extent=None,
              plane=None, starts=None, num_starts: int = 6, steps: int = 30, seed: int = 0,
              params: dict | None = None) -> dict:
    """The numbers behind one landscape panel (no figure). See `plot_landscape`."""
    params = dict(params or {})
    patterns = np.asarray(patterns, np.float32)
    origin, u, v = _plane(patterns, plane)
    p2d = _to_plane(patterns, origin, u, v)
    if extent is None:
        extent = _extent(p2d)
    xs, ys, points = _grid(extent, grid, origin, u, v)
    if starts is None:
        rng = np.random.default_rng(seed)
        x0, x1, y0, y1 = extent
        ab = np.stack([rng.uniform(x0 + 0.1 * (x1 - x0), x1 - 0.1 * (x1 - x0), num_starts),
                       rng.uniform(y0 + 0.1 * (y1 - y0), y1 - 0.1 * (y1 - y0), num_starts)], -1)
        starts = origin + ab[:, :1] * u + ab[:, 1:] * v
    starts = np.asarray(starts, np.float32).reshape(-1, patterns.shape[1])
    values, (trajs, tenergies) = _values_and_trajectories(energy, points, starts, patterns, beta,
                                                          steps, params)
    return dict(energy=_energy_name(energy), beta=float(beta), xs=xs, ys=ys, points=points,
                values=values, patterns=patterns, patterns_2d=p2d, plane=(origin, u, v),
                off_plane=_off_plane(patterns, origin, u, v) > 1e-4 * max(1.0, float(np.abs(patterns).max())),
                extent=tuple(float(e) for e in extent), starts=starts, trajectories=trajs,
                trajectories_2d=[_to_plane(t, origin, u, v) for t in trajs],
                trajectory_energies=tenergies)


def _draw_landscape(fig, ax, res, *, title=None, show_colorbar=True):
    levels = 30
    vals = res["values"]
    cs = ax.contourf(res["xs"], res["ys"], vals, levels=levels, cmap="viridis")
    ax.contour(res["xs"], res["ys"], vals, levels=12, colors="k", linewidths=0.4, alpha=0.5)
    if show_colorbar:
        fig.colorbar(cs, ax=ax, shrink=0.9, label="retrieval energy E(ξ)")
    for t in res["trajectories_2d"]:
        _draw_trajectory(ax, t)
    _mark_patterns(ax, res["patterns_2d"], off_plane=res["off_plane"], labels=res.get("labels", True),
                   word=res.get("word", "patterns"))
    if res["off_plane"].any():
        ax.legend(loc="lower left", fontsize=7, framealpha=0.7)
    x0, x1, y0, y1 = res["extent"]
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect("equal")
    high_d = res["patterns"].shape[1] > 2
    ax.set_xlabel("coordinate along u" if high_d else "ξ₁")
    ax.set_ylabel("coordinate along v" if high_d else "ξ₂")
    ax.set_title(title or f"{res['energy']}, β = {res['beta']:g}:  {energy_formula(res['energy'])}",
                 fontsize=10)


def plot_landscape(energies: Energy | Sequence[Energy] = ("softmax", "sparsemax", "entmax"),
                   patterns=None, *, beta: float = 2.0, grid: int = 60, out="landscape.png",
                   seed: int = 0, plane=None, extent=None, steps: int = 30, num_starts: int = 6,
                   params: dict | None = None, title: str | None = None) -> dict:
    """Filled contours of E_name over a plane, one panel per energy, with the stored
    patterns (stars) and retrieval trajectories (from open circles, arrows show the way).

    patterns: (N, 2) toy patterns, or (N, d) with `plane` = (i, j) (the plane through the
        origin and patterns i, j; default (0, 1)) or (origin, u, v) with orthonormal u, v.
    Returns {"panels": [landscape(...) per energy], "path": out}."""
    if isinstance(energies, str) or callable(energies):
        energies = [energies]
    patterns = toy_patterns(5, seed=seed) if patterns is None else np.asarray(patterns, np.float32)
    if extent is None:
        origin, u, v = _plane(patterns, plane)
        extent = _extent(_to_plane(patterns, origin, u, v))
    panels = [landscape(e, patterns, beta=beta, grid=grid, extent=extent, plane=plane,
                        steps=steps, num_starts=num_starts, seed=seed, params=params)
              for e in energies]
    ncols = _columns(len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = _figure(ncols, nrows)
    for ax, res in zip(axes.flat, panels):
        _draw_landscape(fig, ax, res)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    d = patterns.shape[1]
    _suptitle(fig, title or (
        "Retrieval energy E(ξ) from F(ξ) = the energy with query ξ, keys = values = patterns "
        + ("(d = 2)" if d == 2 else f"on a plane through the origin (d = {d})")
        + "\nstars: stored patterns; red: iterates ξ ← ∂F/∂ζ from the open circles"), ncols)
    return dict(panels=panels, path=_save(fig, out))


# ============================================================ 2. basins of attraction


def basins(energy: Energy, patterns, *, beta: float, grid: int = 60, extent=None, plane=None,
           max_steps: int = 100, eps: float = 1e-4, tol: float | None = None,
           min_weight: float = 0.9, params: dict | None = None) -> dict:
    """Label every cell of a grid of initial states by the pattern it converges to."""
    params = dict(params or {})
    patterns = np.asarray(patterns, np.float32)
    origin, u, v = _plane(patterns, plane)
    p2d = _to_plane(patterns, origin, u, v)
    extent = _extent(p2d) if extent is None else extent
    xs, ys, points = _grid(extent, grid, origin, u, v)
    c = converge(energy, points, patterns, beta=beta, max_steps=max_steps, eps=eps, **params)
    labels = label_states(c.result, patterns, c.weights, tol=tol, min_weight=min_weight,
                          converged=c.converged)
    return dict(energy=_energy_name(energy), beta=float(beta), xs=xs, ys=ys, points=points,
                labels=labels, final=c.result, weights=c.weights, num_steps=c.num_steps,
                converged=c.converged, patterns=patterns, patterns_2d=p2d,
                off_plane=_off_plane(patterns, origin, u, v) > 1e-4 * max(1.0, float(np.abs(patterns).max())),
                extent=tuple(float(e) for e in extent),
                fractions=np.bincount(labels.ravel(), minlength=len(patterns) + 1) / labels.size)


def plot_basins(patterns=None, panels: Sequence[tuple[Energy, float]] = DEFAULT_BASIN_PANELS, *,
                grid: int = 60, out="basins.png", seed: int = 0, plane=None, max_steps: int = 100,
                params: dict | None = None) -> dict:
    """One panel per (energy, β): each initial state coloured by the stored pattern it
    converges to; grey = metastable (a mixture) or not converged."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch
    patterns = toy_patterns(5, seed=seed) if patterns is None else np.asarray(patterns, np.float32)
    origin, u, v = _plane(patterns, plane)
    extent = _extent(_to_plane(patterns, origin, u, v))
    results = [basins(e, patterns, beta=b, grid=grid, extent=extent, plane=plane,
                      max_steps=max_steps, params=params) for e, b in panels]
    n = len(patterns)
    colors = _pattern_colors(n)
    cmap = ListedColormap([(*c[:3], 0.55) for c in colors] + [(0.55, 0.55, 0.55, 1.0)])
    ncols = _columns(len(results))
    nrows = math.ceil(len(results) / ncols)
    fig, axes = _figure(ncols, nrows, size=(4.2, 4.0))
    for ax, r in zip(axes.flat, results):
        x0, x1, y0, y1 = r["extent"]
        ax.imshow(r["labels"], origin="lower", extent=(x0, x1, y0, y1), cmap=cmap,
                  vmin=-0.5, vmax=n + 0.5, interpolation="nearest", aspect="equal")
        _mark_patterns(ax, r["patterns_2d"], colors=colors, off_plane=r["off_plane"])
        meta = 100 * r["fractions"][-1]
        ax.set_title(f"{r['energy']}, β = {r['beta']:g}  ({meta:.0f}% metastable)", fontsize=10)
        ax.set_xlabel("ξ₁ (initial state)" if patterns.shape[1] == 2 else "coordinate along u")
        ax.set_ylabel("ξ₂ (initial state)" if patterns.shape[1] == 2 else "coordinate along v")
    for ax in list(axes.flat)[len(results):]:
        ax.set_visible(False)
    handles = [Patch(color=colors[j], label=f"→ x{j}") for j in range(n)]
    handles.append(Patch(color=(0.55, 0.55, 0.55), label="metastable / not converged"))
    fig.legend(handles=handles, loc="outside lower center", ncols=n + 1, fontsize=9)
    fig.suptitle("Basins of attraction: initial state coloured by the pattern it converges to\n"
                 "(within a quarter of the pattern spacing, association weight > 0.9)", fontsize=11)
    return dict(panels=results, path=_save(fig, out))


# ============================================================ 3. energy vs iteration


@lru_cache(maxsize=4)     # a fixed toy block: compute (and compile) it once per process
def _et_curves(seed: int = 0, steps: int = 20):
    """Per-step total and per-component energies of a (non-causal, so exact-descent)
    Energy Transformer block on random tokens, {"attention", "hopfield", "total"} each
    (steps + 1,); None when `energy_attn.energy_transformer` is not available."""
    try:
        from .energy_transformer import EnergyTransformerBlock
    except ImportError:
        return None
    from flax import nnx
    block = EnergyTransformerBlock(16, 2, 8, 32, steps=steps, alpha=0.5, causal=False,
                                   init_std=0.3, rngs=nnx.Rngs(seed))
    x = jax.random.normal(jax.random.PRNGKey(seed), (1, 12, 16))
    _, traj = nnx.jit(lambda b, x: b(x, return_trajectory=True))(block, x)   # one compile
    return {name: np.asarray(traj[name])[:, 0] for name in ("total", "attention", "hopfield")
            if name in traj}


def plot_curves(patterns=None, *, betas: Sequence[float] = (0.5, 1.0, 2.0, 4.0), num_queries: int = 4,
                energies: Sequence[Energy] = ("sparsemax", "entmax", "sigmoid", "distance"),
                other_beta: float = 0.5, steps: int = 15, noise: float = 1.0, seed: int = 0,
                out="curves.png", include_et: bool = True) -> dict:
    """Energy against iteration. (a) softmax: `hopfield.retrieve(...).energies` for a few
    noisy queries at each β; (b) other energies: E_name along ξ ← ∂F/∂ζ; (c) the Energy
    Transformer's total and per-component energies when that module exists."""
    from . import hopfield
    from matplotlib import colormaps
    patterns = toy_patterns(6, dim=16, seed=seed, radius=2.0) if patterns is None else np.asarray(patterns, np.float32)
    rng = np.random.default_rng(seed + 1)
    n, d = patterns.shape
    targets = rng.integers(0, n, num_queries)
    queries = (patterns[targets] + noise * np.linalg.norm(patterns, axis=-1).mean()
               / math.sqrt(d) * rng.standard_normal((num_queries, d))).astype(np.float32)
    softmax = {}
    for b in betas:
        r = hopfield.retrieve(jnp.asarray(queries), jnp.asarray(patterns), b, max_steps=steps,
                              update_steps_eps=0.0)
        e = np.asarray(r.energies)
        softmax[float(b)] = e.reshape(e.shape[0], -1)           # (steps+1, queries)
    others = {}
    for name in energies:
        if name not in available_energies():
            continue
        _, e = iterate(name, queries, patterns, beta=other_beta, steps=steps)
        others[_energy_name(name)] = np.asarray(e)
    et = _et_curves(seed) if include_et else None

    ncols = 2 + (et is not None)
    fig, axes = _figure(ncols, 1, size=(5.0, 4.0))
    ax = axes[0, 0]
    cmap = colormaps["plasma"]
    for i, (b, e) in enumerate(softmax.items()):
        color = cmap(0.1 + 0.75 * i / max(1, len(softmax) - 1))
        for qi in range(e.shape[1]):
            ax.plot(np.arange(e.shape[0]), e[:, qi], "-o", ms=2.5, color=color, alpha=0.85,
                    label=f"β = {b:g}" if qi == 0 else None)
    ax.set_xlabel("update step t")
    ax.set_ylabel("Hopfield energy E(ξ_t)")
    ax.set_title(f"softmax: hopfield.retrieve energies\n{num_queries} noisy queries per β (d = {d}, N = {n})",
                 fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[0, 1]
    colors = _pattern_colors(max(len(others), 1))
    markers = "osD^vP"
    for i, ((name, e), color) in enumerate(zip(others.items(), colors)):
        for qi in range(e.shape[1]):
            # Shift each curve by its final value: the shapes are comparable across energies.
            ax.plot(np.arange(e.shape[0]), e[:, qi] - e[-1, qi], "-", marker=markers[i % 6], ms=3.5,
                    mfc="none", color=color, alpha=0.85, label=name if qi == 0 else None)
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_xlabel("update step t")
    ax.set_ylabel("E(ξ_t) − E(ξ_final)")
    ax.set_title(f"other energies: E = −F/β + ½‖ξ‖² along ξ ← ∂F/∂ζ\n(β = {other_beta:g}, same queries)",
                 fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if et is not None:
        ax = axes[0, 2]
        for name, e in et.items():
            ax.plot(np.arange(len(e)), e, "-o", ms=2.5, label=name)
        ax.set_xlabel("ET update step")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel("energy")
        ax.set_title("Energy Transformer block: total and components", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("Energy against iteration (every curve should fall and flatten)", fontsize=11)
    return dict(softmax=softmax, others=others, energy_transformer=et, queries=queries,
                targets=targets, patterns=patterns, path=_save(fig, out))


# ============================================================ 4. β sweep


def beta_sweep(patterns=None, *, betas=None, queries_per_pattern: int = 8, noise: float = 0.5,
               seed: int = 0, max_steps: int = 100, energy: Energy = "softmax",
               params: dict | None = None) -> dict:
    """Retrieval quality and metastable states against β, for noisy copies of each pattern
    (default patterns: `clustered_patterns`, 4 tight groups of 4 in d = 32).

    noise: standard deviation of the added Gaussian, relative to the pattern norm / √d.
    accuracy: fraction of queries labelled with their own pattern; cosine: mean cosine
    similarity of the final state to the target; metastable: fraction of queries ending
    in a mixture; fixed_points: distinct metastable end states (merged within the
    labelling tolerance)."""
    params = dict(params or {})
    patterns = clustered_patterns(seed=seed) if patterns is None else np.asarray(patterns, np.float32)
    betas = np.geomspace(0.5, 200, 16) if betas is None else np.asarray(betas, np.float64)
    n, d = patterns.shape
    rng = np.random.default_rng(seed + 7)
    targets = np.repeat(np.arange(n), queries_per_pattern)
    scale = noise * np.linalg.norm(patterns, axis=-1).mean() / math.sqrt(d)
    queries = (patterns[targets] + scale * rng.standard_normal((len(targets), d))).astype(np.float32)
    tol = 0.25 * min_separation(patterns)
    acc, cos, meta, fixed = [], [], [], []
    for b in betas:
        c = converge(energy, queries, patterns, beta=float(b), max_steps=max_steps, **params)
        labels = label_states(c.result, patterns, c.weights, tol=tol, converged=c.converged)
        acc.append(float(np.mean(labels == targets)))
        t = patterns[targets]
        cos.append(float(np.mean(np.sum(c.result * t, -1) / (
            np.linalg.norm(c.result, axis=-1) * np.linalg.norm(t, axis=-1) + 1e-12))))
        mixed = labels == n
        meta.append(float(np.mean(mixed)))
        fixed.append(_count_distinct(c.result[mixed], tol))
    return dict(energy=_energy_name(energy), betas=betas, accuracy=np.array(acc),
                cosine=np.array(cos), metastable_fraction=np.array(meta),
                metastable_fixed_points=np.array(fixed), patterns=patterns, queries=queries,
                targets=targets, noise=noise)


def _count_distinct(points, tol):
    reps: list[np.ndarray] = []
    for p in np.asarray(points):
        if not any(np.linalg.norm(p - r) < tol for r in reps):
            reps.append(p)
    return len(reps)


def plot_beta_sweep(patterns=None, *, betas=None, out="beta_sweep.png", seed: int = 0,
                    queries_per_pattern: int = 8, noise: float = 0.5, **kwargs) -> dict:
    """Left: retrieval accuracy and mean cosine similarity against β (log axis). Right:
    fraction of queries ending in a metastable mixture and the number of distinct
    metastable fixed points."""
    res = beta_sweep(patterns, betas=betas, queries_per_pattern=queries_per_pattern, noise=noise,
                     seed=seed, **kwargs)
    n, d = res["patterns"].shape
    fig, axes = _figure(2, 1, size=(5.0, 4.0))
    ax = axes[0, 0]
    ax.semilogx(res["betas"], res["accuracy"], "-o", color="tab:blue", label="retrieved the right pattern")
    ax.semilogx(res["betas"], res["cosine"], "-s", color="tab:green", label="mean cosine to target")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("inverse temperature β (log scale)")
    ax.set_ylabel("fraction / cosine similarity")
    ax.set_title(f"retrieval quality ({res['energy']}, d = {d}, N = {n},\n"
                 f"{len(res['queries'])} noisy queries, noise {noise:g})", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3, which="both")
    ax = axes[0, 1]
    ax.semilogx(res["betas"], res["metastable_fraction"], "-o", color="tab:red",
                label="queries ending in a mixture")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("inverse temperature β (log scale)")
    ax.set_ylabel("fraction of queries", color="tab:red")
    twin = ax.twinx()
    twin.semilogx(res["betas"], res["metastable_fixed_points"], "--^", color="tab:purple",
                  label="distinct metastable fixed points")
    twin.set_ylabel("distinct metastable fixed points", color="tab:purple")
    twin.set_ylim(bottom=0)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = twin.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="center left")
    ax.set_title("metastable states: one global average at small β,\n"
                 "cluster averages in between, none at large β", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    fig.suptitle("β sweep: from averaging all patterns to retrieving one", fontsize=11)
    res["path"] = _save(fig, out)
    return res


# ============================================================ 5. a trained model


def _tokens(tokenizer, prompt: str, max_len: int):
    ids = np.asarray(tokenizer.encode(prompt), np.int32)[:max_len]
    if ids.size < 2:
        raise ValueError(f"the prompt {prompt!r} gives {ids.size} token(s); use a longer prompt")
    return ids


def model_attention(model, tokens) -> dict:
    """Per layer: q, k after projection and RoPE, and the attention map ∂F/∂s.

    tokens: (T,) ints. Returns {"q": [(T, H, D)], "k": [(T, H_kv, D)], "weights":
    [(H, T, T)], "energy": [...], "params": [...]} (one entry per layer)."""
    import energy_attn as ea
    blocks = getattr(model, "blocks", None)
    if blocks is None or not all(hasattr(b, "attn") and hasattr(b, "attn_norm") for b in blocks):
        raise ValueError(f"{type(model).__name__} has no `blocks[i].attn`; the model picture "
                         "needs a Transformer with EnergyAttention blocks")
    tokens = jnp.asarray(tokens, jnp.int32)[None]
    length = tokens.shape[1]
    positions = jnp.arange(length)
    mask = ea.causal()
    x = model.embed(tokens)
    out = {"q": [], "k": [], "weights": [], "energy": [], "params": []}
    for block in blocks:
        attn = block.attn
        h = block.attn_norm(x)
        q = attn._split_heads(attn.q_proj(h), attn.num_heads, attn.head_dim)
        k = attn._split_heads(attn.k_proj(h), attn.num_kv_heads, attn.head_dim)
        if attn.use_rope:
            q = ea.apply_rope(q, positions, attn.rope_base)
            k = ea.apply_rope(k, positions, attn.rope_base)
        params = dict(attn.energy_params)
        w = ea.attention_weights(attn.energy, q.astype(jnp.float32), k.astype(jnp.float32),
                                 mask=mask, **params)
        out["q"].append(np.asarray(q[0], np.float32))
        out["k"].append(np.asarray(k[0], np.float32))
        out["weights"].append(np.asarray(w[0], np.float32))
        out["energy"].append(attn.energy)
        out["params"].append(params)
        x = block(x, mask=mask, positions=positions)
    return out


DEFAULT_PROMPT = "The energy of a state is lower when the query matches a stored key."


def _model_inputs(loaded, prompt, max_tokens):
    """(step, tokenizer, ids, attention) for a loaded run; `loaded` may carry a precomputed
    attention as a 5th element (plot_model / report compute it once)."""
    cfg, tokenizer, model, step = loaded[:4]
    if len(loaded) > 4 and loaded[4] is not None and loaded[4][0] == prompt:
        _, ids, att = loaded[4]
    else:
        ids = _tokens(tokenizer, prompt, min(max_tokens, model.max_seq_len))
        att = model_attention(model, ids)
    return step, tokenizer, ids, att


def check_head(model, layer: int, head: int):
    """Raise ValueError unless `layer`, `head` name an attention head of the model."""
    blocks = getattr(model, "blocks", None)
    if blocks is None or not len(blocks):
        raise ValueError(f"{type(model).__name__} has no attention blocks to picture")
    if not -len(blocks) <= layer < len(blocks):
        raise ValueError(f"--layer {layer} is out of range: the model has {len(blocks)} layers")
    heads = blocks[layer].attn.num_heads
    if not -heads <= head < heads:
        raise ValueError(f"--head {head} is out of range: layer {layer} has {heads} heads")


def _with_attention(loaded, prompt, max_tokens: int = 48):
    cfg, tokenizer, model, step = loaded[:4]
    ids = _tokens(tokenizer, prompt, min(max_tokens, model.max_seq_len))
    return (*loaded[:4], (prompt, ids, model_attention(model, ids)))


def plot_attention_maps(loaded, *, prompt: str = DEFAULT_PROMPT, out="model_attention.png",
                        max_tokens: int = 48) -> dict:
    """Attention maps ∂F/∂s of every layer and head of a trained run, for one prompt."""
    step, tokenizer, ids, att = _model_inputs(loaded, prompt, max_tokens)
    labels = [tokenizer.decode([int(t)]) for t in ids]
    labels = [repr(s)[1:-1][:3] for s in labels]
    layers, heads = len(att["weights"]), att["weights"][0].shape[0]
    fig, axes = _figure(heads, layers, size=(3.4, 3.2))
    for l in range(layers):
        for h in range(heads):
            ax = axes[l, h]
            im = ax.imshow(att["weights"][l][h], cmap="magma", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(f"layer {l}, head {h}", fontsize=9)
            if len(ids) <= 32:
                ax.set_xticks(range(len(ids)), labels, fontsize=5, rotation=90)
                ax.set_yticks(range(len(ids)), labels, fontsize=5)
            ax.set_xlabel("key position", fontsize=8)
            ax.set_ylabel("query position", fontsize=8)
    fig.colorbar(im, ax=axes, shrink=0.6, label="attention weight ∂F/∂s")
    energy = _energy_name(att["energy"][0])
    _suptitle(fig, f"{energy} attention maps ∂F/∂s, step {step}, prompt {prompt[:80]!r}", heads)
    return dict(weights=att["weights"], tokens=ids, step=step, energy=energy,
                path=_save(fig, out))


def classify_model_heads(weights, *, mass: float = 0.9, min_keys: int = 4):
    """Per-head class of causal attention maps (L, H, T, T), by the rule of
    `hopfield.classify_heads` applied to each query row against its *visible* keys.

    k = `hopfield.top_k_mass` of each row (masked keys carry zero weight, so k is the
    same over the whole row or its visible part). A causal query i sees n = i + 1 keys:
    the row is "single" if k = 1, "global" if k > n/2, else "metastable" (classify_heads
    would use n = T for every row). The head's class is the most common row class over
    queries that see at least `min_keys` keys.
    Returns (codes (L, H), names, top_k (L, H, T), share (L, H): mean k / visible keys)."""
    from . import hopfield
    w = jnp.asarray(weights, jnp.float32)
    L, H, T, _ = w.shape
    k = np.asarray(hopfield.top_k_mass(w, mass=mass), np.float64)          # (L, H, T)
    names = list(hopfield.HEAD_CLASSES)
    start = min(max(min_keys, 1), T) - 1
    visible = np.arange(1, T + 1, dtype=np.float64)
    single, glob = names.index("single"), names.index("global")
    meta = names.index("metastable")
    row_codes = np.where(k <= 1, single, np.where(k > visible / 2, glob, meta))[..., start:]
    votes = np.stack([(row_codes == c).sum(-1) for c in range(len(names))], -1)
    codes = votes.argmax(-1)
    share = (k[..., start:] / visible[start:]).mean(-1)
    return codes, names, k, share


def plot_head_classes(loaded, *, prompt: str = DEFAULT_PROMPT, out="model_heads.png",
                      mass: float = 0.9, max_tokens: int = 48) -> dict:
    """Each head's mean number of keys holding `mass` of its attention (top_k_mass) and its
    class (global averaging / metastable / single pattern; see `classify_model_heads`)."""
    from matplotlib.patches import Patch
    step, tokenizer, ids, att = _model_inputs(loaded, prompt, max_tokens)
    w = np.stack(att["weights"])                                   # (L, H, T, T)
    L, H, T, _ = w.shape
    codes, names, k, share = classify_model_heads(w, mass=mass)
    mean_k = k.mean(-1)
    colors = {"global": "tab:blue", "metastable": "tab:orange", "single": "tab:green"}
    fig, axes = _figure(2, 1, size=(5.5, 4.0))
    ax = axes[0, 0]
    xs = np.arange(L * H)
    bar_colors = [colors.get(names[c], "grey") for c in codes.ravel()]
    ax.bar(xs, share.ravel(), color=bar_colors, edgecolor="black", lw=0.5)
    ax.set_xticks(xs, [f"L{l}H{h}" for l in range(L) for h in range(H)],
                  rotation=90 if L * H > 12 else 0, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.axhline(0.5, color="grey", ls=":", lw=1)
    ax.set_xlabel("layer / head")
    ax.set_ylabel(f"keys holding {mass:.0%} of the weight / visible keys")
    ax.legend(handles=[Patch(color=c, label=n) for n, c in colors.items()], fontsize=8)
    ax.set_title(f"head classes (top_k_mass, classify_heads per query row), {T} tokens", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax = axes[0, 1]
    ax.axis("off")
    rows = [[f"{l}", f"{h}", names[codes[l, h]], f"{mean_k[l, h]:.1f}", f"{share[l, h]:.2f}"]
            for l in range(L) for h in range(H)]
    table = ax.table(cellText=rows[:40], colLabels=["layer", "head", "class", "mean k", "k / visible"],
                     loc="upper center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1, 1.2)
    ax.set_title("per-head summary" + (" (first 40 heads)" if len(rows) > 40 else ""), fontsize=10)
    _suptitle(fig, f"Head classification of {_energy_name(att['energy'][0])} attention, step {step}", 2)
    return dict(codes=codes, names=names, top_k=k, mean_k=mean_k, share=share, weights=w,
                path=_save(fig, out))


def plot_head_landscape(loaded, *, prompt: str = DEFAULT_PROMPT, layer: int = 0, head: int = 0,
                        query: int = -1, grid: int = 60, out="model_landscape.png",
                        max_tokens: int = 48) -> dict:
    """The retrieval energy of one head: its visible keys (after RoPE) as the stored
    patterns, on the plane through the origin spanned by the two keys that the query
    weights most; the query's own iterates ξ ← ∂F/∂ζ projected on that plane."""
    step, tokenizer, ids, att = _model_inputs(loaded, prompt, max_tokens)
    L = len(att["q"])
    if not -L <= layer < L:
        raise ValueError(f"--layer {layer} is out of range: the model has {L} layers")
    qs, ks, w = att["q"][layer], att["k"][layer], att["weights"][layer]
    H, T = qs.shape[1], qs.shape[0]
    if not -H <= head < H:
        raise ValueError(f"--head {head} is out of range: the layer has {H} heads")
    head %= H
    i = query % T
    kv = head // (H // ks.shape[1])
    keys = ks[: i + 1, kv]                                   # keys the query sees (causal)
    xi = qs[i, head]
    energy, params = att["energy"][layer], dict(att["params"][layer])
    beta = params.pop("beta", None)
    beta = default_beta(qs.shape[-1]) if beta is None else beta
    beta = float(np.asarray(beta).reshape(-1)[head] if np.ndim(beta) else beta)
    if len(keys) < 2:
        raise ValueError("the head landscape needs a query that sees at least two keys")
    order = np.argsort(-w[head, i, : i + 1])
    a, b = int(order[0]), int(order[1])
    if np.linalg.matrix_rank(np.stack([keys[a], keys[b]])) < 2:
        b = next((int(j) for j in order[2:]), b)
    plane = plane_through(keys[a], keys[b])
    pts = np.concatenate([_to_plane(keys, *plane), _to_plane(xi[None], *plane)])
    extent = _extent(pts, pad=0.25)
    res = landscape(energy, keys, beta=beta, grid=grid, extent=extent, plane=plane, starts=xi[None],
                    steps=30, params=params)
    fig, axes = _figure(1, 1, size=(6.4, 5.6))
    ax = axes[0, 0]
    _draw_landscape(fig, ax, {**res, "labels": False, "word": "keys"},
                    title=f"layer {layer}, head {head}, query at position {i}\n"
                          f"{_energy_name(energy)}, β = {beta:.3g}:  {energy_formula(energy)}")
    p2d = res["patterns_2d"]
    for j in (a, b):
        ax.annotate(f"key {j} (weight {w[head, i, j]:.2f})", p2d[j], textcoords="offset points",
                    xytext=(8, 8), fontsize=8, fontweight="bold", zorder=6,
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.7))
    q2d = _to_plane(xi[None], *plane)[0]
    ax.plot(*q2d, "D", color="crimson", mec="black", ms=7, zorder=6, label="query (projected)")
    ax.legend(fontsize=7, loc="lower left", framealpha=0.7)
    ax.set_xlabel(f"along key {a}")
    ax.set_ylabel(f"along key {b} (orthogonalised)")
    _suptitle(fig, "One head's energy landscape: its visible keys as stored patterns, on the "
                   "plane of the two keys the query weights most (a slice; other keys and the "
                   "iterates are projected)", fontsize=10)
    return dict(res, layer=layer, head=head, query=i, keys_used=(a, b), step=step,
                path=_save(fig, out))


def plot_model(loaded, out_dir, *, prompt: str = DEFAULT_PROMPT, layer: int = 0, head: int = 0,
               grid: int = 60) -> dict:
    """All three trained-model pictures into out_dir. `loaded`: (config, tokenizer, model,
    step), as train.run.load_run returns it; the attention is computed once."""
    check_head(loaded[2], layer, head)
    loaded = _with_attention(loaded, prompt)
    out_dir = Path(out_dir)
    return dict(
        attention=plot_attention_maps(loaded, prompt=prompt, out=out_dir / "model_attention.png"),
        heads=plot_head_classes(loaded, prompt=prompt, out=out_dir / "model_heads.png"),
        landscape=plot_head_landscape(loaded, prompt=prompt, layer=layer, head=head, grid=grid,
                                      out=out_dir / "model_landscape.png"))


# ============================================================ the report


def report(out_dir, *, loaded=None, run_label=None, seed: int = 0, grid: int = 60,
           prompt: str = DEFAULT_PROMPT, layer: int = 0, head: int = 0, log=None) -> dict:
    """Every picture into out_dir plus index.html (relative image paths, plain HTML).
    The trained-model pictures only when `loaded` is given: (config, tokenizer, model, step)
    as train.run.load_run returns it; `run_label` names the run in titles (its directory)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = log or (lambda *_: None)
    if loaded is not None:        # check first: a bad head fails before minutes of plotting
        check_head(loaded[2], layer, head)
        loaded = _with_attention(loaded, prompt)
    entries = []

    def add(filename, title, caption):
        entries.append((filename, title, caption))
        log(f"wrote {out_dir / filename}")

    X = toy_patterns(5, seed=seed)
    names = sorted((n for n in available_energies() if n not in NOT_RETRIEVAL_ENERGIES),
                   key=lambda n: (n != "softmax", n))          # softmax (Hopfield) first
    plot_landscape(names, X, beta=2.0, grid=grid, seed=seed, out=out_dir / "landscape.png")
    add("landscape.png", "Energy landscapes of every registered energy",
        "Filled contours of the retrieval energy E(ξ) = −F(ξ; keys = values = patterns)/β + ½‖ξ‖² "
        "(−F/2β for distance; −F + ½‖ξ‖² for energies without β) over the plane, with five stored "
        "patterns (stars). Red lines: iterates of the attention update ξ ← ∂F/∂ζ from the open circles.")
    Xh = toy_patterns(6, dim=16, seed=seed, radius=3.0)
    plot_landscape(["softmax"], Xh, beta=1.0, grid=grid, seed=seed, plane=(0, 1),
                   out=out_dir / "landscape_plane.png",
                   title="softmax retrieval energy on the plane through patterns x0 and x1 (d = 16, N = 6)\n"
                         "other patterns are shown by their projections")
    add("landscape_plane.png", "A plane through two patterns in 16 dimensions",
        "The softmax (Hopfield) energy on the plane through the origin and stored patterns x0, x1 of "
        "six 16-dimensional patterns; the other patterns appear at their projections.")
    plot_basins(X, grid=grid, seed=seed, out=out_dir / "basins.png")
    add("basins.png", "Basins of attraction",
        "Every initial state of the grid is iterated to convergence and coloured by the stored pattern "
        "it reaches (within a quarter of the pattern spacing, association weight > 0.9); grey marks "
        "metastable mixtures. Small β merges everything into one global fixed point; large β gives "
        "one basin per pattern.")
    plot_curves(seed=seed, out=out_dir / "curves.png")
    add("curves.png", "Energy against iteration",
        "Left: hopfield.retrieve energies of noisy queries at several β (monotone, CCCP). Middle: the "
        "same for other energies along ξ ← ∂F/∂ζ. Right (when energy_attn.energy_transformer is "
        "available): an Energy Transformer block's total and per-component energies.")
    plot_beta_sweep(seed=seed, out=out_dir / "beta_sweep.png")
    add("beta_sweep.png", "β sweep",
        "Fraction of noisy queries that retrieve their own pattern, mean cosine similarity to it, and "
        "metastable mixtures (fraction of queries, distinct fixed points) against β.")
    if loaded is not None:
        plot_attention_maps(loaded, prompt=prompt, out=out_dir / "model_attention.png")
        add("model_attention.png", f"Attention maps of {run_label or 'the run'}",
            f"∂F/∂s for every layer and head on the prompt {prompt!r}.")
        plot_head_classes(loaded, prompt=prompt, out=out_dir / "model_heads.png")
        add("model_heads.png", "Head classes",
            "Share of its visible keys that hold 90% of each head's weight (hopfield.top_k_mass), "
            "and the head's class by hopfield.classify_heads' rule applied to each causal query row "
            "(single pattern: one key; global averaging: more than half the visible keys; "
            "metastable: in between), majority over the queries.")
        plot_head_landscape(loaded, prompt=prompt, layer=layer, head=head, grid=grid,
                            out=out_dir / "model_landscape.png")
        add("model_landscape.png", f"Energy landscape of layer {layer}, head {head}",
            "The head's visible keys as stored patterns, on the plane of the two keys its last query "
            "weights most; the query's iterates are projected onto the plane.")
    index = write_index(out_dir, entries, run_dir=run_label)
    log(f"wrote {index}")
    return dict(index=str(index), pictures=[str(out_dir / e[0]) for e in entries])


def write_index(out_dir, entries, *, run_dir=None) -> Path:
    """index.html: each (filename, title, caption) as a figure with a relative <img> path."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>energy-attn landscapes</title>",
             "<style>body{font-family:sans-serif;max-width:1400px;margin:auto;padding:1em}"
             "img{max-width:100%;border:1px solid #ccc}figure{margin:2em 0}"
             "figcaption{color:#333;max-width:60em}</style></head><body>",
             "<h1>energy-attn: energy landscapes</h1>"]
    if run_dir is not None:
        parts.append(f"<p>Trained run: <code>{html.escape(str(run_dir))}</code></p>")
    for filename, title, caption in entries:
        parts.append(f'<figure><h2>{html.escape(title)}</h2><img src="{html.escape(filename)}" '
                     f'alt="{html.escape(title)}"><figcaption>{html.escape(caption)}</figcaption></figure>')
    parts.append("</body></html>")
    path = Path(out_dir) / "index.html"
    path.write_text("\n".join(parts) + "\n")
    return path
