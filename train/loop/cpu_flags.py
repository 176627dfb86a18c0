"""An XLA:CPU setting that halves the Mamba layers' train step on CPU.

XLA:CPU (jaxlib 0.10) hands column reductions, such as a parameter's gradient summed
over all B·T tokens, to YNNPACK fusions by default. Those ran ~10 ms each for a
(2048, 192) -> (192,) sum on two cores: a Mamba-2 layer's forward + backward took 77 ms
at T = 2048 with them and 38 ms without (`--xla_cpu_experimental_ynn_fusion_type=-reduce`
keeps YNNPACK for the rest). Transformer steps measured the same either way. The flag is
experimental, and XLA aborts on a flag it does not know, so it is set only for the jaxlib
versions it was measured on.

    ENERGY_ATTN_CPU_FLAGS=off    # leave XLA_FLAGS as they are

Set before JAX starts its backend (the CLI does it first thing), as an environment
variable, so that child processes (sweep, bench) get it too.
"""
from __future__ import annotations

import os
from importlib import metadata

ENV = "ENERGY_ATTN_CPU_FLAGS"
FLAG = "--xla_cpu_experimental_ynn_fusion_type"
SETTING = f"{FLAG}=-reduce"
MEASURED_ON = ((0, 10, 2), (0, 12, 0))      # jaxlib versions [from, to) where the flag exists


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def use_cpu_flags(environ=os.environ, jaxlib_version: str | None = None) -> str | None:
    """Add SETTING to XLA_FLAGS unless ENERGY_ATTN_CPU_FLAGS is "off", XLA_FLAGS already
    sets that flag, or jaxlib is outside MEASURED_ON. Returns the flag added, or None."""
    if environ.get(ENV, "").strip().lower() in ("off", "0", "false", "no", "none"):
        return None
    flags = environ.get("XLA_FLAGS", "")
    if FLAG in flags:
        return None
    if jaxlib_version is None:
        try:
            jaxlib_version = metadata.version("jaxlib")
        except metadata.PackageNotFoundError:
            return None
    low, high = MEASURED_ON
    if not low <= _version(jaxlib_version) < high:
        return None
    environ["XLA_FLAGS"] = f"{flags} {SETTING}".strip()
    return SETTING
