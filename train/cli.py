"""The `energy-attn` command.

    energy-attn bench attention            # softmax energy vs dot_product_attention, all energies, T=32k memory

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
    p = _parser(sub, "bench", help="benchmarks (attention; later: train, decode)",
                description="Benchmarks. Each measures everything it compares in one run.",
                example="energy-attn bench attention --skip-long")
    bench = p.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    _add_bench_attention(bench)
    _add_bench_train(bench)


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
    p.add_argument("--steps", type=positive_int, default=60, help="timed steps per model (default 60)")
    p.add_argument("--rounds", type=positive_int, default=3, help="alternating rounds (default 3)")
    p.set_defaults(handler=_bench_train, prog=p.prog)


def _bench_train(args):
    cfg = _load_config(args.config, args.overrides)
    from train.bench_train import bench_train, format_report
    try:
        res = bench_train(cfg, steps=args.steps, rounds=args.rounds)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        raise CLIError(str(e)) from None
    print(format_report(res))
    return 0


# ------------------------------------------------------------------ train / eval / sample


def _add_train(sub):
    p = _parser(sub, "train", help="train a language model (default: built-in corpus, a few minutes on CPU)",
                description=(
                    "Train a model from a YAML config plus dotted overrides. With no arguments it trains\n"
                    "the default config on the built-in corpus (CPython's own documentation).\n"
                    "Running the same command again resumes from the run directory's latest checkpoint."),
                example="energy-attn train configs/shakespeare_char.yaml model.attention.energy=sigmoid "
                        "train.steps=500")
    p.add_argument("config", nargs="?", default=None, help="YAML config (default: built-in defaults)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides, e.g. model.num_layers=2 data.seq_len=128")
    p.set_defaults(handler=_train, prog=p.prog)


def _load_config(path, overrides):
    from train.config import load_config
    if path is not None and "=" in path:      # `energy-attn train key=value ...` with no config file
        overrides, path = [path, *overrides], None
    try:
        return load_config(path, overrides)
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(str(e)) from None


def _train(args):
    cfg = _load_config(args.config, args.overrides)
    from train.loop import TrainingDiverged, train
    try:
        train(cfg)
    except TrainingDiverged as e:
        print(f"{args.prog}: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        raise CLIError(str(e)) from None
    return 0


def _add_eval(sub):
    p = _parser(sub, "eval", help="validation loss, perplexity and bits per byte of a run",
                description="Restore a run's checkpoint and evaluate it on its validation split.",
                example="energy-attn eval --run runs/default --batches 50")
    p.add_argument("--run", required=True, help="run directory (holds config.yaml and checkpoints/)")
    p.add_argument("--batches", type=positive_int, default=None,
                   help="validation batches (default: the run's train.eval_batches)")
    p.add_argument("--checkpoint", choices=("latest", "best"), default="latest")
    p.set_defaults(handler=_eval, prog=p.prog)


def _eval(args):
    from train.evaluate import evaluate_run
    from train.run import RunNotFound
    try:
        result = evaluate_run(args.run, batches=args.batches, which=args.checkpoint)
    except (RunNotFound, ValueError, FileNotFoundError, RuntimeError) as e:
        raise CLIError(str(e)) from None
    print("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()))
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
    from train.run import RunNotFound
    try:
        text = sample_run(args.run, args.prompt, max_new_tokens=args.max_new_tokens,
                          temperature=args.temperature, top_k=args.top_k or None, seed=args.seed,
                          which=args.checkpoint)
    except (RunNotFound, ValueError, FileNotFoundError, RuntimeError) as e:
        raise CLIError(str(e)) from None
    print(text)
    return 0


# ------------------------------------------------------------------ entry point


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="energy-attn",
                description="Attention defined only through a scalar energy: tools and benchmarks.",
                epilog="example:\n  energy-attn bench attention --skip-long",
                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_train(sub)
    _add_eval(sub)
    _add_sample(sub)
    _add_bench(sub)
    return p


def main(argv=None) -> int:
    """Run the command line; return the exit code (0 ok, 2 bad input, 130 interrupted)."""
    try:
        args = build_parser().parse_args(argv)
    except CLIError as e:            # message already names the command
        print(e, file=sys.stderr)
        return 2
    except SystemExit as e:          # --help exits through argparse
        return e.code if isinstance(e.code, int) else 0
    try:
        return args.handler(args)
    except CLIError as e:
        print(f"{args.prog}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("energy-attn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
