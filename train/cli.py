"""The `energy-attn` command.

    energy-attn bench attention            # softmax energy vs dot_product_attention, all energies, T=32k memory
    energy-attn viz report --run runs/default --out report/   # energy-landscape pictures + index.html

One argparse tree; each subcommand is an `_add_<name>(subparsers)` function that
declares its flags and sets `handler`. Later commands (train, sample, viz,
bench train, bench decode) plug in the same way.

Bad input never produces a traceback: it becomes one line on stderr and exit
code 2. Heavy imports (jax) happen inside handlers, so `--help` stays instant.
"""
from __future__ import annotations

import argparse
import difflib
import os
import sys


class CLIError(Exception):
    """A user mistake: `main` prints the message as one line and returns 2."""


class _Parser(argparse.ArgumentParser):
    # argparse's default prints the whole usage block and calls sys.exit(2);
    # we want one line, and `main` to return the code instead of exiting.
    def error(self, message):
        raise CLIError(f"{self.prog}: {message} (see '{self.prog} --help')")


def _parser(sub, name, *, help, description, example):
    return sub.add_parser(name, help=help, description=description,
                          epilog=f"example:\n  {example}",
                          formatter_class=argparse.RawDescriptionHelpFormatter)


# ------------------------------------------------------------------ flag types


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def name_list(text):
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


# ------------------------------------------------------------------ bench


def _add_bench(sub):
    p = _parser(sub, "bench", help="benchmarks (attention, train, models, decode, checkpoint)",
                description="Benchmarks. Each measures everything it compares in one run.",
                example="energy-attn bench attention --skip-long")
    bench = p.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    _add_bench_attention(bench)
    _add_bench_train(bench)
    _add_bench_models(bench)
    _add_bench_decode(bench)
    _add_bench_checkpoint(bench)


def _add_bench_attention(sub):
    p = _parser(
        sub, "attention", help="attention speed and memory vs jax.nn.dot_product_attention",
        description=(
            "Side by side in one run: (a) machine matmul GFLOP/s; (b) causal softmax energy vs\n"
            "jax.nn.dot_product_attention(implementation='xla'), forward and forward+backward;\n"
            "(c) every other registered energy, forward, relative to softmax; (d) peak RSS and time\n"
            "of a long-sequence forward+backward in a child process, next to plain autodiff of the\n"
            "reference energy at a smaller T. Targets are printed as PASS/FAIL; exit code is 0."),
        example="energy-attn bench attention --seq 2048 --energies softmax,sigmoid --json bench.json")
    p.add_argument("--batch", type=positive_int, default=4, help="batch size B (default 4)")
    p.add_argument("--heads", type=positive_int, default=8, help="heads H (default 8)")
    p.add_argument("--seq", type=positive_int, default=1024, help="sequence length T (default 1024)")
    p.add_argument("--head-dim", type=positive_int, default=64, help="head width D (default 64)")
    p.add_argument("--repeats", type=positive_int, default=5,
                   help="timed runs after the compile run; min and median reported (default 5)")
    p.add_argument("--energies", type=name_list, default=None, metavar="A,B,...",
                   help="energies for section c (default: all registered)")
    p.add_argument("--long-seq", type=positive_int, default=32768,
                   help="T of the long-sequence run, a multiple of 512 (default 32768)")
    p.add_argument("--ref-seq", type=positive_int, default=4096,
                   help="T of the plain-autodiff reference run; memory grows as T² (default 4096)")
    p.add_argument("--long-repeats", type=positive_int, default=2,
                   help="timed runs in each long-sequence child (default 2)")
    p.add_argument("--skip-long", action="store_true", help="skip section d (the slow part)")
    p.add_argument("--json", metavar="PATH", help="also write every number to this JSON file")
    p.set_defaults(handler=_bench_attention, prog=p.prog)


def _bench_attention(args):
    # The long run relies on the flash kernel (O(T) memory), which the "auto"
    # choice only picks when T is a multiple of its 512 key block; otherwise it
    # would fall back to a T² kernel and could exhaust memory.
    if not args.skip_long and args.long_seq % 512:
        raise CLIError(f"--long-seq must be a multiple of 512 (got {args.long_seq}); "
                       "or pass --skip-long")
    if args.json:
        folder = os.path.dirname(os.path.abspath(args.json))
        if not os.path.isdir(folder):   # fail now, not after minutes of benchmarking
            raise CLIError(f"--json: folder {folder!r} does not exist")

    import energy_attn as ea
    from energy_attn import bench

    known = ea.available_energies()
    for name in args.energies or []:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise CLIError(f"--energies: unknown energy {name!r}.{hint} "
                           f"Registered: {', '.join(known)}")

    res = bench.attention(batch=args.batch, heads=args.heads, seq=args.seq,
                          head_dim=args.head_dim, repeats=args.repeats, energies=args.energies,
                          long_seq=args.long_seq, ref_seq=args.ref_seq,
                          long_repeats=args.long_repeats, skip_long=args.skip_long)
    print(bench.format_report(res), flush=True)
    if args.json:
        import json
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def _add_bench_train(sub):
    p = _parser(
        sub, "train", help="train-step time: energy attention vs jax.nn.dot_product_attention",
        description=(
            "Trains the same model twice in one process (same init, same batches): once with energy\n"
            "attention, once with jax.nn.dot_product_attention in its place. Prints the step-time\n"
            "ratio (target <= 1.0). Default recipe: configs/shakespeare_char.yaml, which reads\n"
            "../shared/data/tinyshakespeare.txt; point data.path elsewhere with an override."),
        example="energy-attn bench train --steps 60 model.attention.energy=softmax")
    p.add_argument("config", nargs="?", default="configs/shakespeare_char.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--steps", type=positive_int, default=60, help="batches per pass (default 60)")
    p.add_argument("--rounds", type=positive_int, default=None,
                   help="passes over those batches; the two models take turns every step "
                        "(default 2). With --recipe: how many times each command runs (default 1)")
    p.add_argument("--recipe", action="store_true",
                   help="instead, time the whole `energy-attn train CONFIG` in a child process: wall "
                        "time, time to the first step, steps/s, final val loss")
    p.add_argument("--versus", metavar="COMMAND",
                   help="with --recipe: a shell command to time against it, the two taking turns "
                        "(e.g. nanoGPT's train.py, see README); prints each round's wall-time "
                        "ratio and their median")
    p.set_defaults(handler=_bench_train, prog=p.prog)


