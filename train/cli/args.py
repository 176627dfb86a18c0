"""What every command module shares: the user-error exception, the subcommand factory
(help with an example), loading a config with overrides, and the argparse flag types."""
from __future__ import annotations

import argparse


class CLIError(Exception):
    """A user mistake: `main` prints the message as one line and returns 2."""


def command(sub, name, *, help, description, example):
    return sub.add_parser(name, help=help, description=description,
                          epilog=f"example:\n  {example}",
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def config_and_overrides(path, overrides, default=None) -> tuple[str | None, list[str]]:
    """(config file, overrides) a command names. argparse hands a first KEY=VALUE to the
    config slot (`energy-attn train key=value ...` names no file): it is an override, and
    the file is then the command's `default` (None: the built-in default config)."""
    if path is not None and "=" in path:
        return default, [path, *overrides]
    return path, list(overrides)


def resolve_config(path, overrides, default=None):
    """The config a command names (see config_and_overrides)."""
    from train.config import load_config
    return load_config(*config_and_overrides(path, overrides, default))


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


def int_list(text):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


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
