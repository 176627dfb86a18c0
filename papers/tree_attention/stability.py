"""How stable is "tree vs all-gather of partials" on simulated CPU devices?

    python papers/tree_attention/stability.py               # 4 settings x 2 reruns x 15 rounds, ~2 min
    python papers/tree_attention/stability.py --rounds 5 --reruns 1 --settings 4:32768

run.py times 2 rounds per setting, too few to order two methods that differ by
tens of percent on shared cores. Here only tree and all-gather run (the ring is
not in question and is slow), taking turns call by call for many rounds, in two
fresh interpreters per setting (reruns). For each round the ratio
all-gather time / tree time of that same round is kept, so slow phases of the
machine hit both sides of a ratio alike. Reported per rerun: the median ratio, its
min–max over the rounds, and in how many rounds the tree was faster.

Writes stability.json and stability.md to --out (default: this folder).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
T0 = time.perf_counter()
SETTINGS = ((4, 131072), (8, 131072), (16, 131072), (8, 524288))   # (devices, tokens)
HEADS, HEAD_DIM = 4, 64                                             # run.py's full grid


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


def child(spec: dict) -> None:
    from energy_attn.bench_decode import measure
    res = measure(tokens=spec["tokens"], heads=HEADS, head_dim=HEAD_DIM, batch=1, devices=spec["devices"],
                  rounds=spec["rounds"], methods=("tree", "allgather"),
                  log=lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps({name: m["times_s"] for name, m in res["methods"].items()}), flush=True)


def run_once(devices: int, tokens: int, rounds: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    spec = dict(devices=devices, tokens=tokens, rounds=rounds)
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env,
                          capture_output=True, text=True, timeout=1200)
    if proc.returncode:
        raise SystemExit(f"child p={devices} T={tokens} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(times: dict) -> dict:
    """Per-round all-gather / tree ratios of one rerun."""
    ratios = [g / t for t, g in zip(times["tree"], times["allgather"])]
    return dict(ratios=ratios, median_ratio=statistics.median(ratios), min_ratio=min(ratios),
                max_ratio=max(ratios), tree_faster_rounds=sum(r > 1 for r in ratios), rounds=len(ratios),
                tree_median_ms=statistics.median(times["tree"]) * 1e3,
                allgather_median_ms=statistics.median(times["allgather"]) * 1e3)


def markdown(rows: list[dict], cfg: dict) -> str:
    lines = [f"### Tree vs all-gather of partials: {cfg['rounds']} alternating rounds x {cfg['reruns']} reruns "
             f"(B = 1, one query token, {HEADS} heads x {HEAD_DIM}, fp32)", "",
             "Per round: all-gather time / tree time of that round (> 1: tree faster).", "",
             "| devices | tokens | rerun | tree median ms | all-gather median ms | ratio median | ratio min–max "
             "| rounds tree faster |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['devices']} | {r['tokens']:,} | {r['rerun']} | {r['tree_median_ms']:.1f} | "
                     f"{r['allgather_median_ms']:.1f} | {r['median_ratio']:.2f} | "
                     f"{r['min_ratio']:.2f}–{r['max_ratio']:.2f} | {r['tree_faster_rounds']}/{r['rounds']} |")
    lines += ["", "Pooled over the reruns:", "",
              "| devices | tokens | ratio median (all rounds) | rerun medians | spread of rerun medians "
              "| rounds tree faster |", "|---|---|---|---|---|---|"]
    for devices, tokens in cfg["settings"]:
        mine = [r for r in rows if (r["devices"], r["tokens"]) == (devices, tokens)]
        pooled = [x for r in mine for x in r["ratios"]]
        medians = [r["median_ratio"] for r in mine]
        lines.append(f"| {devices} | {tokens:,} | {statistics.median(pooled):.2f} | "
                     f"{', '.join(f'{m:.2f}' for m in medians)} | {max(medians) - min(medians):.2f} | "
                     f"{sum(r['tree_faster_rounds'] for r in mine)}/{len(pooled)} |")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--reruns", type=int, default=2)
    ap.add_argument("--settings", nargs="*", help="devices:tokens pairs (default: 4 settings)")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    settings = ([tuple(int(x) for x in s.split(":")) for s in args.settings] if args.settings else SETTINGS)
    rows, load_start = [], os.getloadavg()
    for rerun in range(1, args.reruns + 1):       # reruns apart in time: drift shows between them
        for devices, tokens in settings:
            log(f"p={devices} T={tokens}: rerun {rerun}/{args.reruns}, {args.rounds} rounds (fresh interpreter)")
            row = dict(devices=devices, tokens=tokens, rerun=rerun, **summarise(run_once(devices, tokens,
                                                                                      args.rounds)))
            rows.append(row)
            log(f"  all-gather / tree per round: median {row['median_ratio']:.2f}, "
                f"{row['min_ratio']:.2f}–{row['max_ratio']:.2f}, tree faster in "
                f"{row['tree_faster_rounds']}/{row['rounds']}")
    cfg = dict(rounds=args.rounds, reruns=args.reruns, settings=settings, heads=HEADS, head_dim=HEAD_DIM)
    rows.sort(key=lambda r: (settings.index((r["devices"], r["tokens"])), r["rerun"]))
    md = markdown(rows, cfg)
    import jax
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "stability.md").write_text(md)
    (args.out / "stability.json").write_text(json.dumps(dict(
        config=cfg, rows=rows, wall_s=time.perf_counter() - T0,
        environment=dict(jax=jax.__version__, python=platform.python_version(), cpu_count=os.cpu_count(),
                         load_average_start=load_start, load_average_end=os.getloadavg())), indent=1))
    print(md)
    log(f"wrote {args.out}/stability.md, stability.json")


if __name__ == "__main__":
    main()