def _bench_train(args):
    cfg = _load_config(args.config, args.overrides)
    from train.bench_train import bench_recipe, bench_train, format_recipe, format_report
    if args.versus and not args.recipe:
        raise CLIError("--versus times a whole command against the recipe: add --recipe")
    if args.recipe:
        print(format_recipe(bench_recipe(args.config, args.overrides, versus=args.versus,
                                         rounds=args.rounds or 1)))
        return 0
    res = bench_train(cfg, steps=args.steps, rounds=args.rounds or 2)
    print(format_report(res))
    return 0


def _add_bench_checkpoint(sub):
    p = _parser(
        sub, "checkpoint", help="what verified checkpoints cost: checksums vs a whole save/restore",
        description=(
            "Builds CONFIG's model and optimizer and times, in alternating rounds, the checksum\n"
            "manifest against a whole checkpoint save (save + wait) and the verification against\n"
            "a whole restore. Default: configs/shakespeare_char.yaml (reads\n"
            "../shared/data/tinyshakespeare.txt; point data.path elsewhere with an override)."),
        example="energy-attn bench checkpoint configs/default.yaml --rounds 5")
    p.add_argument("config", nargs="?", default="configs/shakespeare_char.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--rounds", type=positive_int, default=5, help="timed rounds (default 5)")
    p.set_defaults(handler=_bench_checkpoint, prog=p.prog)


def _bench_checkpoint(args):
    cfg = _load_config(args.config, args.overrides)
    from train.bench_checkpoint import bench_checkpoint, format_report
    print(format_report(bench_checkpoint(cfg, rounds=args.rounds)))
    return 0


