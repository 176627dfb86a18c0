"""The `energy-attn` command.

    energy-attn bench attention            # softmax energy vs dot_product_attention, all energies, T=32k memory
    energy-attn viz report --run runs/default --out report/   # energy-landscape pictures + index.html

One argparse tree, built here (`build_parser`); each command group is a module with an
`add_parser(subparsers)` function that declares its commands' flags and sets `handler`:
train, eval (eval, sample), bench, viz, sweep (sweep, compare), data, config. Flag types,
the subcommand factory and CLIError live in args.

Bad input never produces a traceback: it becomes one line on stderr and exit
code 2 (`main`, the one place errors become lines). Heavy imports (jax) happen inside
handlers, so `--help` stays instant.
"""
from __future__ import annotations

import argparse
import os
import sys

from train.cli import bench, config, data, eval, sweep, train, viz
from train.cli.args import CLIError


class _Parser(argparse.ArgumentParser):
    # argparse's default prints the whole usage block and calls sys.exit(2);
    # we want one line, and `main` to return the code instead of exiting.
    def error(self, message):
        raise CLIError(f"{self.prog}: {message} (see '{self.prog} --help')")


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
    train.add_parser(sub)
    eval.add_parser(sub)         # eval, sample
    bench.add_parser(sub)
    viz.add_parser(sub)
    sweep.add_parser(sub)        # sweep, compare
    data.add_parser(sub)
    config.add_parser(sub)
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
    from train.loop.compile_cache import use_compile_cache
    from train.loop.cpu_flags import use_cpu_flags
    use_compile_cache()          # before any handler imports JAX
    use_cpu_flags()              # before JAX starts its CPU backend
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
    from train.checkpoints.checkpoint import is_disk_full
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
