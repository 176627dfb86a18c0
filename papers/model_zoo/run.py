"""The model zoo on equal terms: a transformer, the Zamba-like hybrid and the
Block-State Transformer, each about 0.8M parameters, trained on the same built-in
corpus rows for the same number of tokens, in two settings:

    short   T = 256,  16 rows x 1000 steps = 4.1M tokens per model
    long    T = 2048,  2 rows x 1000 steps = 4.1M tokens per model (the hybrid's and the
            BST's ground: long rows)

    python papers/model_zoo/run.py                      # both settings (45-70 min on 2 CPU cores)
    python papers/model_zoo/run.py --settings long      # one of them
    python papers/model_zoo/run.py --quick              # smoke run, < 2 min (writes to papers/model_zoo/quick/)
    python papers/model_zoo/run.py --settings short --seed 1 --out papers/model_zoo/seeds/seed1
                                                        # another seed; papers/model_zoo/seeds.py tabulates them

Configs: configs/transformer_small.yaml, configs/zamba_small.yaml, configs/bst_small.yaml.
A model whose config is missing or whose name is not registered is skipped and
listed as such. Each model trains in its own child process (`train.loop.trainer.train`),
so its peak RSS (resource.getrusage, ru_maxrss of that process: JAX runtime,
compiled code, parameters, optimizer state and activations) is its own.
Sequence length, batch size, steps and seed are forced equal for all models.

Writes results.json, README.md's tables (between the markers) and loss_curves.png
(validation loss against training tokens and against wall-clock seconds) to --out.
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
    # The hybrid keeps 2 Mamba layers with its shared block before the 2nd, so that it still runs.
    quick = {"bst": ["model.num_layers=1", "model.bst.block_len=32"],
             "zamba": ["model.num_layers=2", "model.zamba.shared_every=2"]}
    return common + (quick.get(name, ["model.num_layers=1"]) if args.quick else []) + list(args.set)


def child(config: str, extra: list[str], out_json: str) -> None:
    """Runs in the child process: train, then report the result and this process's peak RSS."""
    from train.config import load_config
    from train.loop.trainer import train
    start = time.time()        # wall-clock axis of the curves: seconds since this process began training
    res = train(load_config(config, extra), log=lambda *a: print(*a, flush=True))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024     # Linux: KiB
    Path(out_json).write_text(json.dumps({"params": res.params, "val_loss": res.val_loss,
                                          "train_loss": res.train_loss, "wall_s": res.wall_s,
                                          "peak_rss_bytes": peak, "start_time": start}))


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
               val_curve={"step": [r["step"] for r in val_rows], "loss": [r["loss"] for r in val_rows],
                          "seconds": [r["time"] - res["start_time"] for r in val_rows]},
               config=f"configs/{name}_small.yaml")
    log(f"{name}: val loss {res['val_loss']:.4f}, {res['tokens_per_s']:.0f} tokens/s, "
        f"peak RSS {res['peak_rss_bytes'] / 2**20:.0f} MiB, {res['wall_s']:.0f} s")
    return res