def _add_bench_decode(sub):
    p = _parser(
        sub, "decode", help="sharded-KV-cache decode: tree attention vs ring vs all-gather of partials",
        description=(
            "One decode step (one query token) over a KV cache sharded along its length on N\n"
            "simulated CPU devices: tree attention, ring attention (ppermute K/V) and all-gather of\n"
            "partial (o, lse), timed in alternating rounds (median), with the bytes each device sends\n"
            "(read from the compiled HLO) and XLA's peak buffer memory per device. Targets: tree >= 8x\n"
            "faster than ring, no slower than all-gather, >= 100x fewer bytes and <= 0.6x the memory of\n"
            "ring; printed as PASS/MISS, exit code 0. Runs in a child process when this one cannot\n"
            "have N devices. Then a sequence-sharded train step (mesh.seq=N, T=2048) against one\n"
            "device with the same global batch (--skip-train to skip)."),
        example="energy-attn bench decode --tokens 65536 --devices 4 --json decode.json")
    p.add_argument("--tokens", type=positive_int, default=262144,
                   help="KV-cache length, a multiple of --devices (default 262144)")
    p.add_argument("--heads", type=positive_int, default=16, help="heads (default 16)")
    p.add_argument("--head-dim", type=positive_int, default=128, help="head width (default 128)")
    p.add_argument("--batch", type=positive_int, default=1, help="batch size (default 1)")
    p.add_argument("--devices", type=positive_int, default=8,
                   help="simulated devices the cache is sharded over (default 8)")
    p.add_argument("--rounds", type=positive_int, default=3,
                   help="timed rounds, each method once per round (default 3)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="K/V dtype (default float32; XLA:CPU widens bf16 collectives to f32)")
    p.add_argument("--skip-train", action="store_true",
                   help="skip the sequence-sharded train step vs one device (run after the decode)")
    p.add_argument("--json", metavar="PATH", help="also write every number to this JSON file")
    p.set_defaults(handler=_bench_decode, prog=p.prog)


def _bench_decode(args):
    if args.tokens % args.devices:
        raise CLIError(f"--tokens {args.tokens} must be divisible by --devices {args.devices}")
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        raise CLIError(f"--json: folder {os.path.dirname(os.path.abspath(args.json))!r} does not exist")
    from energy_attn import bench_decode
    res = bench_decode.decode(tokens=args.tokens, heads=args.heads, head_dim=args.head_dim,
                              batch=args.batch, devices=args.devices, rounds=args.rounds,
                              dtype=args.dtype)
    print(bench_decode.format_report(res), flush=True)
    if not args.skip_train:
        res["train_step"] = _bench_sharded_train_step(args.devices)
    if args.json:
        import json
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def _bench_sharded_train_step(devices: int) -> str:
    """A sequence-sharded train step on `devices` simulated devices vs one device, same
    global batch; in a child process, which needs XLA_FLAGS before JAX starts."""
    import subprocess
    print(f"\nsequence-sharded train step (mesh.seq={devices}) vs one device, same global batch …",
          file=sys.stderr, flush=True)
    env = {**os.environ, "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") +
                                       f" --xla_force_host_platform_device_count={devices}").strip()}
    proc = subprocess.run([sys.executable, "-m", "train.bench_sharded", f"mesh.seq={devices}"],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CLIError(f"the sharded train-step benchmark failed: {proc.stderr.strip()[-500:]}")
    line = proc.stdout.strip().splitlines()[-1]
    print(line, flush=True)
    return line


def int_list(text):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def _add_bench_models(sub):
    p = _parser(
        sub, "models", help="train-step time and memory of each zoo model as T grows (1k..16k)",
        description=(
            "Train-step time (fwd+bwd+AdamW; fastest of --repeats rounds that interleave the\n"
            "lengths) and compiled memory (XLA memory_analysis: temp + argument bytes) of each zoo\n"
            "model at about equal parameter count (transformer: --layers layers; bst: one fewer;\n"
            "zamba: one more Mamba-2 layer at 3/4 width and one shared-block application), then,\n"
            "with PASS/MISS: growth from T=4096 to T=16384 (BST <= 5x; the hybrid < 0.5x the\n"
            "transformer's) and, at T=16384, time and memory over the transformer's (< 1).\n"
            "Models not registered are skipped."),
        example="energy-attn bench models --lengths 1024,4096,16384 --models transformer,bst")
    p.add_argument("--models", type=name_list, default=None, metavar="A,B,...",
                   help="models to measure (default: transformer,zamba,bst)")
    p.add_argument("--lengths", type=int_list, default=None, metavar="T1,T2,...",
                   help="sequence lengths, multiples of --block-len (default 1024,2048,4096,8192,16384)")
    p.add_argument("--d-model", type=positive_int, default=128, help="width (default 128)")
    p.add_argument("--layers", type=positive_int, default=3,
                   help="transformer layers; the other models are sized from it (default 3)")
    p.add_argument("--heads", type=positive_int, default=4, help="attention heads (default 4)")
    p.add_argument("--batch", type=positive_int, default=1, help="batch size (default 1)")
    p.add_argument("--block-len", type=positive_int, default=64, help="BST block length W (default 64)")
    p.add_argument("--variant", default="mh", choices=("sh", "mh", "mf"), help="BST variant (default mh)")
    p.add_argument("--repeats", type=positive_int, default=3,
                   help="timed rounds over the lengths after compile (default 3)")
    p.add_argument("--configs", type=name_list, default=None, metavar="A.yaml,B.yaml",
                   help="measure these config files' models as they are (one per model name, e.g. "
                        "configs/transformer_small.yaml,configs/zamba_small.yaml) instead of the zoo shapes")
    p.add_argument("--json", metavar="PATH", help="also write every number to this JSON file")
    p.set_defaults(handler=_bench_models, prog=p.prog)


def _bench_models(args):
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        raise CLIError(f"--json: folder {os.path.dirname(os.path.abspath(args.json))!r} does not exist")
    from models import MODELS
    from models.bench_models import LENGTHS, ZOO, bench_models, format_report
    for name in args.models or []:
        if name not in ZOO and name not in MODELS:
            close = difflib.get_close_matches(name, list(MODELS), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise CLIError(f"--models: unknown model {name!r}.{hint} Registered: {', '.join(sorted(MODELS))}")
    configs = _model_configs(args.configs) if args.configs else None
    res = bench_models(models=args.models or ZOO, lengths=args.lengths or LENGTHS,
                       d_model=args.d_model, num_layers=args.layers, num_heads=args.heads,
                       batch=args.batch, block_len=args.block_len, variant=args.variant,
                       repeats=args.repeats, configs=configs)
    print(format_report(res), flush=True)
    if args.json:
        import json
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2, default=str)
    return 0


def _model_configs(paths) -> dict:
    """{model name: ModelConfig} from config files, vocabulary from their tokenizer."""
    from train.config import load_config
    from train.tokenizer import ByteTokenizer
    out = {}
    for path in paths:
        if not os.path.isfile(path):
            raise CLIError(f"--configs: no file {path!r}")
        cfg = load_config(path)
        if cfg.model.name in out:
            raise CLIError(f"--configs: two configs of model {cfg.model.name!r}; compare them in two runs")
        # Step time hardly depends on the vocabulary: the byte tokenizer's for every config.
        cfg.model.vocab_size = ByteTokenizer.vocab_size
        out[cfg.model.name] = cfg.model
    return out


# ------------------------------------------------------------------ train / eval / sample


def _add_train(sub):
    p = _parser(sub, "train", help="train a language model (default: built-in corpus, a few minutes on CPU)",
                description=(
                    "Train a model from a YAML config plus dotted overrides. With no arguments it trains\n"
                    "the default config on the built-in corpus (CPython's own documentation).\n"
                    "The run directory is train.run_dir, or runs/<config name> plus the experiment keys\n"
                    "the overrides change (model.attention.energy=sigmoid -> runs/default__energy-sigmoid).\n"
                    "Running the same command again resumes from its latest verified checkpoint; a finished\n"
                    "run says so and exits. A run directory holds one experiment: a changed model, data,\n"
                    "optim, seed or batch size is refused (see --allow-config-change); raising train.steps\n"
                    "trains a finished run longer. One process writes a run directory at a time.\n"
                    "--debug (any command) shows tracebacks instead of one-line errors.\n\n"
                    "Sequence sharding: mesh.seq=S splits every sequence over S devices (attention is\n"
                    "tree-reduced across them; Mamba and BST carry their SSM state across them);\n"
                    "mesh.data=D splits the batch. Several processes (hosts):\n"
                    "start one per host with the same command plus --coordinator/--num-processes/\n"
                    "--process-id, or set JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID.\n"
                    "On one machine, XLA_FLAGS=--xla_force_host_platform_device_count=N simulates N CPU devices."),
                example="energy-attn train configs/shakespeare_char.yaml model.attention.energy=sigmoid "
                        "train.steps=500\n  XLA_FLAGS=--xla_force_host_platform_device_count=8 "
                        "energy-attn train mesh.data=2 mesh.seq=4\n  energy-attn train mesh.seq=8 "
                        "--coordinator 127.0.0.1:1234 --num-processes 2 --process-id 0   # and id 1")
    p.add_argument("config", nargs="?", default=None, help="YAML config (default: built-in defaults)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides, e.g. model.num_layers=2 data.seq_len=128")
    p.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="multi-process: address of process 0 (env JAX_COORDINATOR_ADDRESS)")
    p.add_argument("--num-processes", type=positive_int, default=None,
                   help="multi-process: number of processes (env JAX_NUM_PROCESSES)")
    p.add_argument("--process-id", type=int, default=None,
                   help="multi-process: this process's id, 0-based (env JAX_PROCESS_ID)")
    p.add_argument("--allow-config-change", action="store_true",
                   help="continue a run whose config.yaml differs in what defines the experiment "
                        "(model, data, optim, seed, batch size); the change is recorded in "
                        "RUN_DIR/config_history.jsonl with the step it took effect")
    p.set_defaults(handler=_train, prog=p.prog)


