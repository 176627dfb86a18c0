"""index.html over the pictures: every toy picture, and a trained model's when one is given."""
from __future__ import annotations

import html
from pathlib import Path

from ..registry import available_energies
from .model import DEFAULT_PROMPT, check_head, model_attention, plot_attention_maps, plot_head_classes, \
    plot_head_landscape, prompt_ids, token_labels
from .retrieval import toy_patterns
from .toy import (NOT_RETRIEVAL_ENERGIES, landscape_notes, plot_basins, plot_beta_sweep, plot_curves,
                  plot_landscape)


def report(out_dir, *, model=None, tokenizer=None, step: int | None = None, name: str | None = None,
           summary: dict | None = None, seed: int = 0, grid: int = 60, prompt: str = DEFAULT_PROMPT,
           index: int = 0, head: int = 0, log=None) -> dict:
    """Every picture into out_dir plus index.html (relative image paths, plain HTML).

    With `model` (and its `tokenizer`) the trained-model pictures too; `name` (the run
    directory) and `step` go into titles, `summary` ({"model": ..., "val loss": ...}) into a
    table at the top. A model without attention modules still gets the toy pictures and a
    line in index.html saying why its own are missing."""
    out_dir = Path(out_dir)
    log = log or (lambda *_: None)
    maps, missing = None, None
    if model is not None:        # record and check first: a bad head fails before minutes of plotting
        ids, truncated = prompt_ids(tokenizer, prompt, model.max_seq_len)
        try:
            maps = model_attention(model, ids)
        except ValueError as e:  # no attention module: the toy pictures are still worth writing
            missing = str(e)
            log(f"no model pictures: {missing}")
        if maps is not None:
            check_head(maps, index, head)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []

    def add(filename, title, caption):
        entries.append((filename, title, caption))
        log(f"wrote {out_dir / filename}")

    X = toy_patterns(5, seed=seed)
    names = sorted((n for n in available_energies() if n not in NOT_RETRIEVAL_ENERGIES),
                   key=lambda n: (n != "softmax", n))          # softmax (Hopfield) first
    panels = plot_landscape(names, X, beta=2.0, grid=grid, seed=seed, out=out_dir / "landscape.png")["panels"]
    add("landscape.png", "Energy landscapes of every registered energy",
        "Filled contours of the retrieval energy E(ξ) = −F(ξ; keys = values = patterns)/β + ½‖ξ‖² "
        "(−F/2β for distance; −F + ½‖ξ‖² for energies without β) over the plane, with five stored "
        "patterns (stars). Red lines: iterates of the attention update ξ ← ∂F/∂ζ from the open circles. "
        "linear has no β and one global minimum. " + " ".join(landscape_notes(panels)))
    Xh = toy_patterns(6, dim=16, seed=seed, radius=3.0)
    plot_landscape(["softmax"], Xh, beta=1.0, grid=grid, seed=seed, plane=(0, 1),
                   out=out_dir / "landscape_plane.png",
                   title="softmax retrieval energy on the plane through patterns x0 and x1 (d = 16, N = 6)\n"
                         "other patterns are shown by their projections")
    add("landscape_plane.png", "A plane through two patterns in 16 dimensions",
        "The softmax (Hopfield) energy on the plane through the origin and stored patterns x0, x1 of "
        "six 16-dimensional patterns; the other patterns appear at their projections.")
    notes = plot_basins(X, grid=grid, seed=seed, out=out_dir / "basins.png")["notes"]
    add("basins.png", "Basins of attraction",
        "Every initial state of the grid is iterated to convergence and coloured by the stored pattern "
        "it reaches (within a quarter of the pattern spacing, association weight > 0.9); grey marks "
        "metastable mixtures. Small β merges everything into one global fixed point; large β gives "
        "one basin per pattern. " + " ".join(notes))
    plot_curves(seed=seed, out=out_dir / "curves.png")
    add("curves.png", "Energy against iteration",
        "Left: hopfield.retrieve energies of noisy queries at several β (monotone, CCCP). Middle: the "
        "same for other energies along ξ ← ∂F/∂ζ. Right (when energy_attn.energy_transformer is "
        "available): an Energy Transformer block's total and per-component energies.")
    plot_beta_sweep(seed=seed, out=out_dir / "beta_sweep.png")
    add("beta_sweep.png", "β sweep",
        "Fraction of noisy queries that retrieve their own pattern, mean cosine similarity to it, and "
        "metastable mixtures (fraction of queries, distinct fixed points) against β.")
    if maps is not None:
        who = " ".join(p for p in (name, None if step is None else f"step {step}") if p) or "the model"
        cut = f" The prompt was cut to the model's {len(ids)}-token context." if truncated else ""
        calls = ", ".join(dict.fromkeys(m.name.split(" (")[0] for m in maps))
        plot_attention_maps(maps, token_labels(tokenizer, ids), out=out_dir / "model_attention.png",
                            title=f"{who}: attention maps ∂F/∂s")
        add("model_attention.png", f"Attention maps of {who}",
            f"∂F/∂s of every head of the model's attention calls ({calls}) on the prompt {prompt!r}, "
            f"{len(ids)} tokens; rows are queries, columns keys, both labelled by their token (␣ is a "
            "space). A module called several times (the hybrid's shared block, once per site; the "
            "Energy Transformer's block, once per descent step) appears once per call, at most 8 "
            "calls evenly spread. The BST's in-block attention is block-diagonal, and its "
            "cross-attention reads context states, not tokens." + cut)
        plot_head_classes(maps, out=out_dir / "model_heads.png", title=f"{who}: head classes")
        add("model_heads.png", "Head classes",
            "Share of its visible keys that hold 90% of each head's weight (hopfield.top_k_mass), "
            "and the head's class by hopfield.classify_heads' rule applied to each query row "
            "against the keys it may see (single pattern: one key; global averaging: more than "
            "half of them; metastable: in between), majority over the queries.")
        plot_head_landscape(maps, index=index, head=head, grid=grid, out=out_dir / "model_landscape.png")
        add("model_landscape.png", f"Energy landscape of {maps[index].name}, head {head}",
            "The keys the head's last query may see, as stored patterns, on the plane of the two "
            "keys it weights most; the query's iterates are projected onto the plane. It is a "
            "slice: keys off the plane (hollow cyan circles) are drawn at their projections.")
    facts = dict(summary or {})
    if missing is not None:
        facts["model pictures"] = f"none: {missing}"
    index_path = write_index(out_dir, entries, title=name, summary=facts)
    log(f"wrote {index_path}")
    return dict(index=str(index_path), pictures=[str(out_dir / e[0]) for e in entries], maps=maps)