def plot(by_setting: dict, out: Path) -> str:
    """One row per setting: validation loss against training tokens, and against
    wall-clock seconds of training (each model in its own process, one after another)."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(10, 3.6 * len(by_setting)), layout="constrained")
    axes = fig.subplots(len(by_setting), 2, squeeze=False)
    for (setting, block), (ax_tok, ax_wall) in zip(by_setting.items(), axes):
        per_step = block["settings"]["batch"] * block["settings"]["seq_len"]
        for name, r in block["models"].items():
            if "curve" not in r:
                continue
            line, = ax_tok.plot([s * per_step / 1e6 for s in r["curve"]["step"]], r["curve"]["loss"],
                                alpha=0.35, lw=1)
            ax_tok.plot([s * per_step / 1e6 for s in r["val_curve"]["step"]], r["val_curve"]["loss"],
                        "o-", color=line.get_color(), label=f"{name} (val; thin: train)")
            ax_wall.plot(r["val_curve"]["seconds"], r["val_curve"]["loss"], "o-", color=line.get_color(),
                         label=name)
        title = f"{setting}: T = {block['settings']['seq_len']}, {block['settings']['batch']} rows per step"
        ax_tok.set(xlabel="training tokens (millions)", ylabel="cross-entropy (nats / byte)", title=title)
        ax_wall.set(xlabel="wall-clock seconds since the run started (incl. compilation)",
                    ylabel="validation cross-entropy", title=title)
        for ax in (ax_tok, ax_wall):
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
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


def write_readme(out: Path, blocks: dict, command: str, wall: float, machine: str) -> None:
    """Replace the text between the markers of out/README.md (create it if missing)."""
    start, end = "<!-- results -->", "<!-- /results -->"
    parts = [f"{start}\nCommand: `{command}` ({wall / 60:.1f} min wall on {machine})."]
    for setting, block in blocks.items():
        st = block["settings"]
        parts.append(f"**{setting}**: {st['steps']} steps x {st['batch']} rows x {st['seq_len']} tokens = "
                     f"{st['tokens'] / 1e6:.2f}M training tokens per model, seed {st['seed']}"
                     + "".join(f", {kv}" for kv in st.get("overrides", [])) + ".\n\n"
                     f"{table(block['models'])}")
    body = "\n\n".join(parts) + f"\n\n![loss curves](loss_curves.png)\n{end}"
    readme = out / "README.md"
    text = readme.read_text() if readme.is_file() else f"# Model zoo\n\n{start}\n{end}\n"
    readme.write_text(replace_marked(text, start, end, body))


def replace_marked(text: str, start: str, end: str, block: str) -> str:
    """`text` with everything from the `start` marker to the `end` marker replaced by
    `block` (which carries the markers itself); appended when the markers are missing."""
    if start in text and end in text:
        return text[:text.index(start)] + block + text[text.index(end) + len(end):]
    return text + "\n" + block + "\n"


SETTINGS = {"short": dict(seq_len=256, batch=16, steps=1000),
            "long": dict(seq_len=2048, batch=2, steps=1000)}
QUICK = {"short": dict(seq_len=64, batch=4, steps=4), "long": dict(seq_len=256, batch=2, steps=4)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: few steps, short rows")
    p.add_argument("--out", default=None, help="output folder (default papers/model_zoo, or .../quick)")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated (default: all three)")
    p.add_argument("--settings", default=",".join(SETTINGS),
                   help=f"comma-separated, of {', '.join(SETTINGS)} (default: both)")
    p.add_argument("--steps", type=int, default=None, help="train steps per model, every setting (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every model trained (repeatable), e.g. with "
                        "--models zamba: --set model.ssm.kind=mamba1")
    args = p.parse_args(argv)
    chosen = [x for x in args.settings.split(",") if x]
    unknown = [x for x in chosen if x not in SETTINGS]
    if unknown or not chosen:
        p.error(f"--settings: {', '.join(unknown) or 'none given'}; choose from {', '.join(SETTINGS)}")
    out = Path(args.out) if args.out else HERE / ("quick" if args.quick else "")
    out.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.machine()}, {__import__('os').cpu_count()} CPU cores"

    blocks = {}
    for setting in chosen:
        shape = dict((QUICK if args.quick else SETTINGS)[setting])
        if args.steps:
            shape["steps"] = args.steps
        run_args = argparse.Namespace(**{**vars(args), **shape})
        run_args.eval_every = shape["steps"] if args.quick else max(1, shape["steps"] // 10)
        run_args.eval_batches = 1 if args.quick else 8
        run_args.sample_tokens = 0 if args.quick else 100
        run_args.log_every = 1 if args.quick else 10
        log(f"setting {setting}: T={shape['seq_len']}, {shape['batch']} rows, {shape['steps']} steps")
        results = {name: run_model(run_args, name, out / "runs" / setting)
                   for name in args.models.split(",") if name}
        settings = dict(**shape, seed=args.seed, overrides=list(args.set),
                        tokens=shape["steps"] * shape["batch"] * shape["seq_len"],
                        quick=args.quick, machine=machine,
                        memory="peak RSS of each model's own training process (ru_maxrss)")
        blocks[setting] = {"settings": settings, "models": results}
        print(f"{setting}:\n{table(results)}", flush=True)
    wall = time.perf_counter() - T0
    command = "python papers/model_zoo/run.py" + (" --quick" if args.quick else "") + (
        "" if chosen == list(SETTINGS) else f" --settings {','.join(chosen)}") + (
        f" --seed {args.seed}" if args.seed else "") + (
        "" if args.models == ",".join(MODELS) else f" --models {args.models}") + "".join(
        f" --set {kv}" for kv in args.set) + (f" --out {args.out}" if args.out else "")
    (out / "results.json").write_text(json.dumps({"wall_s": wall, "machine": machine, **blocks}, indent=2))
    plot(blocks, out)
    write_readme(out, blocks, command, wall, machine)
    log(f"wrote {out / 'results.json'}, {out / 'README.md'}, {out / 'loss_curves.png'}")
    failed = [f"{setting}/{name}" for setting, b in blocks.items() for name, r in b["models"].items()
              if r.get("failed")]
    if failed:
        log(f"FAILED to train: {', '.join(failed)} (see their logs under {out / 'runs'})")
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[4:], sys.argv[3])
    else:
        sys.exit(main())
