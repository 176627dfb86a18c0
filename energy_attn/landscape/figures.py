"""Figure helpers shared by the pictures: panel grids, saving, patterns, trajectories.

Figures use matplotlib's object API on an Agg canvas (no pyplot state), so pictures can
be drawn from threads and tests without a display."""
from __future__ import annotations

from pathlib import Path

import numpy as np


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
        # Cyan: visible on the dark end of the colour map and on the legend's white box.
        ax.scatter(p2d[off, 0], p2d[off, 1], marker="o", s=40, facecolors="none",
                   edgecolors="cyan", linewidths=1.6, zorder=5,
                   label=f"{word} off the plane (projected)")
    if labels:
        placed = []
        for j, (x, y) in enumerate(p2d):
            if off[j] and n > max_labels:
                continue
            offset = _free_offset(ax, (x, y), placed)
            ax.annotate(f"x{j}", (x, y), textcoords="offset points", xytext=offset, fontsize=9,
                        fontweight="bold", color="black", zorder=6,
                        bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.7))


def _free_offset(ax, xy, placed, candidates=((7, 7), (7, -15), (-25, 7), (-25, -15), (7, 20), (-25, 20))):
    """The first label offset (points) whose label box, roughly 22 × 13 points, overlaps no
    label placed before; appends the chosen box to `placed` (in points on the axes)."""
    fig = ax.get_figure()
    box = ax.get_position()
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    w_pt, h_pt = box.width * fig.get_figwidth() * 72, box.height * fig.get_figheight() * 72
    px, py = (xy[0] - x0) / (x1 - x0) * w_pt, (xy[1] - y0) / (y1 - y0) * h_pt
    for dx, dy in candidates:
        lx, ly = px + dx, py + dy
        if all(abs(lx - ox) > 22 or abs(ly - oy) > 13 for ox, oy in placed):
            placed.append((lx, ly))
            return dx, dy
    placed.append((px + candidates[0][0], py + candidates[0][1]))
    return candidates[0]


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

