"""The energy zoo: every registered energy as the attention of the same small transformer,
same data, same token budget, 3 seeds; the final validation loss on the whole validation
split, mean ± std, and each energy against softmax in a paired t-test over seeds.

    python papers/energy_zoo/run.py            # full budgets (see README.md for the time)
    python papers/energy_zoo/run.py --quick    # < 1 min: 2 energies, 1 seed, few steps

Two corpora: the built-in corpus (CPython's documentation, byte tokens, configs/default.yaml)
and tiny-shakespeare (characters, configs/shakespeare_char.yaml, read from
../shared/data/tinyshakespeare.txt; skipped with a note if absent). Each corpus is one
`energy-attn sweep` (train/workflows/sweep.py) over model.attention.energy x train.seed, so a killed
run continues where it stopped when re-run; `energy-attn compare` (train/workflows/compare.py)
makes each corpus's table, curves and report in --out/<corpus>/; results.md and
results.json in --out gather both tables. Checkpoints stay in --runs (runs/energy_zoo).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

import energy_attn as ea  # noqa: E402
from train.workflows import compare as cmp  # noqa: E402
from train.loop.evaluate import evaluate_run  # noqa: E402
from train.workflows.paired_stats import paired_t  # noqa: E402
from train.workflows.sweep import plan, run_sweep  # noqa: E402

SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"

# The same transformer for every energy and both corpora: 4 layers, d_model 64, 4 heads of
# 16, GELU MLP (4x), tied embeddings, 128 tokens of context, 8 x 128 = 1024 tokens a step.
MODEL = ["model.d_model=64", "model.num_layers=4", "model.num_heads=4", "model.max_seq_len=128",
         "model.mlp=gelu", "model.mlp_ratio=4.0", "model.tie_embeddings=true",
         "model.dropout=0.0", "data.seq_len=128", "train.batch_size=8"]
COMMON = ["logging.progress_bar=false", "train.eval_batches=10", "train.sample_tokens=100",
          "optim.lr=2e-3", "optim.min_lr=2e-4"]
QUICK_MODEL = ["model.d_model=32", "model.num_layers=1", "model.num_heads=2", "model.max_seq_len=64",
               "data.seq_len=64", "train.batch_size=4", "train.eval_batches=2", "train.sample_tokens=20"]
# corpus -> (config, extra overrides, steps): each corpus's own recipe budget (600 steps for
# the built-in config, 2,000 for the shakespeare recipe, the budget nanoGPT's 1.88 refers to).
DATASETS = {
    "builtin": ("configs/default.yaml", [], 600),
    "shakespeare": ("configs/shakespeare_char.yaml", [f"data.path={SHAKESPEARE}"], 2000),
}
REFERENCE = "softmax"      # every other energy is compared with it, seed by seed
EVALS_PER_RUN = 5          # val-loss points on each curve (flattening is read off the last two)

T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


def run_dataset(name: str, args, energies: list[str], out: Path, runs: Path) -> dict:
    config, extra, default_steps = DATASETS[name]
    steps = args.steps or (8 if args.quick else default_steps)
    sets = [*MODEL, *COMMON, *(QUICK_MODEL if args.quick else []), *extra,
            f"train.steps={steps}", f"train.eval_every={max(1, steps // EVALS_PER_RUN)}",
            f"checkpoint.every={steps}", f"optim.warmup_steps={max(1, steps // 10)}",
            "logging.wandb=disabled" if args.quick else f"logging.wandb={args.wandb}"]
    over = [("model.attention.energy", energies), ("train.seed", [str(s) for s in args.seeds])]
    sweep_dir = runs / name
    t0 = time.perf_counter()
    points = plan(str(REPO / config), over, sets, out=sweep_dir)
    run_sweep(points, config=str(REPO / config), over=over, sets=sets, processes=args.processes,
              log=log, train_log=(lambda *_: None) if args.quiet else print)
    rows = [cmp.summarize(p.run_dir) for p in points]
    for row, p in zip(rows, points):
        whole = whole_split_eval(Path(p.run_dir), quick=args.quick)
        row["val_loss"] = whole["loss"] if whole else None
        row["bits_per_byte"] = whole.get("bits_per_byte") if whole else None
        row["val_tokens"] = whole["tokens"] if whole else None
        row["late_drop"] = late_drop(row["curves"]["val"])
    cmp.write_report(rows, out / name, group_by="model.attention.energy")
    groups = cmp.aggregate(rows, "model.attention.energy")
    log(f"{name}: report in {out / name / 'report.html'}")
    return {"config": config, "overrides": sets, "runs": len(points), "steps": steps,
            "failed": [p.name for p in points if p.status == "failed"],
            "seconds": round(time.perf_counter() - t0, 1),       # this invocation
            "training_seconds": round(sum(_run_wall(Path(p.run_dir)) for p in points), 1),
            "tokens_per_run": steps * _tokens_per_step(sets), "groups": groups,
            "val_tokens": next((r["val_tokens"] for r in rows if r.get("val_tokens")), None),
            "versus_reference": versus_reference(rows, energies, args.seeds),
            "late_drop": {e: _mean([r["late_drop"] for r in rows if _energy(r) == e]) for e in energies}}


def whole_split_eval(run_dir: Path, *, quick: bool) -> dict | None:
    """Val metrics of the run's final checkpoint on the whole validation split (quick runs:
    2 batches), cached in val_whole.json next to the checkpoint it measured."""
    cache = run_dir / "val_whole.json"
    try:
        cached = json.loads(cache.read_text())
    except (OSError, ValueError):
        cached = None
    if not (run_dir / "done.json").is_file():
        return None                                     # the run failed: nothing to measure
    step = json.loads((run_dir / "done.json").read_text()).get("step")
    if cached and cached.get("step") == step:
        return cached
    res = evaluate_run(run_dir, batches=2 if quick else "all")
    cache.write_text(json.dumps(res, indent=1) + "\n")
    return res


def late_drop(val_curve: list) -> float | None:
    """How much the (trainer's) val loss still fell between the last two evals, i.e. over
    the last fifth of training: near zero means the curve has flattened."""
    losses = [loss for _, loss in val_curve]
    return losses[-2] - losses[-1] if len(losses) >= 2 else None


def versus_reference(rows: list[dict], energies: list[str], seeds: list[int]) -> dict:
    """energy -> paired t-test of its whole-split val loss against REFERENCE's, seed by seed."""
    by = {(_energy(r), _seed(r)): r["val_loss"] for r in rows if r.get("val_loss") is not None}
    out = {}
    for e in energies:
        if e == REFERENCE:
            continue
        shared = [s for s in seeds if (e, s) in by and (REFERENCE, s) in by]
        if shared:
            out[e] = paired_t([by[e, s] for s in shared], [by[REFERENCE, s] for s in shared])
    return out


def _energy(row: dict) -> str:
    return cmp.dotted(row["config"], "model.attention.energy")


def _seed(row: dict) -> int:
    return int(cmp.dotted(row["config"], "train.seed"))


def machine() -> str:
    """e.g. "2 CPU cores (AMD EPYC), x86_64"."""
    name = ""
    try:
        name = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} CPU cores{f' ({name})' if name else ''}, {platform.machine()}"


