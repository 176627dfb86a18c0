"""`energy-attn bench ...`: attention, train, models, decode, checkpoint. Each measures
everything it compares in one run."""
from __future__ import annotations

import difflib
import os
import sys

from train.cli.args import (CLIError, command, config_and_overrides, int_list, name_list, positive_int,
                            resolve_config)

# What `bench train` and `bench checkpoint` time when no config file is named.
DEFAULT_RECIPE = "configs/shakespeare_char.yaml"


def add_parser(sub):
    p = command(sub, "bench", help="benchmarks (attention, train, models, decode, checkpoint)",
                description="Benchmarks. Each measures everything it compares in one run.",
                example="energy-attn bench attention --skip-long")
    bench = p.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    _add_bench_attention(bench)
    _add_bench_train(bench)
    _add_bench_models(bench)
    _add_bench_decode(bench)
    _add_bench_checkpoint(bench)


def _add_bench_attention(sub):
    p = command(
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
    p = command(
        sub, "train", help="train-step time: energy attention vs jax.nn.dot_product_attention",
        description=(
            "Trains the same model three times in one process (same init, same batches): with energy\n"
            "attention, with jax.nn.dot_product_attention in its place, and with the attention's core\n"
            "left out. Prints the step-time ratio energy / dot_product_attention (target <= 1.0) and\n"
            "the share of the step the attention core costs. Default recipe:\n"
            "configs/shakespeare_char.yaml, which reads ../shared/data/tinyshakespeare.txt; point\n"
            "data.path elsewhere with an override (`bench train data.path=X` keeps that recipe)."),
        example="energy-attn bench train --steps 60 model.attention.energy=softmax")
    p.add_argument("config", nargs="?", default=DEFAULT_RECIPE)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--steps", type=positive_int, default=60, help="batches per pass (default 60)")
    p.add_argument("--rounds", type=positive_int, default=None,
                   help="passes over those batches; the models take turns every step "
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
    # `bench train data.path=X` is the recipe with that override, not the built-in default model.
    config, overrides = config_and_overrides(args.config, args.overrides, default=DEFAULT_RECIPE)
    cfg = resolve_config(config, overrides)
    from train.bench.training import bench_recipe, bench_train, format_recipe, format_report
    if args.versus and not args.recipe:
        raise CLIError("--versus times a whole command against the recipe: add --recipe")
    if args.recipe:
        print(format_recipe(bench_recipe(config, overrides, versus=args.versus,
                                         rounds=args.rounds or 1)))
        return 0
    res = bench_train(cfg, steps=args.steps, rounds=args.rounds or 2)
    print(format_report(res))
    return 0


def _add_bench_checkpoint(sub):
    p = command(
        sub, "checkpoint", help="what verified checkpoints cost: checksums vs a whole save/restore",
        description=(
            "Builds CONFIG's model and optimizer and times, in alternating rounds, the checksum\n"
            "manifest against a whole checkpoint save (save + wait) and the verification against\n"
            "a whole restore. Default: configs/shakespeare_char.yaml (reads\n"
            "../shared/data/tinyshakespeare.txt; point data.path elsewhere with an override)."),
        example="energy-attn bench checkpoint configs/default.yaml --rounds 5")
    p.add_argument("config", nargs="?", default=DEFAULT_RECIPE)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--rounds", type=positive_int, default=5, help="timed rounds (default 5)")
    p.set_defaults(handler=_bench_checkpoint, prog=p.prog)


def _bench_checkpoint(args):
    cfg = resolve_config(args.config, args.overrides, default=DEFAULT_RECIPE)
    from train.bench.checkpoint import bench_checkpoint, format_report
    print(format_report(bench_checkpoint(cfg, rounds=args.rounds)))
    return 0


def _add_bench_decode(sub):
    p = command(
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
    proc = subprocess.run([sys.executable, "-m", "train.bench.sharded", f"mesh.seq={devices}"],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CLIError(f"the sharded train-step benchmark failed: {proc.stderr.strip()[-500:]}")
    line = proc.stdout.strip().splitlines()[-1]
    print(line, flush=True)
    return line


def _add_bench_models(sub):
    p = command(
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
    from train.data.tokenizer import ByteTokenizer
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
