"""XLA's compiled programs kept on disk between runs, so that rerunning a model skips
its compilation (the shakespeare recipe's train step alone compiles for ~2.4 s on two
cores). JAX's own persistent cache; this module only picks its directory.

    ENERGY_ATTN_COMPILE_CACHE=off        # compile every time
    ENERGY_ATTN_COMPILE_CACHE=/some/dir  # elsewhere than ~/.cache/energy-attn/xla

Set before JAX is imported (the CLI does it first thing), as environment variables,
so that child processes (sweep, bench) share the cache too.
"""
from __future__ import annotations

import os
from pathlib import Path

ENV = "ENERGY_ATTN_COMPILE_CACHE"
DEFAULT_DIR = Path("~/.cache/energy-attn/xla")
# Programs that compile faster than this are not worth a disk read.
MIN_COMPILE_SECONDS = "0.1"


def use_compile_cache(environ=os.environ) -> str | None:
    """Point JAX's persistent compilation cache at ENERGY_ATTN_COMPILE_CACHE (default
    ~/.cache/energy-attn/xla) unless it is "off" or JAX_COMPILATION_CACHE_DIR is already
    set. Returns the directory in use, or None."""
    if environ.get("JAX_COMPILATION_CACHE_DIR"):
        return environ["JAX_COMPILATION_CACHE_DIR"]
    choice = environ.get(ENV, "").strip()
    if choice.lower() in ("off", "0", "false", "no", "none"):
        return None
    path = str(Path(choice or DEFAULT_DIR).expanduser())
    environ["JAX_COMPILATION_CACHE_DIR"] = path
    environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", MIN_COMPILE_SECONDS)
    return path
