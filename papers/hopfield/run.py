"""Reproduce three claims of "Hopfield Networks is All You Need" (Ramsauer et al. 2020,
arXiv 2008.02217) with energy_attn's Hopfield module.

    python papers/hopfield/run.py            # full run, a few minutes on 2 CPU cores
    python papers/hopfield/run.py --quick    # < 1 min, smaller grids (writes to papers/hopfield/quick/)

1. digits:   ±1 digit bitmaps stored in a modern Hopfield net; noisy / half-masked queries;
             retrieval accuracy per β; metastable mixtures at low β, clean patterns at high β.
2. capacity: largest N of random ±1 patterns (dimension d) retrieved in one update from a
             query with ≈10% of its bits flipped, modern net vs the classical Hebbian net.
3. basins:   2-D basins of attraction of softmax vs sparsemax / 1.5-entmax retrieval.

Writes digits.png, digits_accuracy.png, capacity.png, basins.png, results.json and
results.md (the tables) to --out. README.md in this folder discusses one full run.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import energy_attn as ea
from energy_attn import hopfield as hf
from energy_attn.energies.entmax import entmax

HERE = Path(__file__).resolve().parent
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


def figure(w: float, h: float):
    from matplotlib.figure import Figure          # Agg canvas, no pyplot state
    return Figure(figsize=(w, h), layout="constrained")


def save(fig, out: Path, name: str, dpi: int = 100) -> str:
    path = out / name
    fig.savefig(path, dpi=dpi)
    log(f"wrote {path}")
    return name


def sign_keep(h, q):
    """sign(h) with the query's own bit kept where h is exactly 0 (same rule for both nets)."""
    s = np.sign(h)
    return np.where(s == 0, q, s)


# ===================================================================== 1. digits
# A 7×5 font, one hand-written bit string per digit (rows top to bottom), drawn at
# 14×10 (every font pixel a 2×2 block): d = 140, ink = +1, background = −1.
FONT = {
    0: "01110 10001 10011 10101 11001 10001 01110",
    1: "00100 01100 00100 00100 00100 00100 01110",
    2: "01110 10001 00001 00010 00100 01000 11111",
    3: "11111 00010 00100 00010 00001 10001 01110",
    4: "00010 00110 01010 10010 11111 00010 00010",
    5: "11111 10000 11110 00001 00001 10001 01110",
    6: "00110 01000 10000 11110 10001 10001 01110",
    7: "11111 00001 00010 00100 01000 01000 01000",
    8: "01110 10001 10001 01110 10001 10001 01110",
    9: "01110 10001 10001 01111 00001 00010 01100",
}
ROWS, COLS, SCALE = 7, 5, 2
H, W = ROWS * SCALE, COLS * SCALE


def digit_patterns() -> np.ndarray:
    bits = np.array([[int(c) for c in FONT[k].replace(" ", "")] for k in range(10)])
    img = bits.reshape(10, ROWS, COLS).repeat(SCALE, 1).repeat(SCALE, 2)
    return (2.0 * img.reshape(10, -1) - 1.0).astype(np.float32)


