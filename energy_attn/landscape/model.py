"""Pictures of a trained model's attention, read from its attention layers.

    maps = ls.model_attention(model, token_ids)       # one AttentionMap per attention call
    ls.plot_attention_maps(maps, labels, out="model_attention.png")
    ls.plot_head_classes(maps, out="model_heads.png")
    ls.plot_head_landscape(maps, index=0, head=0, out="model_landscape.png")
    ls.plot_model(model, tokenizer, "pictures/", step=1000)   # all three

Nothing here knows a model: `ea.record_attention` runs the model once and every
attention module (transformer blocks, the hybrid's shared block at each of its
sites, the BST's in-block and cross attention, each descent step of the Energy
Transformer) reports what it attended with. A layer that sees a batch of R rows for
one input row (the BST cuts the sequence into blocks) is pictured as R consecutive
pieces of the sequence: its maps are laid out block-diagonally.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import jax.numpy as jnp
import numpy as np

from ..primitives import default_beta
from ..recording import record_attention
from .figures import _figure, _save, _suptitle
from .retrieval import _energy_name, _extent, _to_plane, energy_formula, plane_through
from .toy import _draw_landscape, landscape

DEFAULT_PROMPT = "The energy of a state is lower when the query matches a stored key."

# The Energy Transformer's attention is softmax over the keys it may see (B ≠ C):
# on those keys its retrieval energy is softmax's.
_RETRIEVAL_EQUIVALENT = {"energy_transformer": "softmax"}


@dataclass(frozen=True)
class AttentionMap:
    """One attention call, laid out over the whole prompt.

    q: (Tq, H, D); k: (Tk, H_kv, D) (after RoPE); weights: (H, Tq, Tk) = ∂F/∂s;
    allowed: (H, Tq, Tk) bool, the pairs the mask let interact. cross: the keys are
    context states (the BST's), not tokens."""
    name: str
    q: np.ndarray
    k: np.ndarray
    weights: np.ndarray
    allowed: np.ndarray
    cross: bool
    energy: str | Callable
    params: dict

    @property
    def num_heads(self) -> int:
        return self.weights.shape[0]


def _block_diagonal(blocks):
    """(R, H, W, S) -> (H, R·W, R·S), zero (False) off the diagonal blocks."""
    r, h, w, s = blocks.shape
    out = np.zeros((h, r * w, r * s), blocks.dtype)
    for i in range(r):
        out[:, i * w:(i + 1) * w, i * s:(i + 1) * s] = blocks[i]
    return out


def model_attention(model, tokens) -> list[AttentionMap]:
    """Run `model` on one prompt, tokens (T,) ints, and return every attention call's map,
    in call order. A module called several times is named "<path> (call c of n)"."""
    tokens = np.asarray(tokens, np.int32)
    length = len(tokens)
    records = record_attention(model, jnp.asarray(tokens)[None])
    calls = {r.name: 0 for r in records}
    for r in records:
        calls[r.name] += 1
    maps = []
    for r in records:
        pieces = r.q.shape[0]          # rows the one input row became (1, or the BST's blocks)
        allowed = np.ones(r.weights.shape, bool) if r.allowed is None else \
            np.broadcast_to(r.allowed, r.weights.shape)
        weights, allowed = _block_diagonal(r.weights), _block_diagonal(allowed)
        q = r.q.reshape(-1, *r.q.shape[2:])[:length]
        keys = r.k.shape[0] * r.k.shape[1] if r.cross else length     # padding keys go too
        k = r.k.reshape(-1, *r.k.shape[2:])[:keys]
        name = r.name if calls[r.name] == 1 else f"{r.name} (call {r.call + 1} of {calls[r.name]})"
        if pieces > 1:
            name += f", {pieces} blocks"
        maps.append(AttentionMap(name=name, q=q, k=k, weights=weights[:, :length, :keys],
                                 allowed=allowed[:, :length, :keys], cross=r.cross,
                                 energy=r.energy, params=r.params))
    return maps


def token_labels(tokenizer, ids) -> list[str]:
    """Short printable labels, one per token: spaces as ␣, newlines as ↵."""
    out = []
    for t in ids:
        s = tokenizer.decode([int(t)]).replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥")
        out.append(repr(s)[1:-1][:4] if not s.isprintable() else s[:4])
    return out


def prompt_ids(tokenizer, prompt: str, max_len: int):
    """(ids, truncated): the prompt's tokens, cut to the model's context `max_len`."""
    ids = np.asarray(tokenizer.encode(prompt), np.int32)
    if ids.size < 2:
        raise ValueError(f"the prompt {prompt!r} gives {ids.size} token(s); use a longer prompt")
    return ids[:max_len], ids.size > max_len


def _pick(maps, most: int):
    """At most `most` maps, evenly spread, first and last kept."""
    if len(maps) <= most:
        return list(range(len(maps)))
    return sorted({int(round(i)) for i in np.linspace(0, len(maps) - 1, most)})


def plot_attention_maps(maps: list[AttentionMap], labels: list[str], *, out="model_attention.png",
                        title: str = "", most: int = 8) -> dict:
    """Every head of (at most `most`) attention calls, queries × keys, tokens on the axes."""
    chosen = _pick(maps, most)
    heads = max(maps[i].num_heads for i in chosen)
    length = len(labels)
    side = max(3.2, 0.085 * length + 1.2)          # a label per token stays legible
    fig, axes = _figure(heads, len(chosen), size=(side, side))
    font = 6 if length <= 40 else 5.5
    for row, i in enumerate(chosen):
        m = maps[i]
        for h in range(heads):
            ax = axes[row, h]
            if h >= m.num_heads:
                ax.axis("off")
                continue
            im = ax.imshow(m.weights[h], cmap="magma", vmin=0, vmax=1, interpolation="nearest",
                           aspect="auto")
            ax.set_title(f"{m.name}, head {h}", fontsize=8)
            ax.set_yticks(range(length), labels, fontsize=font)
            ax.set_ylabel("query token", fontsize=8)
            if m.cross:
                ax.set_xlabel("context state (the query's block reads its own)", fontsize=8)
            else:
                ax.set_xticks(range(length), labels, fontsize=font, rotation=90)
                ax.set_xlabel("key token", fontsize=8)
    fig.colorbar(im, ax=axes, shrink=0.6, label="attention weight ∂F/∂s")
    shown = "" if len(chosen) == len(maps) else f" ({len(chosen)} of {len(maps)} attention calls)"
    _suptitle(fig, f"{title}{shown}", heads)
    return dict(maps=[maps[i] for i in chosen], path=_save(fig, out))


def classify_map(m: AttentionMap, *, mass: float = 0.9, min_keys: int = 4):
    """Per-head class of one attention map by `hopfield.classify_heads`' rule applied to each
    query row against the keys it may see.

    k = `hopfield.top_k_mass` of each row (keys it may not see carry zero weight, so k is the
    same over the whole row or its visible part). A query that sees n keys is "single" if
    k = 1, "global" if k > n/2, else "metastable" (classify_heads would use n = Tk for every
    row). The head's class is the most common row class over queries that see at least
    `min_keys` keys (all queries if none does). Returns (codes (H,), names, k (H, Tq),
    share (H,): mean k / visible keys over the counted rows)."""
    from .. import hopfield
    k = np.asarray(hopfield.top_k_mass(jnp.asarray(m.weights, jnp.float32), mass=mass), np.float64)
    visible = m.allowed.sum(-1).astype(np.float64)                        # (H, Tq)
    names = list(hopfield.HEAD_CLASSES)
    single, glob, meta = names.index("single"), names.index("global"), names.index("metastable")
    rows = np.where(k <= 1, single, np.where(k > visible / 2, glob, meta))
    counted = visible >= min(min_keys, visible.max())
    votes = np.stack([((rows == c) & counted).sum(-1) for c in range(len(names))], -1)
    share = np.where(counted, k / np.maximum(visible, 1), 0).sum(-1) / np.maximum(counted.sum(-1), 1)
    return votes.argmax(-1), names, k, share


def plot_head_classes(maps: list[AttentionMap], *, out="model_heads.png", mass: float = 0.9,
                      title: str = "") -> dict:
    """Each head's mean share of its visible keys holding `mass` of its attention, and its
    class (global averaging / metastable / single pattern; see `classify_map`)."""
    from matplotlib.patches import Patch
    results = [classify_map(m, mass=mass) for m in maps]
    names = results[0][1]
    bars = [(i, h) for i, m in enumerate(maps) for h in range(m.num_heads)]
    codes = np.array([results[i][0][h] for i, h in bars])
    share = np.array([results[i][3][h] for i, h in bars])
    mean_k = np.array([results[i][2][h].mean() for i, h in bars])
    colors = {"global": "tab:blue", "metastable": "tab:orange", "single": "tab:green"}
    lines = [f"{i}: {m.name}  ({_energy_name(m.energy)})" for i, m in enumerate(maps)]
    lines = lines[:30] + (["…"] if len(lines) > 30 else [])
    from matplotlib.figure import Figure
    fig = Figure(figsize=(max(7.0, 0.3 * len(bars) + 1.5), 4.2 + 0.16 * len(lines)), layout="constrained")
    ax, text = fig.subplots(2, 1, height_ratios=[4.0, 0.16 * len(lines) + 0.2])
    xs = np.arange(len(bars))
    ax.bar(xs, share, color=[colors[names[c]] for c in codes], edgecolor="black", lw=0.5)
    ax.set_xticks(xs, [f"{i}.{h}" for i, h in bars], rotation=90 if len(bars) > 16 else 0, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.axhline(0.5, color="grey", ls=":", lw=1)
    ax.set_xlabel("attention call . head")
    ax.set_ylabel(f"keys holding {mass:.0%} of the\nweight / visible keys")
    ax.legend(handles=[Patch(color=c, label=n) for n, c in colors.items()], fontsize=8,
              loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title("mean over query rows; colour: the class most rows get (classify_heads' rule)", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    text.axis("off")
    text.text(0, 1, "attention calls:\n" + "\n".join(lines), va="top", family="monospace", fontsize=8,
              transform=text.transAxes)
    _suptitle(fig, title or "Head classification", fontsize=10)
    return dict(codes=codes, names=names, share=share, mean_k=mean_k, heads=bars, path=_save(fig, out))


def check_head(maps: list[AttentionMap], index: int, head: int) -> None:
    """ValueError unless `index` names an attention call and `head` one of its heads."""
    if not -len(maps) <= index < len(maps):
        raise ValueError(f"--layer {index} is out of range: the model made {len(maps)} attention "
                         f"calls on this prompt (0 .. {len(maps) - 1})")
    heads = maps[index].num_heads
    if not -heads <= head < heads:
        raise ValueError(f"--head {head} is out of range: {maps[index].name} has {heads} heads")


def plot_head_landscape(maps: list[AttentionMap], *, index: int = 0, head: int = 0, query: int = -1,
                        grid: int = 60, out="model_landscape.png", title: str = "") -> dict:
    """The retrieval energy of one head: the keys its query may see, as stored patterns, on
    the plane through the origin spanned by the two keys the query weights most; the
    query's own iterates ξ ← ∂F/∂ζ projected on that plane."""
    check_head(maps, index, head)
    m = maps[index]
    heads, length = m.num_heads, m.q.shape[0]
    head %= heads
    i = query % length
    seen = np.flatnonzero(m.allowed[head, i])
    if len(seen) < 2:
        raise ValueError(f"query {i} of {m.name} sees {len(seen)} key(s); the head landscape "
                         "needs two (pick a later query)")
    kv = head // (heads // m.k.shape[1])
    keys, xi = m.k[seen, kv], m.q[i, head]
    energy = _RETRIEVAL_EQUIVALENT.get(_energy_name(m.energy), m.energy)
    params = dict(m.params)
    beta = params.pop("beta", None)
    beta = default_beta(m.q.shape[-1]) if beta is None else beta
    beta = float(np.asarray(beta).reshape(-1)[head] if np.ndim(beta) else beta)
    w = m.weights[head, i, seen]
    order = np.argsort(-w)
    a, b = int(order[0]), int(order[1])
    if np.linalg.matrix_rank(np.stack([keys[a], keys[b]])) < 2:
        b = next((int(j) for j in order[2:]), b)
    plane = plane_through(keys[a], keys[b])
    pts = np.concatenate([_to_plane(keys, *plane), _to_plane(xi[None], *plane)])
    res = landscape(energy, keys, beta=beta, grid=grid, extent=_extent(pts, pad=0.25), plane=plane,
                    starts=xi[None], steps=30, params=params)
    fig, axes = _figure(1, 1, size=(6.4, 5.6))
    ax = axes[0, 0]
    word = "context states" if m.cross else "keys"
    _draw_landscape(fig, ax, {**res, "labels": False, "word": word},
                    title=f"{m.name}, head {head}, query {i}\n"
                          f"{_energy_name(energy)}, β = {beta:.3g}:  {energy_formula(energy)}")
    p2d = res["patterns_2d"]
    for j in (a, b):
        ax.annotate(f"key {seen[j]} (weight {w[j]:.2f})", p2d[j], textcoords="offset points",
                    xytext=(8, 8), fontsize=8, fontweight="bold", zorder=6,
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.7))
    q2d = _to_plane(xi[None], *plane)[0]
    ax.plot(*q2d, "D", color="crimson", mec="black", ms=7, zorder=6, label="query (projected)")
    ax.legend(fontsize=7, loc="lower left", framealpha=0.85)
    ax.set_xlabel(f"along key {seen[a]}")
    ax.set_ylabel(f"along key {seen[b]} (orthogonalised)")
    _suptitle(fig, title or "One head's energy landscape: the keys its query sees as stored "
                            "patterns, on the plane of the two it weights most (a slice: other keys "
                            "and the iterates are projected)", fontsize=10)
    return dict(res, name=m.name, head=head, query=i, keys_used=(int(seen[a]), int(seen[b])),
                path=_save(fig, out))


def plot_model(model, tokenizer, out_dir, *, prompt: str = DEFAULT_PROMPT, step: int | None = None,
               index: int = 0, head: int = 0, grid: int = 60, name: str | None = None) -> dict:
    """All three trained-model pictures into out_dir; the attention is recorded once.
    `name` (e.g. the run directory) and `step` go into the titles."""
    ids, truncated = prompt_ids(tokenizer, prompt, model.max_seq_len)
    maps = model_attention(model, ids)
    check_head(maps, index, head)        # before minutes of plotting
    who = " ".join(p for p in (name, None if step is None else f"step {step}") if p)
    cut = f" (cut to the model's {len(ids)}-token context)" if truncated else ""
    out_dir = Path(out_dir)
    return dict(
        maps=maps, tokens=ids, truncated=truncated,
        attention=plot_attention_maps(maps, token_labels(tokenizer, ids), out=out_dir / "model_attention.png",
                                      title=f"{who}: attention maps ∂F/∂s on {prompt!r}{cut}"),
        heads=plot_head_classes(maps, out=out_dir / "model_heads.png",
                                title=f"{who}: head classes on {len(ids)} prompt tokens"),
        landscape=plot_head_landscape(maps, index=index, head=head, grid=grid,
                                      out=out_dir / "model_landscape.png"))
