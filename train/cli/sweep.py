"""`energy-attn sweep` (train a grid of configs, resumable) and `energy-attn compare`
(table, curves and report from run directories)."""
from __future__ import annotations

import sys

from train.cli.args import command, positive_int


def add_parser(sub):
    _add_sweep(sub)
    _add_compare(sub)


def _add_sweep(sub):
    p = command(
        sub, "sweep", help="train a grid of configs (cartesian product of --over lists), resumable",
        description=(
            "Train one run per point of the grid spanned by the --over lists, each in its own folder\n"
            "under --out named from its values (energy-softmax__seed-0). Every point's config is\n"
            "validated before anything runs. Re-running the same command skips finished runs and\n"
            "resumes unfinished ones from their checkpoints. sweep.json records the grid and statuses."),
        example="energy-attn sweep configs/default.yaml --over model.attention.energy=softmax,sigmoid "
                "--over train.seed=0,1,2 --set train.steps=200 --out runs/sweep_energy")
    p.add_argument("config", nargs="?", default=None, help="YAML config (default: built-in defaults)")
    p.add_argument("--over", action="append", default=[], metavar="KEY=V1,V2,...", required=True,
                   help="a grid axis: dotted key and comma-separated values (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="sets",
                   help="an override applied to every run (repeatable)")
    p.add_argument("--out", default=None, help="sweep folder (default runs/sweep_<config name>)")
    p.add_argument("--processes", type=positive_int, default=1,
                   help="runs at a time, each in a subprocess logging to RUN/train.log "
                        "(default 1: one after another in this process)")
    p.add_argument("--dry-run", action="store_true", help="validate and list the runs, train nothing")
    p.set_defaults(handler=_sweep, prog=p.prog)


def _sweep(args):
    from train.workflows.sweep import EVALS_PER_RUN, parse_over, plan, run_sweep
    over = [parse_over(o) for o in args.over]
    points = plan(args.config, over, args.sets, out=args.out)
    auto = {o for pt in points for o in pt.overrides[len(over):] if o.startswith("train.eval_every=")}
    if auto:
        print(f"sweep: {', '.join(sorted(auto))} so that each run is evaluated {EVALS_PER_RUN} times "
              "(set train.eval_every yourself to change it)", file=sys.stderr)
    if args.dry_run:
        for i, pt in enumerate(points, 1):
            print(f"[{i}/{len(points)}] {pt.run_dir}: {' '.join(pt.overrides)}")
        return 0
    points = run_sweep(points, config=args.config, over=over, sets=args.sets,
                       processes=args.processes)
    return 1 if any(pt.status == "failed" for pt in points) else 0


def _add_compare(sub):
    p = command(
        sub, "compare", help="table, loss curves and an HTML report from run directories",
        description=(
            "Summarize runs (or sweep folders): energy, parameters, final val loss, bits per byte,\n"
            "tokens/s, peak memory, W&B run. Writes results.md, results.csv, curves.png and\n"
            "report.html to --out. What a run lacks (crashed, no val loss) is listed per run."),
        example="energy-attn compare runs/sweep_energy --group-by model.attention.energy --out cmp/")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories or sweep folders")
    p.add_argument("--out", default="compare", help="output folder (default ./compare)")
    p.add_argument("--group-by", default=None, metavar="KEY",
                   help="dotted config key: also report mean ± std over runs sharing its value")
    p.set_defaults(handler=_compare, prog=p.prog)


def _compare(args):
    from train.workflows.compare import compare
    compare(args.runs, args.out, group_by=args.group_by)
    return 0
