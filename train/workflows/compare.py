"""Compare runs: one table, loss curves and an HTML report from run directories.

    energy-attn compare runs/sweep_energy                   # a sweep folder = all its runs
    energy-attn compare runs/a runs/b --out cmp/ --group-by model.attention.energy

    rows = [summarize(p) for p in expand(["runs/a", "runs/b"])]
    write_report(rows, "cmp/")        # results.md, results.csv, curves.png, report.html

Per run: energy, parameters, final validation loss and bits per byte, training tokens/s
(median over logged steps after step 1, which includes compilation), peak memory
(from done.json, written when the run had a process of its own: `energy-attn train`, or a
sweep with --processes >= 2; its peak RSS, and device memory on accelerators) and the
W&B run. Whatever a run lacks (a crashed run has no final val loss; a run that shared its
process has no peak memory; runs logged different metrics) is listed per run under "missing";
the rest of the report is still written. `--group-by KEY` adds mean ± std over the runs
that share a config value (seeds).
"""
from __future__ import annotations

import csv
import html
import json
import math
import statistics
from pathlib import Path
from typing import Callable, Sequence

from train.loop.metrics import read_metrics

COLUMNS = [("run", "run"), ("energy", "energy"), ("params", "params"), ("step", "step"),
           ("val_loss", "final val loss"), ("bits_per_byte", "bits per byte"),
           ("train_loss", "final train loss"), ("tokens_per_s", "tokens/s"),
           ("peak_mem_mb", "peak memory (MB)")]


# =========================================================================== reading runs


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_file() for f in
                                 ("config.yaml", "metrics.jsonl", "sweep_point.json"))


def expand(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories from arguments: a run directory, or a sweep folder (its sweep.json
    lists the runs). Raises ValueError naming the first path that is neither."""
    runs = []
    for p in map(Path, paths):
        if (p / "sweep.json").is_file():
            manifest = json.loads((p / "sweep.json").read_text())
            found = [p / r["name"] for r in manifest.get("runs", []) if is_run_dir(p / r["name"])]
            if not found:
                raise ValueError(f"{p}: a sweep folder with no run directories yet")
            runs.extend(found)
        elif is_run_dir(p):
            runs.append(p)
        else:
            why = "does not exist" if not p.exists() else \
                "is not a run directory (no config.yaml, metrics.jsonl or sweep_point.json) " \
                "nor a sweep folder (no sweep.json)"
            raise ValueError(f"{p} {why}")
    if not runs:
        raise ValueError("no run directories given")
    return runs


def _load_yaml(path: Path) -> dict:
    import yaml
    try:
        data = yaml.safe_load(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, yaml.YAMLError):
        return {}


def dotted(d: dict, key: str):
    for part in key.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def _count_params(config: dict) -> int | None:
    """Parameters of the run's model, from its config alone (shapes only, no compute)."""
    try:
        from flax import nnx

        from models import build_model, num_params
        from train.config import from_dict
        cfg = from_dict(config, check=False)
        model = nnx.eval_shape(lambda: build_model(cfg.model, rngs=nnx.Rngs(0)))
        return int(num_params(model))
    except Exception:  # noqa: BLE001 -- e.g. a model or energy registered by another script
        return None


def _last_by_step(rows: list[dict]) -> list[dict]:
    by_step = {}
    for r in rows:                       # a resumed run repeats steps: the last row wins
        by_step[r.get("step")] = r
    return [by_step[s] for s in sorted(by_step, key=lambda s: (s is None, s))]


def summarize(run_dir: str | Path) -> dict:
    """One row for the table, plus `curves` (train/val loss vs step), `config` and `missing`."""
    run_dir = Path(run_dir)
    config = _load_yaml(run_dir / "config.yaml")
    done = {}
    if (run_dir / "done.json").is_file():
        try:
            done = json.loads((run_dir / "done.json").read_text())
        except ValueError:
            done = {}
    rows = read_metrics(run_dir)
    train = _last_by_step([r for r in rows if r.get("split", "train") == "train"])
    val = _last_by_step([r for r in rows if r.get("split") == "val"])
    missing = []
    if not config:
        missing.append("config.yaml")
    if not (run_dir / "metrics.jsonl").is_file():
        missing.append("metrics.jsonl")
    final_val = val[-1] if val else {}
    steps = dotted(config, "train.steps")
    last_step = max([r.get("step", 0) for r in train + val], default=None)
    if last_step is not None and isinstance(steps, int) and last_step < steps:
        missing.append(f"finished run (stopped at step {last_step} of {steps})")
    if not val or not isinstance(final_val.get("loss"), (int, float)):
        missing.append("final val loss")
    speeds = [r["tokens_per_s"] for r in train           # step 1's time includes compilation
              if r.get("step", 0) > 1 and _finite(r.get("tokens_per_s"))]
    params = done.get("params") or (_count_params(config) if config else None)
    peak = done.get("peak_device_mb") or done.get("peak_rss_mb")
    wandb = _load_json(run_dir / "wandb_run.json")
    row = {
        "run": run_dir.name, "path": str(run_dir),
        "energy": dotted(config, "model.attention.energy"), "model": dotted(config, "model.name"),
        "params": params, "step": last_step,
        "val_loss": final_val.get("loss"), "bits_per_byte": final_val.get("bits_per_byte"),
        "train_loss": train[-1].get("loss") if train else None,
        "tokens_per_s": statistics.median(speeds) if speeds else None,
        "peak_mem_mb": peak, "peak_mem_kind": "device" if done.get("peak_device_mb") else "rss",
        "wandb": wandb.get("id") or _read_text(run_dir / "wandb_id.txt"),
        "wandb_url": wandb.get("url"), "wandb_offline_dir": wandb.get("offline_dir"),
        "val_metrics": sorted(k for k in final_val if k not in ("step", "split", "time", "tokens")),
        "config": config, "missing": missing,
        "curves": {"train": [(r["step"], r["loss"]) for r in train if _finite(r.get("loss"))],
                   "val": [(r["step"], r["loss"]) for r in val if _finite(r.get("loss"))]},
    }
    if params is None:
        missing.append("parameter count")
    if speeds == []:
        missing.append("tokens/s")
    if peak is None:
        missing.append("peak memory (measured only for a run with a process of its own: "
                       "`energy-attn train`, or `sweep --processes 2` and more)")
    return row


def mark_metric_differences(rows: list[dict]) -> None:
    """Runs that logged different validation metrics: name what each lacks."""
    union = set().union(*(r["val_metrics"] for r in rows)) if rows else set()
    for r in rows:
        if r["val_metrics"]:
            lacks = sorted(union - set(r["val_metrics"]))
            if lacks:
                r["missing"].append(f"val metrics other runs have: {', '.join(lacks)}")


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _load_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text())
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


