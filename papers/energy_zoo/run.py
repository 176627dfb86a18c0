"""The energy zoo: every registered energy as the attention of the same small transformer,
same data, same token budget, 3 seeds; mean ± std of the final validation loss.

    python papers/energy_zoo/run.py            # full: ~1 h on 2 CPU cores (see README.md)
    python papers/energy_zoo/run.py --quick    # < 1 min: 2 energies, 1 seed, few steps

Two corpora: the built-in corpus (CPython's documentation, byte tokens, configs/default.yaml)
and tiny-shakespeare (characters, configs/shakespeare_char.yaml, read from
../shared/data/tinyshakespeare.txt; skipped with a note if absent). Each corpus is one
`energy-attn sweep` (train/sweep.py) over model.attention.energy x train.seed, so a killed
run continues where it stopped when re-run; `energy-attn compare` (train/compare.py)
makes each corpus's table, curves and report in --out/<corpus>/; results.md and
results.json in --out gather both tables. Checkpoints stay in --runs (runs/energy_zoo).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

import energy_attn as ea  # noqa: E402
from train import compare as cmp  # noqa: E402
from train.sweep import plan, run_sweep  # noqa: E402

SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"

# The same transformer for every energy and both corpora, sized so that 42 runs fit in an
# hour on 2 CPU cores: 4 layers, d_model 64, 4 heads of 16, GELU MLP (4x), tied embeddings,
# 128 tokens of context,
# 8 x 128 = 1024 tokens a step.
MODEL = ["model.d_model=64", "model.num_layers=4", "model.num_heads=4", "model.max_seq_len=128",
         "model.mlp=gelu", "model.mlp_ratio=4.0", "model.tie_embeddings=true",
         "model.dropout=0.0", "data.seq_len=128", "train.batch_size=8"]
COMMON = ["logging.progress_bar=false", "train.eval_batches=10", "train.sample_tokens=100",
          "optim.lr=2e-3", "optim.min_lr=2e-4"]
QUICK_MODEL = ["model.d_model=32", "model.num_layers=1", "model.num_heads=2", "model.max_seq_len=64",
               "data.seq_len=64", "train.batch_size=4", "train.eval_batches=2", "train.sample_tokens=20"]
DATASETS = {
    "builtin": ("configs/default.yaml", []),
    "shakespeare": ("configs/shakespeare_char.yaml", [f"data.path={SHAKESPEARE}"]),
}

T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


def run_dataset(name: str, args, energies: list[str], out: Path, runs: Path) -> dict:
    config, extra = DATASETS[name]
    sets = [*MODEL, *COMMON, *(QUICK_MODEL if args.quick else []), *extra,
            f"train.steps={args.steps}", f"train.eval_every={args.steps}",
            f"checkpoint.every={args.steps}", f"optim.warmup_steps={max(1, args.steps // 10)}",
            "logging.wandb=disabled" if args.quick else f"logging.wandb={args.wandb}"]
    over = [("model.attention.energy", energies), ("train.seed", [str(s) for s in args.seeds])]
    sweep_dir = runs / name
    t0 = time.perf_counter()
    points = plan(str(REPO / config), over, sets, out=sweep_dir)
    run_sweep(points, config=str(REPO / config), over=over, sets=sets, processes=args.processes,
              log=log, train_log=(lambda *_: None) if args.quiet else print)
    rows = [cmp.summarize(p.run_dir) for p in points]
    cmp.write_report(rows, out / name, group_by="model.attention.energy")
    groups = cmp.aggregate(rows, "model.attention.energy")
    log(f"{name}: report in {out / name / 'report.html'}")
    return {"config": config, "overrides": sets, "runs": len(points),
            "failed": [p.name for p in points if p.status == "failed"],
            "seconds": round(time.perf_counter() - t0, 1),
            "tokens_per_run": args.steps * _tokens_per_step(sets), "groups": groups}


def _tokens_per_step(sets: list[str]) -> int:
    kv = dict(s.split("=", 1) for s in sets)
    return int(kv["train.batch_size"]) * int(kv["data.seq_len"])


def markdown(res: dict) -> str:
    lines = [f"# Energy zoo ({'quick' if res['quick'] else 'full'} run)", "",
             f"Command: `{res['command']}`  ",
             f"Time: {res['runtime_s'] / 60:.1f} min on {res['machine']}; jax {res['versions']['jax']}", ""]
    for name, d in res["datasets"].items():
        lines += [f"## {name} ({d['config']}; {d['runs']} runs, {d['tokens_per_run']:,} training "
                  f"tokens each, {d['seconds'] / 60:.1f} min)", "",
                  "Sorted by mean final validation loss; ± is the sample std over seeds.", "",
                  cmp.groups_markdown(d["groups"], "energy"),
                  f"![{name} loss curves]({name}/curves.png)", "",
                  f"Per-run table: [{name}/results.md]({name}/results.md); report: "
                  f"[{name}/report.html]({name}/report.html)", ""]
        if d["failed"]:
            lines += [f"Failed runs: {', '.join(d['failed'])}", ""]
    for name, why in res["skipped"].items():
        lines += [f"## {name}: skipped ({why})", ""]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 energies, 1 seed, 8 steps, built-in corpus (< 1 min)")
    ap.add_argument("--out", type=Path, default=None,
                    help="tables and plots (default papers/energy_zoo/results, or .../quick with --quick)")
    ap.add_argument("--runs", type=Path, default=None,
                    help="run directories, one sweep per corpus (default runs/energy_zoo[_quick])")
    ap.add_argument("--steps", type=int, default=None, help="training steps per run (default 200; quick 8)")
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
    args.steps = args.steps or (8 if q else 200)
    args.seeds = [int(s) for s in (args.seeds or ("0" if q else "0,1,2")).split(",")]
    energies = (args.energies.split(",") if args.energies else
                ["softmax", "sigmoid"] if q else ea.available_energies())
    datasets = (args.datasets or ("builtin" if q else "builtin,shakespeare")).split(",")
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown:
        ap.error(f"--datasets: unknown {unknown[0]!r}; choose from {', '.join(DATASETS)}")
    out.mkdir(parents=True, exist_ok=True)
    log(f"energy zoo ({'quick' if q else 'full'}): {len(energies)} energies x {len(args.seeds)} seeds "
        f"x {datasets}, {args.steps} steps each -> {out}")
    res = {"quick": q, "command": " ".join(["python", "papers/energy_zoo/run.py", *(argv or sys.argv[1:])]),
           "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
           "versions": {"python": platform.python_version(), "jax": __import__("jax").__version__},
           "energies": energies, "seeds": args.seeds, "steps": args.steps,
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