def _run_wall(run_dir: Path) -> float:
    """The trainer's own wall time of a finished run (done.json), 0 if it has none: summed
    over a corpus it is the training time whichever invocation did the training."""
    try:
        return float(json.loads((run_dir / "done.json").read_text()).get("wall_s") or 0.0)
    except (OSError, ValueError):
        return 0.0


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _tokens_per_step(sets: list[str]) -> int:
    kv = dict(s.split("=", 1) for s in sets)
    return int(kv["train.batch_size"]) * int(kv["data.seq_len"])


def markdown(res: dict) -> str:
    lines = [f"# Energy zoo ({'quick' if res['quick'] else 'full'} run)", "",
             f"Command: `{res['command']}`  ",
             f"This invocation: {res['runtime_s'] / 60:.1f} min on {res['machine']}, jax "
             f"{res['versions']['jax']} (runs already finished in --runs are read, not retrained; each "
             "corpus's heading gives its training time)", ""]
    for name, d in res["datasets"].items():
        val_tokens = f"{d['val_tokens']:,}" if d.get("val_tokens") else "?"
        scope = "2 validation batches (quick run)" if res["quick"] else "the whole validation split"
        lines += [f"## {name} ({d['config']}; {d['runs']} runs of {d['steps']} steps, "
                  f"{d['tokens_per_run']:,} training tokens each; {d['training_seconds'] / 60:.1f} min of "
                  "training, summed over the runs)", "",
                  f"Val loss: the final checkpoint on {scope} ({val_tokens} "
                  "tokens); mean ± sample std over seeds. Δ: the paired difference from "
                  f"{REFERENCE} over seeds (same seed = same initialisation and batches), p: its "
                  "two-sided paired t-test. Late drop: how much the trainer's val loss still fell "
                  "over the last fifth of training (flattened curves: near 0).", "",
                  table(d), "",
                  f"![{name} loss curves]({name}/curves.png)", "",
                  f"Per-run table: [{name}/results.md]({name}/results.md); report: "
                  f"[{name}/report.html]({name}/report.html)", ""]
        if d["failed"]:
            lines += [f"Failed runs: {', '.join(d['failed'])}", ""]
    for name, why in res["skipped"].items():
        lines += [f"## {name}: skipped ({why})", ""]
    return "\n".join(lines)