# =========================================================================== grouping


def aggregate(rows: list[dict], by: str | Callable[[dict], object]) -> list[dict]:
    """Mean and sample std of val loss, bits per byte and tokens/s over runs sharing `by`
    (a dotted config key such as model.attention.energy, or a function of the row)."""
    key = by if callable(by) else (lambda r: dotted(r["config"], by))
    groups: dict = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    out = []
    for k, rs in groups.items():
        g = {"group": k, "runs": len(rs)}
        for m in ("val_loss", "bits_per_byte", "tokens_per_s"):
            vals = [r[m] for r in rs if _finite(r[m])]
            g[m] = statistics.fmean(vals) if vals else None
            g[m + "_std"] = statistics.stdev(vals) if len(vals) > 1 else None
            g[m + "_n"] = len(vals)
        out.append(g)
    return sorted(out, key=lambda g: (g["val_loss"] is None, g["val_loss"] or 0.0))


def plus_minus(mean, std, fmt="{:.4f}") -> str:
    if mean is None:
        return "—"
    return fmt.format(mean) + (f" ± {fmt.format(std)}" if std is not None else "")


def groups_markdown(groups: list[dict], by: str = "group") -> str:
    lines = [f"| {by} | runs | val loss | bits per byte | tokens/s |", "|---|---|---|---|---|"]
    for g in groups:
        lines.append(f"| {g['group']} | {g['val_loss_n']}/{g['runs']} | "
                     f"{plus_minus(g['val_loss'], g['val_loss_std'])} | "
                     f"{plus_minus(g['bits_per_byte'], g['bits_per_byte_std'])} | "
                     f"{plus_minus(g['tokens_per_s'], g['tokens_per_s_std'], '{:,.0f}')} |")
    return "\n".join(lines) + "\n"


# =========================================================================== output


