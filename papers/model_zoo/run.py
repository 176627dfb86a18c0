"""The model zoo on equal terms: a transformer, the Zamba-like hybrid and the
Block-State Transformer, each about 0.8M parameters, trained on the same built-in
corpus rows for the same number of tokens.

    python papers/model_zoo/run.py            # full run (~15 min on 2 shared CPU cores)
    python papers/model_zoo/run.py --quick    # smoke run, < 1 min of training (writes to papers/model_zoo/quick/)

Configs: configs/transformer_small.yaml, configs/zamba_small.yaml, configs/bst_small.yaml.
A model whose config is missing or whose name is not registered is skipped and
listed as such. Each model trains in its own child process (`train.loop.trainer.train`),
so its peak RSS (resource.getrusage, ru_maxrss of that process: JAX runtime,
compiled code, parameters, optimizer state and activations) is its own.
Sequence length, batch size, steps and seed are forced equal for all models.

Writes results.json, README.md's table (between the markers) and loss_curves.png to --out.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))
MODELS = ("transformer", "zamba", "bst")
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


def overrides(args, name: str, runs: Path) -> list[str]:
    common = [f"data.seq_len={args.seq_len}", f"model.max_seq_len={args.seq_len}",
              f"train.batch_size={args.batch}", f"train.steps={args.steps}", f"train.seed={args.seed}",
              f"train.eval_every={args.eval_every}", f"checkpoint.every={args.steps}",
              f"optim.warmup_steps={min(30, args.steps // 10)}", f"train.eval_batches={args.eval_batches}",
              f"train.sample_tokens={args.sample_tokens}", f"train.run_dir={runs / name}",
              "logging.wandb=disabled", "logging.progress_bar=false", f"logging.log_every={args.log_every}"]
    # --quick: one layer and short rows, to exercise the whole pipeline in little time.
    # The hybrid keeps 2 Mamba layers, so its shared block (every 2nd layer) still runs.
    quick = {"bst": ["model.num_layers=1", "model.bst.block_len=32"], "zamba": ["model.num_layers=2"]}
    return common + (quick.get(name, ["model.num_layers=1"]) if args.quick else [])


def child(config: str, extra: list[str], out_json: str) -> None:
    """Runs in the child process: train, then report the result and this process's peak RSS."""
    from train.config import load_config
    from train.loop.trainer import train
    res = train(load_config(config, extra), log=lambda *a: print(*a, flush=True))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024     # Linux: KiB
    Path(out_json).write_text(json.dumps({"params": res.params, "val_loss": res.val_loss,
                                          "train_loss": res.train_loss, "wall_s": res.wall_s,
                                          "peak_rss_bytes": peak}))