def table(d: dict) -> str:
    rows = ["| energy | runs | val loss (whole split) | Δ vs " + REFERENCE + " | p | late drop | tokens/s |",
            "|---|---|---|---|---|---|---|"]
    for g in d["groups"]:
        e = g["group"]
        test = d["versus_reference"].get(e)
        if test is None:
            delta, p = ("reference", "") if e == REFERENCE else ("—", "—")
        else:
            delta = f"{test['diff']:+.4f} ± {test['std']:.4f}" if test["std"] is not None else f"{test['diff']:+.4f}"
            p = "—" if test["p"] is None else f"{test['p']:.3f}"
        drop = d["late_drop"].get(e)
        rows.append(f"| {e} | {g['val_loss_n']}/{g['runs']} | {cmp.plus_minus(g['val_loss'], g['val_loss_std'])} | "
                    f"{delta} | {p} | {'—' if drop is None else f'{drop:.4f}'} | "
                    f"{cmp.plus_minus(g['tokens_per_s'], g['tokens_per_s_std'], '{:,.0f}')} |")
    return "\n".join(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 energies, 1 seed, 8 steps, built-in corpus (< 1 min)")
    ap.add_argument("--out", type=Path, default=None,
                    help="tables and plots (default papers/energy_zoo/results, or .../quick with --quick)")
    ap.add_argument("--runs", type=Path, default=None,
                    help="run directories, one sweep per corpus (default runs/energy_zoo[_quick])")
    ap.add_argument("--steps", type=int, default=None,
                    help="training steps per run (default: builtin 600, shakespeare 2000; quick 8)")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2; quick 0)")
    ap.add_argument("--energies", default=None, help="comma-separated (default: every registered energy)")
    ap.add_argument("--datasets", default=None, help="builtin,shakespeare (default both; quick builtin)")
    ap.add_argument("--processes", type=int, default=1, help="runs at a time (default 1)")
    ap.add_argument("--wandb", default="disabled", help="logging.wandb for full runs (default disabled)")
    ap.add_argument("--quiet", action="store_true", help="only sweep progress, not each run's log")
    args = ap.parse_args(argv)
    q = args.quick
    out = args.out or HERE / ("quick" if q else "results")
    runs = args.runs or REPO / "runs" / ("energy_zoo_quick" if q else "energy_zoo")
    args.seeds = [int(s) for s in (args.seeds or ("0" if q else "0,1,2")).split(",")]
    energies = (args.energies.split(",") if args.energies else
                ["softmax", "sigmoid"] if q else ea.available_energies())
    datasets = (args.datasets or ("builtin" if q else "builtin,shakespeare")).split(",")
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown:
        ap.error(f"--datasets: unknown {unknown[0]!r}; choose from {', '.join(DATASETS)}")
    out.mkdir(parents=True, exist_ok=True)
    log(f"energy zoo ({'quick' if q else 'full'}): {len(energies)} energies x {len(args.seeds)} seeds "
        f"x {datasets} -> {out}")
    res = {"quick": q, "command": " ".join(["python", "papers/energy_zoo/run.py", *(argv or sys.argv[1:])]),
           "machine": machine(),
           "versions": {"python": platform.python_version(), "jax": __import__("jax").__version__},
           "energies": energies, "seeds": args.seeds,
           "datasets": {}, "skipped": {}}
    for name in datasets:
        if name == "shakespeare" and not SHAKESPEARE.is_file():
            res["skipped"][name] = f"{SHAKESPEARE} not found"
            log(f"skipping shakespeare: {SHAKESPEARE} not found")
            continue
        res["datasets"][name] = run_dataset(name, args, energies, out, runs)
    res["runtime_s"] = round(time.perf_counter() - T0, 1)
    (out / "results.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    (out / "results.md").write_text(markdown(res))
    log(f"wrote {out / 'results.md'}; done in {res['runtime_s']:.0f} s")
    return res


if __name__ == "__main__":
    main()
