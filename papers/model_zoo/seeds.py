"""How far one seed goes: the model zoo's validation losses over several seeds.

run.py trains every model once (seed 0, papers/model_zoo/results.json). Further seeds
of a setting are separate runs of the same script into their own folders:

    python papers/model_zoo/run.py --settings short --seed 1 --out papers/model_zoo/seeds/seed1
    python papers/model_zoo/run.py --settings short --seed 2 --out papers/model_zoo/seeds/seed2
    python papers/model_zoo/run.py --settings long --seed 1 --out papers/model_zoo/seeds/seed1_long
    python papers/model_zoo/seeds.py          # the tables: mean ± std, paired differences

`train.seed` sets both the initial weights and the batch order, and every model of a
seed sees the same batches, so model differences are compared seed by seed: a paired
t-test on the per-seed differences to the transformer (train/workflows/paired_stats.py
says why paired, and what 2 degrees of freedom can and cannot show).

Writes one table per setting, between the <!-- seeds SETTING --> and <!-- /seeds SETTING -->
markers of papers/model_zoo/README.md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]      # run.py beside it; the repo root

from run import SETTINGS, replace_marked  # noqa: E402
from train.workflows.paired_stats import paired_t  # noqa: E402

BASELINE = "transformer"


def seed_blocks(paths: list[Path], setting: str) -> list[tuple[Path, dict]]:
    """(file, that setting's block) for the results files that count as a seed of it."""
    blocks = []
    for path in paths:
        block = json.loads(path.read_text()).get(setting)
        # Quick runs, and runs with extra overrides (another SSM kind, say), are other
        # experiments: they never count as a seed of the shipped configs.
        if block is None or block["settings"].get("quick") or block["settings"].get("overrides"):
            continue
        blocks.append((path, block))
    return blocks


def collect(blocks: list[tuple[Path, dict]], setting: str) -> dict[str, dict[int, float]]:
    """{model: {seed: final val loss}} from one setting's `seed_blocks`. Two files for the
    same seed and model are an error: the table would silently count one twice."""
    losses: dict[str, dict[int, float]] = {}
    for path, block in blocks:
        seed = block["settings"]["seed"]
        for name, r in block["models"].items():
            if "val_loss" not in r:
                continue
            if seed in losses.setdefault(name, {}):
                raise ValueError(f"{path}: seed {seed} of {name} ({setting}) appears in two results files")
            losses[name][seed] = r["val_loss"]
    return losses


def table(losses: dict[str, dict[int, float]]) -> str:
    lines = ["| model | seeds | val loss per seed | mean ± std | vs transformer (paired) |",
             "|---|---:|---|---|---|"]
    base = losses.get(BASELINE, {})
    for name, by_seed in losses.items():
        seeds = sorted(by_seed)
        vals = [by_seed[s] for s in seeds]
        spread = f"{statistics.mean(vals):.4f} ± {statistics.stdev(vals):.4f}" if len(vals) > 1 else f"{vals[0]:.4f}"
        shared = [s for s in seeds if s in base]
        if name == BASELINE or len(shared) < 2:
            versus = "" if name == BASELINE else "fewer than 2 shared seeds"
        else:
            t = paired_t([by_seed[s] for s in shared], [base[s] for s in shared])
            diffs = ", ".join(f"{by_seed[s] - base[s]:+.4f}" for s in shared)
            versus = f"{t['diff']:+.4f} (per seed {diffs}; t = {t['t']:.2f}, p = {t['p']:.3f})"
        lines.append(f"| {name} | {len(vals)} | {', '.join(f'{v:.4f}' for v in vals)} | {spread} | {versus} |")
    return "\n".join(lines)


def write_readme(readme: Path, setting: str, text: str) -> None:
    start, end = f"<!-- seeds {setting} -->", f"<!-- /seeds {setting} -->"
    readme.write_text(replace_marked(readme.read_text(), start, end, f"{start}\n{text}\n{end}"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", default=str(HERE), help="the model zoo folder (default: this one)")
    p.add_argument("--setting", choices=sorted(SETTINGS), default=None,
                   help="one setting (default: every setting with results)")
    p.add_argument("--no-write", action="store_true", help="print only; leave README.md alone")
    args = p.parse_args(argv)
    root = Path(args.dir)
    paths = [root / "results.json", *sorted(root.glob("seeds/*/results.json"))]
    paths = [x for x in paths if x.is_file()]
    if not paths:
        p.error(f"no results.json under {root}; run papers/model_zoo/run.py first")
    names = [args.setting] if args.setting else list(SETTINGS)
    found = {}          # setting -> (its seed files' blocks, {model: {seed: loss}})
    for name in names:
        blocks = seed_blocks(paths, name)
        if losses := collect(blocks, name):
            found[name] = (blocks, losses)
    if not found:
        p.error(f"no {' or '.join(map(repr, names))} results in {', '.join(map(str, paths))}")
    for setting, (blocks, losses) in found.items():
        used = [x for x, _ in blocks]
        files = ", ".join(str(x.relative_to(root)) for x in used)
        text = (f"**{setting}**, final validation loss by seed "
                f"({len(used)} results file{'s' * (len(used) != 1)}: {files}):\n\n" + table(losses))
        print(text + "\n")
        if not args.no_write:
            write_readme(root / "README.md", setting, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