def _cell(row: dict, key: str) -> str:
    v = row.get(key)
    if v is None:
        return "—"
    if key in ("val_loss", "bits_per_byte", "train_loss"):
        return f"{v:.4f}"
    if key == "tokens_per_s":
        return f"{v:,.0f}"
    if key == "params":
        return f"{v / 1e6:.3f}M"
    if key == "peak_mem_mb":
        return f"{v:,.0f}" + (" (device)" if row.get("peak_mem_kind") == "device" else "")
    return str(v)


def table_markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r, k).replace("|", "\\|") for k, _ in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def missing_by_reason(rows: list[dict]) -> dict[str, list[str]]:
    """What is missing -> the runs it is missing from (one line per reason, not per run)."""
    out: dict[str, list[str]] = {}
    for r in rows:
        for m in r["missing"]:
            out.setdefault(m, []).append(r["run"])
    return out


def _runs_list(runs: list[str], total: int) -> str:
    return "every run" if len(runs) == total > 1 else ", ".join(f"`{r}`" for r in runs)


def missing_markdown(rows: list[dict]) -> str:
    lines = [f"- {reason}: {_runs_list(runs, len(rows))}" for reason, runs in missing_by_reason(rows).items()]
    return ("Missing:\n\n" + "\n".join(lines) + "\n") if lines else ""