def _load_config(path, overrides):
    from train.config import load_config
    if path is not None and "=" in path:      # `energy-attn train key=value ...` with no config file
        overrides, path = [path, *overrides], None
    return load_config(path, overrides)


def _train(args):
    cfg = _load_config(args.config, args.overrides)
    from train import distributed
    distributed.initialize(distributed.distributed_settings(
        args.coordinator, args.num_processes, args.process_id))
    from dataclasses import asdict

    from train.loop import TrainingDiverged, train
    from train.sweep import write_done
    try:
        result = train(cfg, allow_config_change=args.allow_config_change)
        import jax
        # Peak memory: this process ran only this run. A finished run rerun is left untouched.
        if jax.process_index() == 0 and not result.already_complete:
            write_done(cfg.train.run_dir, asdict(result), own_process=True)
    except TrainingDiverged as e:
        print(f"{args.prog}: {e}", file=sys.stderr)
        return 1
    return 0


def _add_eval(sub):
    p = _parser(sub, "eval", help="validation loss, perplexity and bits per byte of a run",
                description="Restore a run's checkpoint and evaluate it on its validation split.",
                example="energy-attn eval --run runs/default --batches 50")
    p.add_argument("--run", required=True, help="run directory (holds config.yaml and checkpoints/)")
    p.add_argument("--batches", type=_batches, default=None,
                   help="validation batches, or 'all' for the whole validation split "
                        "(default: the run's train.eval_batches)")
    p.add_argument("--checkpoint", choices=("latest", "best"), default="latest")
    p.set_defaults(handler=_eval, prog=p.prog)


def _batches(text: str):
    return "all" if text == "all" else positive_int(text)