def html_page(title: str, body: list[str]) -> str:
    """A self-contained HTML page: `title`, one stylesheet, then the `body` fragments
    (already escaped). The one page writer: the pictures' index and `energy-attn
    compare`'s report.html both use it."""
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1400px;margin:auto;padding:1em}"
        "img{max-width:100%;border:1px solid #ccc}figure{margin:2em 0}"
        "figcaption{color:#333;max-width:60em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}</style></head><body>",
        *body, "</body></html>"]) + "\n"


def write_index(out_dir, entries, *, title=None, summary: dict | None = None) -> Path:
    """index.html: a summary table, contents, then each (filename, title, caption) as a
    figure with a relative <img> path."""
    esc = html.escape
    parts = [f"<h1>energy-attn pictures{': <code>' + esc(str(title)) + '</code>' if title else ''}</h1>"]
    if summary:
        parts.append("<table>" + "".join(f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>"
                                         for k, v in summary.items()) + "</table>")
    parts.append("<h2>Contents</h2><ol>" + "".join(
        f'<li><a href="#{esc(f)}">{esc(t)}</a></li>' for f, t, _ in entries) + "</ol>")
    for filename, title_, caption in entries:
        parts.append(f'<figure id="{esc(filename)}"><h2>{esc(title_)}</h2><img src="{esc(filename)}" '
                     f'alt="{esc(title_)}"><figcaption>{esc(caption)}</figcaption></figure>')
    path = Path(out_dir) / "index.html"
    path.write_text(html_page(f"energy-attn pictures{' of ' + str(title) if title else ''}", parts))
    return path
