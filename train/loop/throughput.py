"""Throughput in useful units: the train step's FLOPs as XLA counts them, the FLOP/s a
plain matmul reaches on this machine, and their ratio (model FLOPs utilisation).

    flops = step_flops(train_step.jitted, train_step.state, batch)   # per optimizer step
    peak = matmul_peak_flops("float32")                               # all devices, measured
    mfu = flops * steps_per_s / peak

FLOPs come from XLA's cost analysis of the lowered step (forward, backward and optimizer,
whatever the model: no per-model formula). The peak is measured, not a datasheet number:
a square matmul in the compute dtype on every device, fastest of a few rounds. On a CPU
that is what the cores do for dense matmuls, so MFU says how close the step comes to
the best this machine does, not to a vendor's figure.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp


def step_flops(jitted, *args) -> float | None:
    """FLOPs of one call of `jitted(*args)` by XLA's cost analysis (None if unavailable)."""
    try:
        cost = jitted.lower(*args).cost_analysis()
    except Exception:  # noqa: BLE001 -- a backend without cost analysis: no FLOP numbers
        return None
    cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
    flops = (cost or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def matmul_peak_flops(dtype="float32", size: int | None = None, rounds: int = 5) -> float:
    """FLOP/s of an n×n @ n×n matmul on each device, summed over all devices; n = 1024 on a
    CPU, 4096 on accelerators. Fastest of `rounds` (after one warm-up call)."""
    devices = jax.local_devices()
    n = size or (1024 if devices[0].platform == "cpu" else 4096)
    f = jax.jit(lambda a, b: a @ b)
    a = jax.device_put(jnp.ones((n, n), dtype), devices[0])
    f(a, a).block_until_ready()
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        f(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best * jax.device_count()