def _eval(args):
    from train.evaluate import evaluate_run
    r = evaluate_run(args.run, batches=args.batches, which=args.checkpoint)
    covered = f"{r['tokens']:,} tokens ({r['batches']} batches)"
    if r["split_tokens"]:
        covered += f" of the validation split's {r['split_tokens']:,}"
        if r["tokens"] > r["split_tokens"]:
            covered += " (the last batch repeats rows from the start)"
    print(f"{args.run}: {r['model']} with {r['energy']} attention, {r['checkpoint']} checkpoint "
          f"(step {r['step']}), on {covered}", file=sys.stderr)
    metrics = {k: r[k] for k in ("step", "loss", "perplexity", "bits_per_byte") if k in r}
    print("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()))
    return 0


def _add_sample(sub):
    p = _parser(sub, "sample", help="generate text from a trained run",
                description="Restore a run's checkpoint and continue a prompt.",
                example='energy-attn sample --run runs/default --prompt "The energy of" --max-new-tokens 200')
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--prompt", default="", help="text to continue (default: start of a new document)")
    p.add_argument("--max-new-tokens", type=positive_int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 is greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=40, help="0 disables top-k filtering (default 40)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", choices=("latest", "best"), default="latest")
    p.set_defaults(handler=_sample, prog=p.prog)


def _sample(args):
    if args.temperature < 0:
        raise CLIError(f"--temperature must be >= 0, got {args.temperature}")
    if args.top_k < 0:
        raise CLIError(f"--top-k must be >= 0, got {args.top_k}")
    from train.evaluate import sample_run
    text = sample_run(args.run, args.prompt, max_new_tokens=args.max_new_tokens,
                      temperature=args.temperature, top_k=args.top_k or None, seed=args.seed,
                      which=args.checkpoint, log=lambda m: print(m, file=sys.stderr))
    print(text)
    return 0


# ------------------------------------------------------------------ viz


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def positive_float_list(text):
    values = [positive_float(t) for t in text.split(",") if t.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive numbers, got {text!r}")
    return values


def _add_viz(sub):
    p = _parser(sub, "viz", help="pictures of energy landscapes, basins, retrieval and trained heads",
                description=(
                    "Energy-landscape pictures (PNG). `report` writes all of them plus index.html;\n"
                    "the other subcommands write one picture each. The retrieval energy of an energy\n"
                    "F is E(ξ) = −F(ξ; keys = values = patterns)/β + ½‖ξ‖² (see energy_attn.landscape)."),
                example="energy-attn viz report --run runs/default --out report/")
    viz = p.add_subparsers(dest="picture", metavar="PICTURE", required=True)

    def common(q, out, *, grid=True):
        q.add_argument("--out", default=out, metavar="PATH", help=f"output (default {out})")
        q.add_argument("--seed", type=int, default=0, help="toy patterns and start points (default 0)")
        if grid:
            q.add_argument("--grid", type=positive_int, default=60,
                           help="grid points per side (default 60)")

    q = _parser(viz, "report", help="every picture plus index.html",
                description=("Writes the toy pictures (landscapes, basins, energy curves, beta sweep)\n"
                             "and, with --run, the trained-model pictures (attention maps, head\n"
                             "classes, one head's landscape), plus index.html gathering them."),
                example="energy-attn viz report --run runs/default --out report/\n"
                        "  energy-attn viz report --out report/          # toy pictures only")
    q.add_argument("--run", default=None, metavar="DIR", help="trained run directory (optional)")
    _model_options(q)
    common(q, "report")
    q.set_defaults(handler=_viz_picture, prog=q.prog)

    q = _parser(viz, "landscape", help="filled contours of the retrieval energy, with trajectories",
                description=("Contours of E(ξ) over a plane for each energy: 2-D toy patterns, or with\n"
                             "--dim > 2 the plane through the origin and stored patterns 0 and 1.\n"
                             "Retrieval trajectories ξ ← ∂F/∂ζ are drawn from a few start points."),
                example="energy-attn viz landscape --energy softmax,sparsemax --beta 4 --out landscape.png\n"
                        "  energy-attn viz landscape --energy softmax --dim 16 --beta 1 --out plane.png")
    q.add_argument("--energy", type=name_list, default=["softmax", "sparsemax", "entmax"],
                   metavar="A,B,...", help="energies, one panel each (default softmax,sparsemax,entmax)")
    q.add_argument("--beta", type=positive_float, default=2.0, help="inverse temperature (default 2)")
    q.add_argument("--patterns", type=positive_int, default=5, help="stored patterns (default 5)")
    q.add_argument("--dim", type=positive_int, default=2, help="pattern width (default 2)")
    common(q, "landscape.png")
    q.set_defaults(handler=_viz_picture, prog=q.prog)

    q = _parser(viz, "basins", help="basins of attraction: the pattern each start converges to",
                description=("A grid of initial states run to convergence, coloured by the stored\n"
                             "pattern reached (grey: metastable mixture or not converged). One panel per\n"
                             "(energy, beta); default: softmax at 0.5,1,2,8 and sparsemax, entmax at 0.5."),
                example="energy-attn viz basins --energy softmax,entmax --beta 0.5,2 --grid 80")
    q.add_argument("--energy", type=name_list, default=None, metavar="A,B,...",
                   help="energies (panels: every energy at every --beta)")
    q.add_argument("--beta", type=positive_float_list, default=None, metavar="B1,B2,...",
                   help="inverse temperatures (default with --energy: 0.5,1,2,8)")
    q.add_argument("--patterns", type=positive_int, default=5, help="stored patterns (default 5)")
    common(q, "basins.png")
    q.set_defaults(handler=_viz_picture, prog=q.prog)

    q = _parser(viz, "curves", help="energy against iteration (Hopfield, other energies, ET)",
                description=("Retrieval energy along the updates: softmax (hopfield.retrieve) at each\n"
                             "--beta, the other --energy at --other-beta, and an Energy Transformer block."),
                example="energy-attn viz curves --beta 0.5,2 --energy sparsemax,entmax --out curves.png")
    q.add_argument("--beta", type=positive_float_list, default=[0.5, 1.0, 2.0, 4.0], metavar="B1,B2,...",
                   help="softmax inverse temperatures (default 0.5,1,2,4)")
    q.add_argument("--energy", type=name_list, default=["sparsemax", "entmax", "sigmoid", "distance"],
                   metavar="A,B,...", help="other energies (default sparsemax,entmax,sigmoid,distance)")
    q.add_argument("--other-beta", type=positive_float, default=0.5,
                   help="inverse temperature of the other energies (default 0.5)")
    q.add_argument("--steps", type=positive_int, default=15, help="updates (default 15)")
    common(q, "curves.png", grid=False)
    q.set_defaults(handler=_viz_picture, prog=q.prog)

    q = _parser(viz, "beta-sweep", help="retrieval quality and metastable states against beta",
                description=("Noisy copies of clustered stored patterns are retrieved at log-spaced\n"
                             "betas; plots accuracy, mean cosine to the target, and metastable mixtures."),
                example="energy-attn viz beta-sweep --beta-min 0.1 --beta-max 100 --num-betas 20")
    q.add_argument("--energy", default="softmax", help="energy to iterate (default softmax)")
    q.add_argument("--beta-min", type=positive_float, default=0.5, help="smallest beta (default 0.5)")
    q.add_argument("--beta-max", type=positive_float, default=200.0, help="largest beta (default 200)")
    q.add_argument("--num-betas", type=positive_int, default=16, help="betas (default 16)")
    q.add_argument("--noise", type=float, default=0.5,
                   help="query noise relative to the pattern norm (default 0.5)")
    q.add_argument("--queries-per-pattern", type=positive_int, default=8, help="(default 8)")
    common(q, "beta_sweep.png", grid=False)
    q.set_defaults(handler=_viz_picture, prog=q.prog)

    q = _parser(viz, "model", help="a trained run: attention maps, head classes, a head's landscape",
                description=("Writes model_attention.png, model_heads.png and model_landscape.png for\n"
                             "a prompt and any zoo model (transformer, hybrid, BST, energy transformer):\n"
                             "the attention map of every attention call and head, each head's class\n"
                             "(global / metastable / single), and one head's energy landscape in the\n"
                             "plane of its two strongest keys."),
                example='energy-attn viz model --run runs/default --prompt "The energy of" --layer 1 --head 0')
    q.add_argument("--run", required=True, metavar="DIR", help="trained run directory")
    _model_options(q)
    common(q, "viz-model", grid=True)
    q.set_defaults(handler=_viz_picture, prog=q.prog)


def _model_options(q):
    q.add_argument("--prompt", default=None,
                   help="prompt for the model pictures (default: a built-in sentence)")
    q.add_argument("--layer", type=int, default=0,
                   help="attention call of the head landscape, counted in call order as in "
                        "model_attention.png's titles: the transformer's layer; the hybrid's shared "
                        "block per site; the BST's attn/cross per layer (default 0)")
    q.add_argument("--head", type=int, default=0, help="head of the head landscape (default 0)")
    q.add_argument("--checkpoint", choices=("latest", "best"), default="latest")


def _check_energies(flag, names):
    import energy_attn as ea
    known = ea.available_energies()
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise CLIError(f"{flag}: unknown energy {name!r}.{hint} Registered: {', '.join(known)}")


def _picture_path(out, default_name):
    if out.endswith(("/", os.sep)) or os.path.isdir(out):
        return os.path.join(out, default_name)
    return out


def _run_summary(run_dir, step) -> dict:
    """What index.html says about the run: model, energy, size, checkpoint, last val loss."""
    from train.compare import summarize
    row = summarize(run_dir)
    facts = {"run": str(run_dir), "model": row["model"], "energy": row["energy"],
             "parameters": f"{row['params']:,}" if row["params"] else "unknown",
             "checkpoint step": step, "last logged step": row["step"]}
    if row["val_loss"] is not None:
        facts["last val loss"] = f"{row['val_loss']:.4f}"
    return facts


def _viz_picture(args):
    from energy_attn import landscape as ls
    say = lambda path: print(f"wrote {path}", file=sys.stderr)    # noqa: E731
    kind = args.picture
    if kind in ("report", "model"):
        prompt = args.prompt if args.prompt is not None else ls.DEFAULT_PROMPT
        model = tokenizer = step = None
        if args.run is not None:     # load first: a bad run directory fails before any plotting
            from train.run import load_run
            _, tokenizer, model, step = load_run(args.run, which=args.checkpoint)
        if kind == "report":
            res = ls.report(args.out, model=model, tokenizer=tokenizer, step=step, name=args.run,
                            summary=None if args.run is None else _run_summary(args.run, step),
                            seed=args.seed, grid=args.grid, prompt=prompt, index=args.layer,
                            head=args.head, log=lambda m: print(m, file=sys.stderr))
            print(res["index"])
            return 0
        res = ls.plot_model(model, tokenizer, args.out, prompt=prompt, step=step, index=args.layer,
                            head=args.head, grid=args.grid, name=args.run)
        for key in ("attention", "heads", "landscape"):
            say(res[key]["path"])
        return 0
    if kind == "landscape":
        _check_energies("--energy", args.energy)
        if args.dim == 1:
            raise CLIError("--dim must be at least 2 (the picture is a plane)")
        if args.dim > 2 and args.patterns < 2:
            raise CLIError("--dim > 2 needs --patterns >= 2 (the plane goes through patterns 0 and 1)")
        patterns = ls.toy_patterns(args.patterns, dim=args.dim, seed=args.seed,
                                   radius=2.0 if args.dim == 2 else 3.0)
        res = ls.plot_landscape(args.energy, patterns, beta=args.beta, grid=args.grid, seed=args.seed,
                                out=_picture_path(args.out, "landscape.png"))
    elif kind == "basins":
        if args.energy is None and args.beta is None:
            panels = ls.DEFAULT_BASIN_PANELS
        else:
            energies = args.energy or ["softmax"]
            _check_energies("--energy", energies)
            panels = [(e, b) for e in energies for b in (args.beta or [0.5, 1.0, 2.0, 8.0])]
        res = ls.plot_basins(ls.toy_patterns(args.patterns, seed=args.seed), panels, grid=args.grid,
                             seed=args.seed, out=_picture_path(args.out, "basins.png"))
    elif kind == "curves":
        _check_energies("--energy", args.energy)
        res = ls.plot_curves(betas=args.beta, energies=args.energy, other_beta=args.other_beta,
                             steps=args.steps, seed=args.seed, out=_picture_path(args.out, "curves.png"))
    else:  # beta-sweep
        _check_energies("--energy", [args.energy])
        if args.beta_min >= args.beta_max:
            raise CLIError(f"--beta-min ({args.beta_min}) must be below --beta-max ({args.beta_max})")
        import numpy as np
        res = ls.plot_beta_sweep(betas=np.geomspace(args.beta_min, args.beta_max, args.num_betas),
                                 seed=args.seed, noise=args.noise, energy=args.energy,
                                 queries_per_pattern=args.queries_per_pattern,
                                 out=_picture_path(args.out, "beta_sweep.png"))
    print(res["path"])
    return 0


# ------------------------------------------------------------------ sweep / compare / data / config


def _add_sweep(sub):
    p = _parser(
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
    from train.sweep import EVALS_PER_RUN, parse_over, plan, run_sweep
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
    p = _parser(
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
    from train.compare import compare
    compare(args.runs, args.out, group_by=args.group_by)
    return 0


def _add_data(sub):
    p = _parser(sub, "data", help="tokenized data cache: prepare it once, train from it offline",
                description="Tokenized, memory-mapped data caches (train with data.source=cache).",
                example="energy-attn data prepare --source builtin --tokenizer byte --out data/builtin")
    data = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    q = _parser(
        data, "prepare", help="tokenize a corpus into a cache directory",
        description=(
            "Tokenize builtin text, local files (.txt/.jsonl/.parquet, e.g. Zyda shards) or a\n"
            "streamed Hugging Face dataset into DIR: token arrays (uint16/uint32, memory-mapped),\n"
            "document offsets, header.json, and the tokenizer. Validation documents are held out\n"
            "by the same hash rule as training from the source. Then train with\n"
            "data.source=cache data.cache_dir=DIR. --config takes defaults from a config's data section."),
        example="energy-attn data prepare --source text --path 'zyda/*.parquet' "
                "--tokenizer EleutherAI/gpt-neox-20b --out data/zyda_arxiv")
    q.add_argument("--config", default=None, help="take source/tokenizer/val settings from this config")
    q.add_argument("--source", choices=("builtin", "text", "hf"), default=None)
    q.add_argument("--path", default=None, help="file, directory or glob (text); data_files (hf)")
    q.add_argument("--hf-path", default=None, help="Hugging Face dataset, e.g. Zyphra/Zyda")
    q.add_argument("--hf-name", default=None, help="dataset config, e.g. zyda_arxiv_only")
    q.add_argument("--hf-split", default=None, help="split (default train)")
    q.add_argument("--text-column", default=None, help="document column (default text)")
    q.add_argument("--tokenizer", default=None, help="byte, char, or a Hugging Face tokenizer name/file")
    q.add_argument("--val-fraction", type=float, default=None, help="held-out share of documents")
    q.add_argument("--val-max-docs", type=positive_int, default=None,
                   help="cap on validation documents (streamed sources)")
    q.add_argument("--max-docs", type=positive_int, default=None, help="stop after this many documents")
    q.add_argument("--max-tokens", type=positive_int, default=None,
                   help="stop after this many training tokens")
    q.add_argument("--out", required=True, help="cache directory to create")
    q.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    q.set_defaults(handler=_data_prepare, prog=q.prog)
    b = _parser(
        data, "bench", help="cache read speed and data time as a share of training step time",
        description=("Read throughput of the cache iterator, then a short training run of CONFIG\n"
                     "from the cache: step time and the share spent fetching data (target < 5%)."),
        example="energy-attn data bench data/builtin configs/default.yaml --steps 30")
    b.add_argument("cache_dir", help="a directory written by `energy-attn data prepare`")
    b.add_argument("config", nargs="?", default="configs/default.yaml")
    b.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    b.add_argument("--steps", type=positive_int, default=30, help="timed training steps (default 30)")
    b.set_defaults(handler=_data_bench, prog=b.prog)


def _data_prepare(args):
    from train.config import load_config
    from train.token_cache import prepare_from_config
    flags = {"source": args.source, "path": args.path, "hf_path": args.hf_path,
             "hf_name": args.hf_name, "hf_split": args.hf_split, "text_column": args.text_column,
             "tokenizer": args.tokenizer, "val_fraction": args.val_fraction,
             "val_max_docs": args.val_max_docs}
    cfg = load_config(args.config, check=False).data
    for k, v in flags.items():
        if v is not None:
            setattr(cfg, k, v)
    if args.config is None and args.source is None:
        raise ValueError("give --source (builtin, text or hf) or --config")
    if not 0.0 < cfg.val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in (0, 1), got {cfg.val_fraction}")
    prepare_from_config(cfg, args.out, max_docs=args.max_docs, max_tokens=args.max_tokens,
                        overwrite=args.overwrite)
    return 0


def _data_bench(args):
    cfg = _load_config(args.config, [*args.overrides, "data.source=cache",
                                     f"data.cache_dir={args.cache_dir}"])
    from train.bench_data import benchmark
    benchmark(cfg, steps=args.steps)
    return 0


def _add_config(sub):
    p = _parser(sub, "config", help="config tools: the key reference, a resolved config",
                description="Print every config key (type, default, meaning), or a resolved config.",
                example="energy-attn config reference > docs/config.md")
    cfg = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    r = _parser(cfg, "reference", help="markdown table of every config key (README's reference)",
                description="The table in README.md's configuration reference, from the dataclasses.",
                example="energy-attn config reference --update README.md")
    r.add_argument("--update", metavar="FILE", default=None,
                   help="rewrite the table between FILE's <!-- config-reference --> markers instead")
    r.set_defaults(handler=_config_reference, prog=r.prog)
    s = _parser(cfg, "show", help="print a config with overrides applied, as YAML",
                description="Load CONFIG, apply KEY=VALUE overrides, validate, print the YAML.",
                example="energy-attn config show configs/default.yaml model.attention.energy=sigmoid")
    s.add_argument("config", nargs="?", default=None)
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    s.set_defaults(handler=_config_show, prog=s.prog)


REFERENCE_MARKERS = ("<!-- config-reference -->\n", "<!-- /config-reference -->")


def _config_reference(args):
    from train.config import config_reference
    if args.update is None:
        print(config_reference(), end="")
        return 0
    try:
        text = open(args.update, encoding="utf-8").read()
    except OSError as e:
        raise CLIError(f"--update: cannot read {args.update!r} ({e.strerror})") from None
    start, end = (text.find(m) for m in REFERENCE_MARKERS)
    if start < 0 or end < start:
        raise CLIError(f"--update: {args.update} has no '{REFERENCE_MARKERS[0].strip()}' ... "
                       f"'{REFERENCE_MARKERS[1]}' block")
    start += len(REFERENCE_MARKERS[0])
    with open(args.update, "w", encoding="utf-8") as f:
        f.write(text[:start] + config_reference() + text[end:])
    print(f"updated the config reference in {args.update}")
    return 0


def _config_show(args):
    import yaml
    from train.config import to_dict
    cfg = _load_config(args.config, args.overrides)
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return 0


# ------------------------------------------------------------------ entry point


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="energy-attn",
                description="Attention defined only through a scalar energy: train language models "
                            "with any energy,\ncompare energies and models, and look at energy landscapes.",
                epilog=("the three jobs, one command each (every command has --help with an example):\n"
                        "  energy-attn train model.attention.energy=sigmoid         # train a small LM "
                        "(zoo: configs/*.yaml)\n"
                        "  energy-attn sweep --over model.attention.energy=softmax,sigmoid --over "
                        "train.seed=0,1 \\\n      --set train.steps=200 --out runs/sweep_energy\n"
                        "  energy-attn compare runs/sweep_energy --group-by model.attention.energy\n"
                        "  energy-attn viz report --run runs/default --out report/   # energy "
                        "landscapes, attention maps"),
                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_train(sub)
    _add_eval(sub)
    _add_sample(sub)
    _add_bench(sub)
    _add_viz(sub)
    _add_sweep(sub)
    _add_compare(sub)
    _add_data(sub)
    _add_config(sub)
    return p


DEBUG_ENV = "ENERGY_ATTN_DEBUG"
# Errors whose message is the whole story (ours, and the standard ones we raise on purpose).
_PLAIN_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, PermissionError,
                 RuntimeError, ImportError)


def main(argv=None) -> int:
    """Run the command line; return the exit code (0 ok, 1 training diverged, 2 any other
    failure, 130 interrupted). Every failure is one line on stderr; `--debug` (anywhere on
    the command line) or ENERGY_ATTN_DEBUG=1 shows tracebacks and third-party logs instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    try:
        args = build_parser().parse_args(argv)
    except CLIError as e:            # message already names the command
        print(e, file=sys.stderr)
        return 2
    except SystemExit as e:          # --help exits through argparse
        return e.code if isinstance(e.code, int) else 0
    restore = None if debug else _quiet()
    from train.compile_cache import use_compile_cache
    use_compile_cache()          # before any handler imports JAX
    try:
        return args.handler(args)
    except CLIError as e:
        print(f"{args.prog}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("energy-attn: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 -- the one place every other failure becomes one line
        if debug:
            raise
        print(f"{args.prog}: {error_line(e)}", file=sys.stderr)
        return 2
    finally:
        if restore is not None:
            restore()


def error_line(e: BaseException) -> str:
    """One line for any exception: disk full says so; our own errors are their message;
    anything else is its type and first line, and where the traceback is."""
    from train.checkpoint import is_disk_full
    if is_disk_full(e) and "disk full" not in str(e):
        return f"disk full: {_first_line(e)}"
    if isinstance(e, _PLAIN_ERRORS) or type(e).__module__.startswith(("train", "models", "energy_attn")):
        return _first_line(e)
    return f"{type(e).__name__}: {_first_line(e)} (rerun with --debug for the traceback)"


def _first_line(e: BaseException, limit: int = 600) -> str:
    """The message on one line; a list of problems ("invalid config:" then "  - ..." lines)
    keeps one line per problem."""
    lines = [" ".join(line.split()) for line in str(e).splitlines() if line.strip()]
    if len(lines) > 1 and all(line.startswith("- ") for line in lines[1:]):
        return "\n  ".join(lines)
    text = " ".join(lines) or type(e).__name__
    return text if len(text) <= limit else text[:limit] + " ..."


def _quiet():
    """One line per warning (`energy-attn: warning: ...`), and no absl/Orbax log lines or
    background-thread tracebacks: the command reports what matters itself. Returns the undo."""
    import logging
    import threading
    import warnings

    def one_line(message, category, filename, lineno, file=None, line=None):
        print(f"energy-attn: warning: {' '.join(str(message).split())}", file=sys.stderr)

    saved = (warnings.showwarning, threading.excepthook, logging.getLogger("absl").level)
    warnings.showwarning = one_line
    threading.excepthook = lambda args: None      # Orbax's async threads re-raise in the caller
    logging.getLogger("absl").setLevel(logging.CRITICAL + 1)

    def restore():
        warnings.showwarning, threading.excepthook = saved[0], saved[1]
        logging.getLogger("absl").setLevel(saved[2])
    return restore


if __name__ == "__main__":
    sys.exit(main())
