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


# ------------------------------------------------------------------ entry point


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="energy-attn",
                description="Attention defined only through a scalar energy: tools and benchmarks.",
                epilog="example:\n  energy-attn bench attention --skip-long",
                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
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