def write_csv(rows: list[dict], path: Path) -> None:
    keys = [k for k, _ in COLUMNS] + ["model", "path", "wandb", "wandb_url", "missing"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(keys)
        for r in rows:
            w.writerow(["; ".join(r["missing"]) if k == "missing" else
                        ("" if r.get(k) is None else r.get(k)) for k in keys])


def _group_of(rows: list[dict], by: str | None) -> list:
    return [None if by is None else dotted(r["config"], by) for r in rows]


def mean_curve(curves: list[list[tuple[int, float]]]):
    """(steps, mean, std) over the steps every curve has; std 0 for a single curve."""
    import numpy as np
    common = sorted(set.intersection(*(set(s for s, _ in c) for c in curves))) if curves else []
    values = np.array([[dict(c)[s] for s in common] for c in curves], float)
    if not common:
        return np.array([]), np.array([]), np.array([])
    std = values.std(0, ddof=1) if len(curves) > 1 else np.zeros(len(common))
    return np.array(common), values.mean(0), std


def plot_curves(rows: list[dict], path: Path, *, group_by: str | None = None) -> None:
    """Train and validation loss against step, one panel per split, on one step axis from 0.

    Without group_by: one line per run. With it: one colour per group, its runs as thin
    lines and their mean (over the steps all of them logged) as a thick line in a band of
    ± one standard deviation."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True)
    groups = _group_of(rows, group_by)
    order = list(dict.fromkeys(groups))
    last = max((s for r in rows for split in ("train", "val") for s, _ in r["curves"][split]), default=1)
    for ax, split in zip(axes, ("train", "val")):
        for i, r in enumerate(rows):
            pts = r["curves"][split]
            if not pts:
                continue
            color = f"C{(order.index(groups[i]) if group_by else i) % 10}"
            few = len(pts) < 30
            ax.plot(*zip(*pts), color=color, marker="o" if few else None, markersize=3,
                    linewidth=0.6 if group_by else 1, alpha=0.35 if group_by else 1,
                    label=None if group_by else r["run"])
        for g in (order if group_by else []):
            curves = [r["curves"][split] for r, gr in zip(rows, groups) if gr == g and r["curves"][split]]
            steps, mean, std = mean_curve(curves)
            if not len(steps):
                continue
            color = f"C{order.index(g) % 10}"
            ax.plot(steps, mean, color=color, linewidth=2, marker="o" if len(steps) < 30 else None,
                    markersize=4, label=f"{group_by.split('.')[-1]}={g} (mean of {len(curves)})")
            if len(curves) > 1:
                ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
        ax.set_title(f"{split} loss" + (" (mean ± std per group)" if group_by else ""))
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy (nats/token)")
        ax.set_xlim(0, last * 1.03)
        ax.grid(alpha=0.3)
    val_evals = max((len(r["curves"]["val"]) for r in rows), default=0)
    if val_evals == 1:
        axes[1].set_title("val loss (one eval per run: set train.eval_every below train.steps)")
    shown = len(order) if group_by else len(rows)
    if any(r["curves"]["train"] or r["curves"]["val"] for r in rows):
        axes[1].legend(fontsize=7 if shown > 6 else 9, loc="upper right", ncol=1 + shown // 12)
    fig.savefig(path, dpi=100)


def _wandb_html(r: dict) -> str:
    if not r.get("wandb"):
        return "—"
    if r.get("wandb_url"):
        return f'<a href="{html.escape(r["wandb_url"])}">{html.escape(r["wandb"])}</a>'
    if r.get("wandb_offline_dir"):
        return (f'{html.escape(r["wandb"])} (offline: <code>wandb sync '
                f'{html.escape(r["wandb_offline_dir"])}</code>)')
    return html.escape(r["wandb"])


def report_html(rows: list[dict], groups: list[dict] | None, by: str | None) -> str:
    from energy_attn.landscape.report import html_page     # the one page writer
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t in COLUMNS)
    body = "".join("<tr>" + "".join(
        f"<td>{html.escape(_cell(r, k))}</td>"
        for k, _ in COLUMNS) + "</tr>\n" for r in rows)
    parts = [f"<h1>Runs compared ({len(rows)})</h1>", f"<table><tr>{head}</tr>\n{body}</table>"]
    if groups:
        parts.append(f"<h2>Mean ± std by {html.escape(by or 'group')}</h2><table><tr>"
                     + "".join(f"<th>{t}</th>" for t in (by, "runs", "val loss", "bits per byte",
                                                        "tokens/s")) + "</tr>")
        for g in groups:
            parts.append(f"<tr><td>{html.escape(str(g['group']))}</td><td>{g['val_loss_n']}/{g['runs']}</td>"
                         f"<td>{plus_minus(g['val_loss'], g['val_loss_std'])}</td>"
                         f"<td>{plus_minus(g['bits_per_byte'], g['bits_per_byte_std'])}</td>"
                         f"<td>{plus_minus(g['tokens_per_s'], g['tokens_per_s_std'], '{:,.0f}')}</td></tr>")
        parts.append("</table>")
    parts.append("<h2>Loss curves</h2><img src='curves.png' alt='loss curves'>")
    logged = [r for r in rows if r.get("wandb")]
    if logged:
        parts.append("<h2>Weights &amp; Biases</h2><ul>" + "".join(
            f"<li><code>{html.escape(r['run'])}</code>: {_wandb_html(r)}</li>" for r in logged) + "</ul>")
    missing = missing_by_reason(rows)
    if missing:
        parts.append("<h2>Missing</h2><ul>" + "".join(
            f"<li>{html.escape(reason)}: {html.escape(_runs_list(runs, len(rows)).replace('`', ''))}</li>"
            for reason, runs in missing.items()) + "</ul>")
    return html_page("energy-attn compare", parts)


def write_report(rows: list[dict], out: str | Path, *, group_by: str | None = None) -> dict:
    """results.md, results.csv, curves.png and report.html in `out`; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mark_metric_differences(rows)
    groups = aggregate(rows, group_by) if group_by else None
    md = "# Runs compared\n\n" + table_markdown(rows)
    if groups:
        md += f"\n## Mean ± std by {group_by}\n\n" + groups_markdown(groups, group_by)
    md += "\n![loss curves](curves.png)\n"
    if missing_markdown(rows):
        md += "\n" + missing_markdown(rows)
    paths = {"markdown": out / "results.md", "csv": out / "results.csv",
             "curves": out / "curves.png", "html": out / "report.html"}
    paths["markdown"].write_text(md)
    write_csv(rows, paths["csv"])
    plot_curves(rows, paths["curves"], group_by=group_by)
    paths["html"].write_text(report_html(rows, groups, group_by))
    return paths


def compare(paths: Sequence[str | Path], out: str | Path, *, group_by: str | None = None,
            log=print) -> list[dict]:
    """`energy-attn compare`: summarize, print the table and what is missing, write files."""
    rows = [summarize(p) for p in expand(paths)]
    files = write_report(rows, out, group_by=group_by)
    log(table_markdown(rows))
    if group_by:
        log(groups_markdown(aggregate(rows, group_by), group_by))
    miss = missing_markdown(rows)
    if miss:
        log(miss)
    log("wrote " + ", ".join(str(p) for p in files.values()))
    return rows