def run_model(args, name: str, runs: Path) -> dict:
    config = REPO / "configs" / f"{name}_small.yaml"
    if not config.is_file():
        return {"skipped": f"configs/{name}_small.yaml not found"}
    from models import MODELS as registered
    if name not in registered:
        return {"skipped": f"model {name!r} is not registered in this checkout"}
    out_json = runs / f"{name}.result.json"
    runs.mkdir(parents=True, exist_ok=True)
    # Train from scratch: a run folder left by an earlier run would resume from its last
    # checkpoint, train nothing and report the old numbers.
    shutil.rmtree(runs / name, ignore_errors=True)
    out_json.unlink(missing_ok=True)
    extra = overrides(args, name, runs)
    cmd = [sys.executable, __file__, "--child", str(config), str(out_json), *extra]
    log(f"{name}: training {args.steps} steps x {args.batch} x {args.seq_len} tokens")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    (runs / f"{name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        log(f"{name}: FAILED ({tail[0]}); log in {runs / name}.log")
        return {"skipped": f"training failed: {tail[0]}", "failed": True}
    res = json.loads(out_json.read_text())
    rows = [json.loads(l) for l in (runs / name / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r.get("split", "train") == "train"]
    val_rows = [r for r in rows if r.get("split") == "val"]
    tok = [r["tokens_per_s"] for r in train_rows[1:]] or [train_rows[0]["tokens_per_s"]]
    res.update(bits_per_byte=val_rows[-1].get("bits_per_byte"), tokens_per_s=statistics.median(tok),
               curve={"step": [r["step"] for r in train_rows], "loss": [r["loss"] for r in train_rows]},
               val_curve={"step": [r["step"] for r in val_rows], "loss": [r["loss"] for r in val_rows]},
               config=f"configs/{name}_small.yaml")
    log(f"{name}: val loss {res['val_loss']:.4f}, {res['tokens_per_s']:.0f} tokens/s, "
        f"peak RSS {res['peak_rss_bytes'] / 2**20:.0f} MiB, {res['wall_s']:.0f} s")
    return res


def plot(results: dict, tokens_per_step: int, out: Path) -> str:
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    for name, r in results.items():
        if "curve" not in r:
            continue
        line, = ax.plot([s * tokens_per_step / 1e6 for s in r["curve"]["step"]], r["curve"]["loss"],
                        label=f"{name} (train)", alpha=0.8)
        ax.plot([s * tokens_per_step / 1e6 for s in r["val_curve"]["step"]], r["val_curve"]["loss"],
                "o--", color=line.get_color(), label=f"{name} (val)")
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("cross-entropy (nats / byte token)")
    ax.set_title("model zoo on the built-in corpus, equal tokens")
    ax.legend()
    fig.savefig(out / "loss_curves.png", dpi=100)
    return "loss_curves.png"


def table(results: dict) -> str:
    lines = ["| model | params | val loss | bits/byte | tokens/s | peak RSS (MiB) | wall (s) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        if "skipped" in r:
            lines.append(f"| {name} | skipped: {r['skipped']} | | | | | |")
            continue
        lines.append(f"| {name} | {r['params'] / 1e6:.3f}M | {r['val_loss']:.4f} | {r['bits_per_byte']:.3f} "
                     f"| {r['tokens_per_s']:.0f} | {r['peak_rss_bytes'] / 2**20:.0f} | {r['wall_s']:.0f} |")
    return "\n".join(lines)


def write_readme(out: Path, md: str, command: str, wall: float, settings: dict) -> None:
    """Replace the text between the markers of out/README.md (create it if missing)."""
    start, end = "<!-- results -->", "<!-- /results -->"
    body = (f"{start}\nCommand: `{command}` ({wall / 60:.1f} min wall on {settings['machine']}).\n"
            f"Each model: {settings['steps']} steps x {settings['batch']} rows x {settings['seq_len']} "
            f"tokens = {settings['tokens'] / 1e6:.2f}M training tokens, seed {settings['seed']}.\n\n"
            f"{md}\n\n![loss curves](loss_curves.png)\n{end}")
    readme = out / "README.md"
    text = readme.read_text() if readme.is_file() else f"# Model zoo\n\n{start}\n{end}\n"
    if start in text and end in text:
        text = text[:text.index(start)] + body + text[text.index(end) + len(end):]
    else:
        text += "\n" + body + "\n"
    readme.write_text(text)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: few steps, short rows")
    p.add_argument("--out", default=None, help="output folder (default papers/model_zoo, or .../quick)")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated (default: all three)")
    p.add_argument("--steps", type=int, default=None, help="train steps per model (default 100; quick 4)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per row (default 256; quick 64)")
    p.add_argument("--batch", type=int, default=None, help="rows per step (default 16; quick 4)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.steps = args.steps or (4 if args.quick else 100)
    args.seq_len = args.seq_len or (64 if args.quick else 256)
    args.batch = args.batch or (4 if args.quick else 16)
    args.eval_every = args.steps if args.quick else max(1, args.steps // 4)
    args.eval_batches = 1 if args.quick else 8
    args.sample_tokens = 0 if args.quick else 100
    args.log_every = 1 if args.quick else 5
    out = Path(args.out) if args.out else HERE / ("quick" if args.quick else "")
    out.mkdir(parents=True, exist_ok=True)
    runs = out / "runs"

    results = {name: run_model(args, name, runs) for name in args.models.split(",") if name}
    tokens_per_step = args.batch * args.seq_len
    settings = dict(steps=args.steps, batch=args.batch, seq_len=args.seq_len, seed=args.seed,
                    tokens=args.steps * tokens_per_step, quick=args.quick,
                    machine=f"{platform.machine()}, {__import__('os').cpu_count()} CPU cores",
                    memory="peak RSS of each model's own training process (ru_maxrss)")
    wall = time.perf_counter() - T0
    command = "python papers/model_zoo/run.py" + (" --quick" if args.quick else "")
    (out / "results.json").write_text(json.dumps({"settings": settings, "wall_s": wall,
                                                   "models": results}, indent=2))
    plot(results, tokens_per_step, out)
    md = table(results)
    write_readme(out, md, command, wall, settings)
    print(md)
    log(f"wrote {out / 'results.json'}, {out / 'README.md'}, {out / 'loss_curves.png'}")
    failed = [name for name, r in results.items() if r.get("failed")]
    if failed:
        log(f"FAILED to train: {', '.join(failed)} (see their logs in {runs})")
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[4:], sys.argv[3])
    else:
        sys.exit(main())
