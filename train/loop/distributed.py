"""Multi-process runs with JAX's own distributed runtime.

    energy-attn train CONFIG mesh.seq=8 --coordinator 10.0.0.1:1234 --num-processes 2 --process-id 0
    # or the same three settings from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID

Each process sees its local devices; after `jax.distributed.initialize` every
process sees the global device list, and the mesh, the jitted step and the
checkpoints span all of them. On CPU the collectives go through gloo, so the
same command works with several processes on one machine (127.0.0.1).
"""
from __future__ import annotations

import os

ENV = {"coordinator": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES",
       "process_id": "JAX_PROCESS_ID"}


def distributed_settings(coordinator: str | None = None, num_processes: int | None = None,
                         process_id: int | None = None) -> dict | None:
    """The three settings from flags, else from the environment; None for a
    single-process run. Raises ValueError for an incomplete or inconsistent set."""
    given = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    for name, var in ENV.items():
        if given[name] is None and os.environ.get(var):
            given[name] = os.environ[var]
    if all(v is None for v in given.values()):
        return None
    missing = [f"--{k.replace('_', '-')} (or {ENV[k]})" for k, v in given.items() if v is None]
    if missing:
        raise ValueError("a multi-process run needs the coordinator address, the process count "
                         f"and this process's id; missing {', '.join(missing)}")
    try:
        num, pid = int(given["num_processes"]), int(given["process_id"])
    except ValueError:
        raise ValueError(f"process count and id must be integers; got num_processes="
                         f"{given['num_processes']!r}, process_id={given['process_id']!r}") from None
    if num < 1 or not 0 <= pid < num:
        raise ValueError(f"process id {pid} must be in [0, {num}) for {num} processes")
    if ":" not in str(given["coordinator"]):
        raise ValueError(f"coordinator address {given['coordinator']!r} must be host:port, "
                         "e.g. 127.0.0.1:1234")
    return {"coordinator_address": str(given["coordinator"]), "num_processes": num, "process_id": pid}


def initialize(settings: dict | None) -> None:
    """Join the process group (no-op for None). Call before anything touches devices."""
    if settings is None or settings["num_processes"] == 1:
        return
    import jax
    # CPU devices talk through gloo; GPU/TPU backends ignore this setting.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**settings)
