"""Tree attention decode vs ring attention vs all-gather of partials (Shyam et al.,
"Tree Attention", arXiv 2408.04093): latency, communication and peak memory per
device over KV-cache lengths and simulated device counts.

    python papers/tree_attention/run.py            # full grid, ~8 min on 2 CPU cores
    python papers/tree_attention/run.py --quick    # < 1 min (writes to papers/tree_attention/quick/)

Each device count runs in its own interpreter (the simulated device count,
XLA_FLAGS=--xla_force_host_platform_device_count=p, is fixed when JAX starts);
inside it, `energy_attn.bench_decode.measure` times the tree and the all-gather in
alternating rounds, then the ring in rounds of its own, and reads communication bytes from the compiled HLO and
peak memory from XLA's buffer assignment. Writes results.json, results.md (the
tables), latency.png, communication.png, memory.png to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
T0 = time.perf_counter()
METHODS = ("tree", "ring", "allgather")
COLORS = {"tree": "tab:green", "ring": "tab:red", "allgather": "tab:blue"}
NAMES = {"tree": "tree", "ring": "ring", "allgather": "all-gather partials"}

FULL = dict(devices=[2, 4, 8, 16], tokens=[32768, 131072, 524288], heads=4, head_dim=64,
            rounds=2)
QUICK = dict(devices=[2, 4], tokens=[4096, 16384], heads=2, head_dim=32, rounds=1)


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


# ------------------------------------------------------------------ measurement


def child(spec: dict) -> None:
    """Runs with `spec['devices']` simulated devices: every KV length, JSON rows on stdout."""
    from energy_attn.bench_decode import measure, paper_formulas
    rows = []
    for tokens in spec["tokens"]:
        res = measure(tokens=tokens, heads=spec["heads"], head_dim=spec["head_dim"], batch=1,
                      devices=spec["devices"], rounds=spec["rounds"],
                      log=lambda m: print(f"    p={spec['devices']} T={tokens}: {m.strip()}",
                                          file=sys.stderr, flush=True))
        paper = paper_formulas(tokens=tokens, heads=spec["heads"], head_dim=spec["head_dim"],
                               batch=1, devices=spec["devices"], itemsize=4)
        for name, m in res["methods"].items():
            rows.append(dict(devices=spec["devices"], tokens=tokens, method=name,
                             median_s=m["median_s"], min_s=m["min_s"], times_s=m["times_s"],
                             compile_s=m["compile_s"], comm_count=m["comm_count"],
                             comm_wire_bytes=m["comm_wire_bytes"], comm_bytes=m["comm_bytes"],
                             comm_by_kind=m["comm_by_kind"], memory=m["memory"],
                             max_abs_diff_vs_tree=m.get("max_abs_diff_vs_tree"),
                             paper_comm_bytes=paper.get(f"{name}_comm_bytes"),
                             paper_peak_bytes=paper.get(f"{name}_peak_bytes"),
                             tree_implementation=res["tree_implementation"]))
    print(json.dumps(rows), flush=True)


def run_devices(spec: dict) -> list[dict]:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={spec['devices']}")
    proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tail = []
    for line in proc.stderr:
        line = line.rstrip("\n")
        tail = (tail + [line])[-5:]
        if line.startswith("    p="):
            log(line.strip())
    out = proc.stdout.read()
    if proc.wait() != 0:
        raise SystemExit(f"child with {spec['devices']} devices failed:\n" + "\n".join(tail))
    return json.loads(out.strip().splitlines()[-1])


# ------------------------------------------------------------------ figures and tables


def _figure(w, h):
    from matplotlib.figure import Figure
    return Figure(figsize=(w, h), layout="constrained")


def _series(rows, method, devices, key):
    pts = sorted((r["tokens"], key(r)) for r in rows if r["method"] == method and r["devices"] == devices)
    return [p[0] for p in pts], [p[1] for p in pts]


def _token_axis(ax, tokens):
    """Log x axis labelled at the measured token counts only (32k, 128k, ...)."""
    from matplotlib.ticker import NullLocator
    ax.set_xticks(tokens, [f"{t // 1024}k" for t in tokens])
    ax.xaxis.set_minor_locator(NullLocator())


def figures(rows, cfg, out: Path) -> list[str]:
    devices = cfg["devices"]
    # 1. latency per method vs tokens, one panel per device count; ring/tree speed-up below
    fig = _figure(3.2 * len(devices), 5.6)
    axes = fig.subplots(2, len(devices), squeeze=False)
    for j, p in enumerate(devices):
        ax = axes[0][j]
        for m in METHODS:
            x, y = _series(rows, m, p, lambda r: r["median_s"] * 1e3)
            ax.loglog(x, y, "o-", color=COLORS[m], label=NAMES[m])
        ax.set_title(f"{p} devices")
        ax.set_xlabel("KV-cache tokens")
        _token_axis(ax, cfg["tokens"])
        if j == 0:
            ax.set_ylabel("decode step, median ms")
            ax.legend(fontsize=8)
        ax = axes[1][j]
        x, tree = _series(rows, "tree", p, lambda r: r["median_s"])
        _, ring = _series(rows, "ring", p, lambda r: r["median_s"])
        _, gather = _series(rows, "allgather", p, lambda r: r["median_s"])
        ax.semilogx(x, [r / t for r, t in zip(ring, tree)], "o-", color=COLORS["ring"], label="ring / tree")
        ax.semilogx(x, [g / t for g, t in zip(gather, tree)], "o-", color=COLORS["allgather"],
                    label="all-gather / tree")
        ax.axhline(8, color="gray", ls=":", lw=1)
        ax.axhline(1, color="gray", ls="-", lw=0.5)
        ax.set_xlabel("KV-cache tokens")
        _token_axis(ax, cfg["tokens"])
        if j == 0:
            ax.set_ylabel("time ratio (> 1: tree faster)")
            ax.legend(fontsize=8)
    fig.suptitle("Decode latency on simulated CPU devices (2 shared cores)")
    fig.savefig(out / "latency.png", dpi=100)

    # 2. communication: measured (HLO) vs paper formula, per device, vs tokens at the largest p,
    #    and vs p at the largest T
    fig = _figure(10, 4)
    ax1, ax2 = fig.subplots(1, 2)
    p_max, t_max = max(devices), max(cfg["tokens"])
    for m in METHODS:
        x, y = _series(rows, m, p_max, lambda r: max(r["comm_wire_bytes"], 1))
        ax1.loglog(x, y, "o-", color=COLORS[m], label=f"{NAMES[m]} (HLO)")
        if m != "allgather":
            x, y = _series(rows, m, p_max, lambda r: r["paper_comm_bytes"])
            ax1.loglog(x, y, "x--", color=COLORS[m], label=f"{NAMES[m]} (paper formula)")
        pts = sorted((r["devices"], max(r["comm_wire_bytes"], 1)) for r in rows
                     if r["method"] == m and r["tokens"] == t_max)
        ax2.loglog([a for a, _ in pts], [b for _, b in pts], "o-", color=COLORS[m], label=NAMES[m])
    ax1.set(xlabel="KV-cache tokens", ylabel="bytes sent per device per step",
            title=f"{p_max} devices")
    ax2.set(xlabel="devices p", title=f"{t_max} tokens")
    ax2.set_xscale("log", base=2)
    _token_axis(ax1, cfg["tokens"])
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=8)
    fig.suptitle("Communication per decode step, read from the compiled HLO")
    fig.savefig(out / "communication.png", dpi=100)

    # 3. peak memory per device vs tokens at each p
    fig = _figure(10, 4)
    ax1, ax2 = fig.subplots(1, 2)
    for m in METHODS:
        x, y = _series(rows, m, p_max, lambda r: r["memory"]["peak_bytes"] / 2 ** 20)
        ax1.loglog(x, y, "o-", color=COLORS[m], label=NAMES[m])
    for p in devices:
        x, tree = _series(rows, "tree", p, lambda r: r["memory"]["peak_bytes"])
        _, ring = _series(rows, "ring", p, lambda r: r["memory"]["peak_bytes"])
        ax2.semilogx(x, [t / r for t, r in zip(tree, ring)], "o-", label=f"p = {p}")
    ax2.axhline(0.5, color="gray", ls=":", lw=1)
    ax1.set(xlabel="KV-cache tokens", ylabel="peak MiB per device (XLA buffer assignment)",
            title=f"{p_max} devices")
    ax2.set(xlabel="KV-cache tokens", ylabel="tree peak / ring peak", ylim=(0, 1))
    _token_axis(ax1, cfg["tokens"])
    _token_axis(ax2, cfg["tokens"])
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    fig.suptitle("Peak memory per device")
    fig.savefig(out / "memory.png", dpi=100)
    return ["latency.png", "communication.png", "memory.png"]


def tables(rows, cfg) -> str:
    by = {(r["devices"], r["tokens"], r["method"]): r for r in rows}
    lines = [f"### Decode step, B = 1, one query token, {cfg['heads']} heads × {cfg['head_dim']}, fp32 "
             f"(median of {cfg['rounds']} rounds: tree and all-gather alternating, the ring in rounds "
             "of its own)", "",
             "| devices | tokens | tree ms | ring ms | all-gather ms | ring / tree | all-gather / tree "
             "| tree sent B | ring sent B | all-gather sent B | ring / tree bytes "
             "| tree peak MiB | ring peak MiB | tree / ring peak |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in cfg["devices"]:
        for t in cfg["tokens"]:
            tr, ri, ag = (by[(p, t, m)] for m in METHODS)
            lines.append(
                f"| {p} | {t:,} | {tr['median_s'] * 1e3:.1f} | {ri['median_s'] * 1e3:.1f} | "
                f"{ag['median_s'] * 1e3:.1f} | {ri['median_s'] / tr['median_s']:.1f} | "
                f"{ag['median_s'] / tr['median_s']:.2f} | {tr['comm_wire_bytes']:,.0f} | "
                f"{ri['comm_wire_bytes']:,.0f} | {ag['comm_wire_bytes']:,.0f} | "
                f"{ri['comm_wire_bytes'] / tr['comm_wire_bytes']:,.0f} | "
                f"{tr['memory']['peak_bytes'] / 2 ** 20:,.1f} | {ri['memory']['peak_bytes'] / 2 ** 20:,.1f} | "
                f"{tr['memory']['peak_bytes'] / ri['memory']['peak_bytes']:.2f} |")
    lines += ["", "### Communication: measured (HLO wire bytes per device) vs the paper's formulas", "",
              "| devices | tokens | tree measured | tree 2(p−1)/p·(bd + 2bn_h)·4 B | ring measured "
              "| ring 2btdp·4 B | ring measured / formula |", "|---|---|---|---|---|---|---|"]
    for p in cfg["devices"]:
        for t in cfg["tokens"]:
            tr, ri = by[(p, t, "tree")], by[(p, t, "ring")]
            lines.append(f"| {p} | {t:,} | {tr['comm_wire_bytes']:,.0f} | {tr['paper_comm_bytes']:,.0f} | "
                         f"{ri['comm_wire_bytes']:,.0f} | {ri['paper_comm_bytes']:,.0f} | "
                         f"{ri['comm_wire_bytes'] / ri['paper_comm_bytes']:.3f} |")
    lines += ["", "### Peak memory per device: XLA buffer assignment vs the paper's formulas", "",
              "| devices | tokens | tree MiB | tree 2btd + 2bd + 2bn_h | ring MiB | ring 4btd + 2bd |",
              "|---|---|---|---|---|---|"]
    for p in cfg["devices"]:
        for t in cfg["tokens"]:
            tr, ri = by[(p, t, "tree")], by[(p, t, "ring")]
            lines.append(f"| {p} | {t:,} | {tr['memory']['peak_bytes'] / 2 ** 20:,.1f} | "
                         f"{tr['paper_peak_bytes'] / 2 ** 20:,.1f} | {ri['memory']['peak_bytes'] / 2 ** 20:,.1f} | "
                         f"{ri['paper_peak_bytes'] / 2 ** 20:,.1f} |")
    worst = max((r["max_abs_diff_vs_tree"] or 0.0) for r in rows)
    lines += ["", f"Largest |ring − tree| or |all-gather − tree| over all outputs: {worst:.1e}.", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small grid, < 1 min")
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder (default: this folder, or quick/ with --quick)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    cfg = QUICK if args.quick else FULL
    out = args.out or (HERE / "quick" if args.quick else HERE)
    out.mkdir(parents=True, exist_ok=True)
    log(f"grid: devices {cfg['devices']}, tokens {cfg['tokens']}, {cfg['heads']} heads x "
        f"{cfg['head_dim']}, rounds {cfg['rounds']}")
    rows = []
    for p in cfg["devices"]:
        log(f"{p} devices: child interpreter with XLA_FLAGS=--xla_force_host_platform_device_count={p}")
        rows += run_devices(dict(cfg, devices=p))
    import matplotlib
    matplotlib.use("Agg")
    import jax
    pngs = figures(rows, cfg, out)
    md = tables(rows, cfg)
    (out / "results.md").write_text(md)
    wall = time.perf_counter() - T0
    (out / "results.json").write_text(json.dumps(dict(
        config=cfg, quick=args.quick, wall_s=wall, rows=rows,
        environment=dict(jax=jax.__version__, python=platform.python_version(),
                         cpu_count=os.cpu_count(), platform=platform.platform()),
        figures=pngs), indent=1))
    print(md)
    log(f"wrote {out}/results.json, results.md, {', '.join(pngs)} in {wall:.0f} s")


if __name__ == "__main__":
    main()