def digit_queries(X, rng, per_digit: int, noise: float):
    d = X.shape[1]
    flips = int(round(noise * d))
    target = np.repeat(np.arange(10), per_digit)
    noisy = X[target].copy()
    idx = np.argsort(rng.random(noisy.shape), axis=1)[:, :flips]   # exactly `flips` distinct pixels
    np.put_along_axis(noisy, idx, -np.take_along_axis(noisy, idx, 1), 1)
    masked = X.copy().reshape(10, H, W)
    masked[:, H // 2:, :] = 0.0                                     # bottom half unknown: 0
    return dict(noisy=(noisy, target), masked=(masked.reshape(10, -1), np.arange(10))), flips


def nearest_pattern_accuracy(Q, X, target):
    """Fraction of queries whose *unique* largest overlap x_i·ξ is the target (β → ∞, one step)."""
    ov = Q @ X.T
    top = ov.max(1, keepdims=True)
    return float(np.mean((ov.argmax(1) == target) & ((ov == top).sum(1) == 1)))


def run_digits(args, rng, out):
    X = digit_patterns()
    d = X.shape[1]
    sep = np.asarray(hf.separation(X))
    beta_star = hf.suggest_beta(X)
    queries, flips = digit_queries(X, rng, args.per_digit, 0.3)
    log(f"digits: 10 patterns, d = {d}, Δ_min = {sep.min():g}, suggest_beta = {beta_star:.4f}, "
        f"{len(queries['noisy'][1])} noisy queries ({flips} of {d} pixels flipped), 10 half-masked")
    betas = sorted(set([0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.07, 0.1, round(beta_star, 4), 0.5, 1.0]))
    rows, keep = [], {}
    for beta in betas:
        for kind, (Q, target) in queries.items():
            r = hf.retrieve(Q, X, beta, update_steps_eps=1e-5, max_steps=args.max_steps)
            res = np.asarray(r.result)
            one = np.asarray(r.trajectory[1])
            p = np.asarray(hf.association(res, X, beta))
            e = np.asarray(r.energies)
            rows.append(dict(
                beta=beta, query=kind, n=len(target),
                acc_converged=float(np.mean(np.all(sign_keep(res, Q) == X[target], 1))),
                acc_one_step=float(np.mean(np.all(sign_keep(one, Q) == X[target], 1))),
                single_pattern=float(np.mean(p.max(1) >= 0.9)),
                fixed_points=int(len(np.unique(np.round(res, 2), axis=0))),
                mean_steps=float(np.mean(np.asarray(r.num_steps))),
                not_converged=int(np.sum(np.asarray(r.num_steps) >= args.max_steps)),
                max_energy_increase=float(max(0.0, np.max(np.diff(e, axis=0)))),
            ))
            keep[(beta, kind)] = res
        a, b = rows[-2], rows[-1]
        log(f"  β = {beta:<7g} noisy: acc {a['acc_converged']:.3f} (1 step {a['acc_one_step']:.3f}), "
            f"{a['fixed_points']} distinct final states | masked: acc {b['acc_converged']:.3f} "
            f"(1 step {b['acc_one_step']:.3f}), {b['fixed_points']} distinct")
    ceiling = {k: nearest_pattern_accuracy(Q, X, t) for k, (Q, t) in queries.items()}
    log(f"  nearest-stored-pattern accuracy (unique max overlap): noisy {ceiling['noisy']:.3f}, "
        f"masked {ceiling['masked']:.3f}")

    # ---- figure: query -> retrieved, at three β
    show = [0.01, 0.05, round(beta_star, 4)]
    names = ["global average", "metastable", "suggest_beta"]
    fig = figure(11.5, 10.5)
    sub = fig.subfigures(1, 2, wspace=0.04)
    for sf, (kind, (Q, target)) in zip(sub, queries.items()):
        pick = [int(np.flatnonzero(target == k)[0]) for k in range(10)]      # first query of each digit
        cols = [("stored", X[target[pick]]), ("query", Q[pick])] + [
            (f"β = {b:g}\n{nm}", keep[(b, kind)][pick]) for b, nm in zip(show, names)]
        axes = sf.subplots(10, len(cols))
        for j, (title, imgs) in enumerate(cols):
            for i in range(10):
                ax = axes[i, j]
                ax.imshow(imgs[i].reshape(H, W), cmap="gray_r", vmin=-1, vmax=1, interpolation="nearest")
                ax.set_xticks([]), ax.set_yticks([])
                if i == 0:
                    ax.set_title(title, fontsize=9)
        what = f"{flips}/{d} pixels flipped (30%)" if kind == "noisy" else "bottom half masked (set to 0)"
        sf.suptitle(f"{kind} queries: {what}", fontsize=11)
    fig.suptitle("Modern Hopfield net, 10 stored 14×10 digits (ink +1 = black): final state of "
                 "ξ ← X softmax(β Xᵀξ) iterated to convergence\n(grey pixels: between −1 and +1, "
                 "i.e. a mixture of patterns)", fontsize=11)
    files = [save(fig, out, "digits.png", dpi=120)]

    # ---- figure: accuracy vs β
    fig = figure(11, 4)
    axes = fig.subplots(1, 2)
    for ax, kind in zip(axes, queries):
        rs = [r for r in rows if r["query"] == kind]
        bs = [r["beta"] for r in rs]
        ax.semilogx(bs, [r["acc_converged"] for r in rs], "o-", label="exact retrieval, converged")
        ax.semilogx(bs, [r["acc_one_step"] for r in rs], "s--", label="exact retrieval, one update")
        ax.semilogx(bs, [r["single_pattern"] for r in rs], "^:", label="final state = one pattern (weight ≥ 0.9)")
        ax.axhline(ceiling[kind], color="k", lw=0.8, ls="--", label="nearest stored pattern (β → ∞)")
        ax.axvline(beta_star, color="tab:red", lw=0.8, label=f"suggest_beta = {beta_star:.3f}")
        ax.set_xlabel("β"), ax.set_ylabel("fraction of queries"), ax.set_ylim(-0.03, 1.03)
        ax.set_title(f"{kind} queries (n = {rs[0]['n']})", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="center right")
    fig.suptitle("Digit retrieval vs β: one global fixed point at small β, metastable mixtures "
                 "in between, single patterns at large β", fontsize=11)
    files.append(save(fig, out, "digits_accuracy.png"))
    return dict(d=d, num_patterns=10, flips=flips, per_digit=args.per_digit,
                separation_min=float(sep.min()), suggest_beta=beta_star, rows=rows,
                nearest_pattern_accuracy=ceiling, figure_betas=show, files=files)


# =================================================================== 2. capacity


def flip(rng, X, f):
    idx = np.argsort(rng.random(X.shape), axis=-1)[..., :f]
    Q = X.copy()
    np.put_along_axis(Q, idx, -np.take_along_axis(Q, idx, -1), -1)
    return Q


def _chunks(X, Q, max_entries=1 << 22):
    """Split the queries (T, m, d) so that one (T, chunk, N) overlap block stays ~16 MB."""
    t, m, n = Q.shape[0], Q.shape[1], X.shape[1]
    size = max(1, min(m, max_entries // (t * n)))
    return [slice(i, i + size) for i in range(0, m, size)]


def modern_ok(X, Q, target, beta):
    """One modern-Hopfield update ξ ← X softmax(β Xᵀξ) (hf.update) of queries (T, m, d)
    against their own stored set X (T, N, d); success = sign of the result is the target."""
    ok = []
    for c in _chunks(X, Q):
        out = np.asarray(hf.update(Q[:, c], X[:, None], beta))   # batch (T, m): query vs set t
        ok.append(np.all(sign_keep(out, Q[:, c]) == target[:, c], -1))
    return np.concatenate(ok, 1)


def classical_ok(X, Q, target):
    """One synchronous sign update with Hebbian W = Σ_μ x_μ x_μᵀ / d and zero diagonal:
    h = W ξ = Xᵀ(X ξ)/d − (N/d) ξ (the diagonal of Σ x xᵀ/d is N/d)."""
    d, n = X.shape[-1], X.shape[-2]
    ok = []
    for c in _chunks(X, Q):
        q = Q[:, c]
        h = (q @ np.swapaxes(X, 1, 2)) @ X / d - (n / d) * q
        ok.append(np.all(sign_keep(h, q) == target[:, c], -1))
    return np.concatenate(ok, 1)


NETS = {
    "modern (β = max(1, ln N))": lambda X, Q, t: modern_ok(X, Q, t, max(1.0, math.log(X.shape[1]))),
    "modern (β = 1/√d)": lambda X, Q, t: modern_ok(X, Q, t, 1.0 / math.sqrt(X.shape[2])),
    "classical (Hebbian)": classical_ok,
    "classical, fixed point": classical_ok,      # query = the stored pattern itself, no noise
}


def success_fraction(net, d, n, f, rng, samples):
    """Fraction of stored patterns retrieved: ceil(samples / N) random sets of N patterns, every
    pattern queried; or, once N > samples, one set with `samples` of its patterns queried."""
    trials = max(1, math.ceil(samples / n))
    X = rng.choice(np.float32([-1.0, 1.0]), size=(trials, n, d))
    target = X if n <= samples else X[:, rng.choice(n, samples, replace=False)]
    Q = target if net == "classical, fixed point" else flip(rng, target, f)
    return float(np.mean(NETS[net](X, Q, target)))


def search_capacity(frac, cap, thresh):
    """Largest N with frac(N) ≥ thresh: doubling from 1, then bisection (assumes monotone)."""
    evals, n, last_pass = {}, 1, 0
    while True:
        evals[n] = frac(n)
        if evals[n] < thresh:
            break
        last_pass = n
        if n >= cap:
            return cap, True, evals
        n = min(2 * n, cap)
    lo, hi = last_pass, n                     # lo passes (or 0), hi fails
    while hi - lo > 1:
        mid = (lo + hi) // 2
        evals[mid] = frac(mid)
        lo, hi = (mid, hi) if evals[mid] >= thresh else (lo, mid)
    return lo, False, evals


def nearest_pattern_prediction(d, f, thresh):
    """Capacity of an ideal nearest-pattern decoder (β → ∞): the query (f bits flipped) is won by
    another random pattern when that one is within Hamming distance f of it (ties lose)."""
    p = sum(math.comb(d, k) for k in range(f + 1)) / 2.0 ** d
    return 1 + math.log(thresh) / math.log1p(-p)


def hebbian_fixed_point_prediction(d, thresh):
    """Largest N at which a stored pattern of the zero-diagonal Hebbian net is an exact fixed
    point with probability ≥ thresh, treating the crosstalk on each bit as Gaussian with
    variance (N−1)(d−1)/d² (signal 1): (1 − Φ(−d/√((N−1)(d−1))))^d ≥ thresh."""
    n = 1
    while True:
        z = d / math.sqrt(n * (d - 1))          # trying N = n + 1
        if (1 - 0.5 * math.erfc(z / math.sqrt(2))) ** d < thresh:
            return n
        n += 1


def run_capacity(args, rng, out):
    thresh, cap = 0.95, args.cap
    results = []
    for d in args.dims:
        f = max(1, round(0.1 * d))
        row = dict(d=d, flipped_bits=f, nearest_pattern_prediction=nearest_pattern_prediction(d, f, thresh),
                   hebb_0_14d=0.14 * d, hebb_fixed_point_prediction=hebbian_fixed_point_prediction(d, thresh))
        for net in NETS:
            t = time.perf_counter()
            n_cap, capped, evals = search_capacity(
                lambda n: success_fraction(net, d, n, f, rng, args.samples), cap, thresh)
            row[net] = dict(capacity=n_cap, capped=capped, seconds=round(time.perf_counter() - t, 2),
                            evaluated={str(k): round(v, 4) for k, v in sorted(evals.items())})
        results.append(row)
        log(f"capacity d = {d:3d} ({f} bits flipped): " + ", ".join(
            f"{net.split(' (')[0] if 'fixed' not in net else 'fixed pt'}"
            f"{'/√d' if '√d' in net else ''} {'≥' if row[net]['capped'] else ''}{row[net]['capacity']}"
            for net in NETS) + f"  [nearest-pattern prediction {row['nearest_pattern_prediction']:.3g}]")

    # ---- figure
    fig = figure(7.5, 5.2)
    ax = fig.subplots()
    ds = np.array(args.dims)
    style = {"modern (β = max(1, ln N))": ("o-", "tab:blue"), "modern (β = 1/√d)": ("D-", "tab:cyan"),
             "classical (Hebbian)": ("s-", "tab:red"), "classical, fixed point": ("v--", "tab:orange")}
    for net, (mk, c) in style.items():
        n = np.array([r[net]["capacity"] for r in results], float)
        capped = np.array([r[net]["capped"] for r in results])
        label = {"classical (Hebbian)": "classical Hebbian net, same test",
                 "classical, fixed point": "classical: stored pattern is a fixed point (no noise)"}.get(
            net, f"{net}, one update")
        ax.semilogy(ds, np.maximum(n, 0.5), mk, color=c, label=label, ms=6)
        if capped.any():
            ax.plot(ds[capped], n[capped], "^", color=c, ms=13, mfc="none", mew=1.8,
                    label=f"hit the search cap N = {cap} (true value higher)")
    dd = np.linspace(ds.min(), ds.max(), 100)
    ax.semilogy(dd, 0.14 * dd, "k--", lw=1, label="0.14·d (classical capacity, d → ∞)")
    pred = np.array([r["nearest_pattern_prediction"] for r in results])
    ax.semilogy(ds, pred, ":", color="gray", lw=1.5, label="nearest-pattern decoder prediction (β → ∞)")
    ax.semilogy(ds, [r["hebb_fixed_point_prediction"] for r in results], ":", color="tab:orange", lw=1.2,
                label="classical fixed point, Gaussian-crosstalk prediction")
    ax.axhline(cap, color="gray", lw=0.6)
    ax.set_ylim(0.5, max(4 * cap, 10))
    ax.set_xlabel("dimension d"), ax.set_ylabel("capacity: largest N with ≥ 95% of patterns retrieved")
    ax.set_title("Capacity: random ±1 patterns, query = pattern with ≈10% bits flipped,\n"
                 "retrieved = one update gives the pattern exactly", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7.5, loc="upper left")
    return dict(threshold=thresh, cap=cap, samples_per_N=args.samples, rows=results,
                files=[save(fig, out, "capacity.png")])


# ===================================================================== 3. basins
BASIN_ANGLES = (10, 55, 150, 215, 300)          # degrees; two patterns 45° apart, radius 2
BASIN_ENERGIES = {"softmax": {}, "sparsemax": {}, "entmax": {"alpha": 1.5}}


def weights(name, xi, X, beta):
    z = beta * jnp.asarray(xi) @ jnp.asarray(X).T
    if name == "softmax":
        return np.asarray(jax.nn.softmax(z, -1))
    return np.asarray(entmax(z, 2.0 if name == "sparsemax" else BASIN_ENERGIES[name]["alpha"]))


def _basin_step(name, x, X, beta):
    """One update ξ ← attend(name, ξ, X, X) = ∂F/∂ζ for a batch of states (keys = values = X)."""
    return ea.attend(name, x[:, None, :], X[:, None, :], X[:, None, :], beta=beta,
                     **BASIN_ENERGIES[name])[:, 0]


BASIN_STEP = {name: jax.jit(partial(_basin_step, name)) for name in BASIN_ENERGIES}   # β traced


def converge(name, xi, X, beta, max_steps, eps=1e-6):
    """Iterate ξ ← attend(name, ξ, X, X) = ∂F/∂ζ until no coordinate moves more than eps."""
    step = lambda x: BASIN_STEP[name](x, X, jnp.float32(beta))
    x = jnp.asarray(xi)
    steps = np.zeros(len(xi), int)
    for _ in range(max_steps):
        new = step(x)
        moved = np.asarray(jnp.max(jnp.abs(new - x), -1)) >= eps
        if not moved.any():
            break
        steps += moved
        x = new
    return np.asarray(x), steps, moved


def run_basins(args, out):
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch
    ang = np.deg2rad(BASIN_ANGLES)
    X = (2.0 * np.stack([np.cos(ang), np.sin(ang)], -1)).astype(np.float32)
    n = len(X)
    xs = np.linspace(-4, 4, args.grid)
    grid = np.stack(np.meshgrid(xs, xs), -1).reshape(-1, 2).astype(np.float32)
    # the generic attention step is the Hopfield update for softmax: check on the grid
    diff = float(np.max(np.abs(np.asarray(hf.update(grid, X, 2.0)) - np.asarray(
        ea.attend("softmax", grid[:, None], X[:, None], X[:, None], beta=2.0)[:, 0]))))
    log(f"basins: {n} patterns in d = 2, {args.grid}×{args.grid} starts; "
        f"|hf.update − attend('softmax')| max = {diff:.2e}")
    panels = []
    for name in BASIN_ENERGIES:
        for beta in args.basin_betas:
            final, steps, moving = converge(name, grid, X, beta, args.max_steps)
            p = weights(name, final, X, beta)
            label = np.where(p.max(1) >= 0.9, p.argmax(1), n)
            label = np.where(moving, n + 1, label)
            fps = np.unique(np.round(final[label == n], 2), axis=0)
            frac = np.bincount(label, minlength=n + 2) / label.size
            panels.append(dict(energy=name, beta=beta, label=label.reshape(args.grid, args.grid),
                               metastable_points=fps, fractions=frac, mean_steps=float(steps.mean()),
                               max_steps=int(steps.max())))
            log(f"  {name:9s} β = {beta:<4g}: metastable {100 * frac[n]:5.1f}% of starts "
                f"({len(fps)} mixed fixed points), not converged {100 * frac[n + 1]:.1f}%, "
                f"steps mean {steps.mean():.1f} max {steps.max()}")
    from matplotlib import colormaps
    colors = [colormaps["tab10"](j) for j in range(n)]
    cmap = ListedColormap([(*c[:3], 0.6) for c in colors] + [(0.6, 0.6, 0.6, 1.0), (0.15, 0.15, 0.15, 1.0)])
    nb = len(args.basin_betas)
    fig = figure(3.2 * nb, 3.3 * len(BASIN_ENERGIES) + 0.6)
    axes = fig.subplots(len(BASIN_ENERGIES), nb, squeeze=False)
    for ax, pn in zip(axes.flat, panels):
        ax.imshow(pn["label"], origin="lower", extent=(-4, 4, -4, 4), cmap=cmap, vmin=-0.5,
                  vmax=n + 1.5, interpolation="nearest")
        ax.scatter(X[:, 0], X[:, 1], marker="*", s=180, c=colors, edgecolors="k", zorder=3)
        if len(pn["metastable_points"]):
            m = pn["metastable_points"]
            ax.scatter(m[:, 0], m[:, 1], marker="X", s=60, c="k", edgecolors="w", zorder=4)
        name = pn["energy"] + (" (α = 1.5)" if pn["energy"] == "entmax" else "")
        ax.set_title(f"{name}, β = {pn['beta']:g}\nmetastable {100 * pn['fractions'][n]:.0f}%, "
                     f"mean steps {pn['mean_steps']:.1f}", fontsize=9)
        ax.set_xticks([-4, -2, 0, 2, 4]), ax.set_yticks([-4, -2, 0, 2, 4]), ax.tick_params(labelsize=7)
    handles = [Patch(color=colors[j], label=f"→ x{j}") for j in range(n)] + [
        Patch(color=(0.6, 0.6, 0.6), label="→ metastable mixture (max weight < 0.9)"),
        Patch(color=(0.15, 0.15, 0.15), label=f"not converged in {args.max_steps} steps")]
    fig.legend(handles=handles, loc="outside lower center", ncols=4, fontsize=8)
    fig.suptitle("Basins of attraction in d = 2: each start ξ₀ coloured by where ξ ← attend(ξ, X, X) "
                 "converges\n(stars: stored patterns; black X: metastable fixed points)", fontsize=10)
    files = [save(fig, out, "basins.png")]
    rows = [dict(energy=p["energy"], beta=p["beta"],
                 fractions={**{f"x{j}": float(p["fractions"][j]) for j in range(n)},
                            "metastable": float(p["fractions"][n]), "not_converged": float(p["fractions"][n + 1])},
                 metastable_fixed_points=p["metastable_points"].tolist(),
                 mean_steps=p["mean_steps"], max_steps=p["max_steps"]) for p in panels]
    return dict(patterns=X.tolist(), grid=args.grid, extent=[-4, 4, -4, 4],
                separation=np.asarray(hf.separation(X)).tolist(), hf_vs_attend_max_diff=diff,
                rows=rows, files=files)


# ====================================================================== tables


def markdown(res) -> str:
    L = []
    dg = res["digits"]
    L += [f"### Digit retrieval (d = {dg['d']}, 10 patterns, Δ_min = {dg['separation_min']:g}, "
          f"suggest_beta = {dg['suggest_beta']:.4f})", "",
          "| β | noisy: exact, converged | noisy: exact, 1 update | noisy: single-pattern state | "
          "noisy: distinct final states | masked: exact, converged | masked: exact, 1 update | "
          "masked: distinct final states | mean updates (noisy) |",
          "|---|---|---|---|---|---|---|---|---|"]
    by = {}
    for r in dg["rows"]:
        by.setdefault(r["beta"], {})[r["query"]] = r
    for b, q in by.items():
        a, m = q["noisy"], q["masked"]
        L.append(f"| {b:g} | {a['acc_converged']:.3f} | {a['acc_one_step']:.3f} | {a['single_pattern']:.3f} | "
                 f"{a['fixed_points']} | {m['acc_converged']:.2f} | {m['acc_one_step']:.2f} | "
                 f"{m['fixed_points']} | {a['mean_steps']:.1f} |")
    c = dg["nearest_pattern_accuracy"]
    L += ["", f"Nearest stored pattern (unique largest overlap, the β → ∞ one-step answer): "
          f"noisy {c['noisy']:.3f}, masked {c['masked']:.2f}.", ""]
    cp = res["capacity"]
    nets = list(NETS)
    L += [f"### Capacity (≥ {cp['threshold']:.0%} of stored patterns retrieved exactly in one update; "
          f"search cap N ≤ {cp['cap']}; ≥ {cp['samples_per_N']} patterns per tested N)", "",
          "| d | bits flipped | " + " | ".join(nets) + " | nearest-pattern prediction (β → ∞) | "
          "Hebbian fixed-point prediction (Gaussian crosstalk) | 0.14·d |",
          "|---|---|" + "---|" * (len(nets) + 3)]
    for r in cp["rows"]:
        cells = [("≥ " if r[k]["capped"] else "") + str(r[k]["capacity"]) for k in nets]
        L.append(f"| {r['d']} | {r['flipped_bits']} | " + " | ".join(cells) +
                 f" | {r['nearest_pattern_prediction']:.3g} | {r['hebb_fixed_point_prediction']} | "
                 f"{r['hebb_0_14d']:.1f} |")
    bs = res["basins"]
    L += ["", f"### Basins (d = 2, 5 patterns, {bs['grid']}×{bs['grid']} starts in [−4, 4]²)", "",
          "| energy | β | → a single pattern | metastable | not converged | mixed fixed points | mean / max updates |",
          "|---|---|---|---|---|---|---|"]
    for r in bs["rows"]:
        fr = r["fractions"]
        single = 1 - fr["metastable"] - fr["not_converged"]
        L.append(f"| {r['energy']} | {r['beta']:g} | {single:.1%} | {fr['metastable']:.1%} | "
                 f"{fr['not_converged']:.1%} | {len(r['metastable_fixed_points'])} | "
                 f"{r['mean_steps']:.1f} / {r['max_steps']} |")
    L += ["", f"Total runtime: {res['runtime_s']:.0f} s ({'--quick' if res['quick'] else 'full run'})."]
    return "\n".join(L) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller grids and searches (< 1 min)")
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder (default: papers/hopfield, or papers/hopfield/quick with --quick)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = args.out or (HERE / "quick" if args.quick else HERE)
    out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        args.per_digit, args.dims, args.cap, args.samples, args.grid = 10, [8, 16, 24, 32], 256, 300, 41
    else:
        args.per_digit, args.dims = 50, [8, 12, 16, 20, 24, 32, 48, 64]
        args.cap, args.samples, args.grid = 65536, 2000, 121
    args.max_steps = 300
    args.basin_betas = [0.5, 1.0, 2.0, 5.0]
    log(f"Ramsauer et al. 2020 reproduction ({'quick' if args.quick else 'full'}), jax {jax.__version__} "
        f"on {jax.devices()[0].platform}, output -> {out}")
    rng = np.random.default_rng(args.seed)
    res = dict(paper="Ramsauer et al. 2020, Hopfield Networks is All You Need, arXiv 2008.02217",
               quick=args.quick, seed=args.seed,
               command=" ".join(["python", "papers/hopfield/run.py"] + (argv or sys.argv[1:])),
               versions=dict(python=platform.python_version(), jax=jax.__version__, numpy=np.__version__))
    res["digits"] = run_digits(args, rng, out)
    res["capacity"] = run_capacity(args, rng, out)
    res["basins"] = run_basins(args, out)
    res["runtime_s"] = round(time.perf_counter() - T0, 1)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    (out / "results.md").write_text(markdown(res))
    log(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    log(f"done in {res['runtime_s']:.0f} s")
    return res


if __name__ == "__main__":
    main()
