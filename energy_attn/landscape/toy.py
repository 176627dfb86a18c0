"""Pictures of toy patterns: landscapes, basins of attraction, energy against iteration, β sweeps.

Each `plot_*` computes the numbers behind one picture, writes the PNG and returns the numbers."""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..registry import available_energies
from .figures import (_columns, _draw_trajectory, _figure, _mark_patterns, _off_plane, _pattern_colors,
                      _save, _suptitle)
from .retrieval import (Energy, _energy_name, _extent, _grid, _plane, _to_plane,
                        clustered_patterns, converge, energy_formula, iterate, label_states,
                        min_separation, retrieval_energy, toy_patterns)

# Energies whose single-query retrieval picture is meaningless: the Energy Transformer's
# attention excludes the key at the query's own position (the last pattern here).
NOT_RETRIEVAL_ENERGIES = ("energy_transformer",)

DEFAULT_BASIN_PANELS = (("softmax", 0.5), ("softmax", 1.0), ("softmax", 2.0), ("softmax", 8.0),
                        ("sparsemax", 0.5), ("entmax", 0.5))


def _trim(traj, energies, nsteps):
    return ([traj[: s + 1, i] for i, s in enumerate(nsteps)],
            [energies[: s + 1, i] for i, s in enumerate(nsteps)])


def _softmax_trajectories(starts, patterns, beta, steps):
    """hopfield.retrieve trajectories, with energies on the landscape's scale (E without
    hopfield_energy's constants β⁻¹ log N + ½M²)."""
    from .. import hopfield
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
        ax.legend(loc="best", fontsize=7, framealpha=0.7)     # "best" keeps off the start points
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
    return dict(panels=results, notes=basin_notes(results), path=_save(fig, out))


def basin_notes(results) -> list[str]:
    """Why a stored pattern has no basin in a panel that is not all metastable: at that β the
    update at the pattern gives part of the weight to other patterns, so it is not where the
    iterates settle."""
    from .retrieval import associations
    notes = []
    for r in results:
        counts = np.bincount(r["labels"].ravel(), minlength=len(r["patterns"]) + 1)
        if counts[-1] == r["labels"].size:
            continue
        for j in np.flatnonzero(counts[:-1] == 0):
            w = np.asarray(associations(r["energy"], r["patterns"][j], r["patterns"], beta=r["beta"]))
            other = int(np.argsort(-w)[1] if np.argmax(w) == j else np.argmax(w))
            notes.append(f"{r['energy']}, β = {r['beta']:g}: x{j} has no basin. At ξ = x{j} the "
                         f"update gives x{j} only {w[j]:.0%} of the weight (x{other}: {w[other]:.0%}), "
                         f"so iterates from x{j} move off it and settle where no pattern holds 90% "
                         "of the weight (grey), or at another pattern.")
    return notes


def landscape_notes(panels) -> list[str]:
    """Energies whose weights at a stored pattern do not sum to 1: their update sums
    patterns instead of averaging them, so its fixed points are not the patterns."""
    from .retrieval import associations
    notes = []
    for r in panels:
        X = r["patterns"]
        sums = [float(np.asarray(associations(r["energy"], x, X, beta=r["beta"])).sum()) for x in X]
        if abs(np.mean(sums) - 1) > 0.05:
            notes.append(f"{r['energy']}: its weights at a stored pattern sum to {np.mean(sums):.2f} on "
                         "average, not 1 (they are not normalised), so ξ ← ∂F/∂ζ is a weighted sum of "
                         "patterns rather than an average: iterates leave the patterns for the minima "
                         "of E elsewhere.")
    return notes


# ============================================================ 3. energy vs iteration


@lru_cache(maxsize=4)     # a fixed toy block: compute (and compile) it once per process
def _et_curves(seed: int = 0, steps: int = 20):
    """Per-step total and per-component energies of a (non-causal, so exact-descent)
    Energy Transformer block on random tokens, {"attention", "hopfield", "total"} each
    (steps + 1,); None when `energy_attn.energy_transformer` is not available."""
    try:
        from ..energy_transformer import EnergyTransformerBlock
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
    from .. import hopfield
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

