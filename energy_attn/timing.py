"""Wall-clock timing for the benchmarks: calls that take turns, and paired ratios.

    times = take_turns({"ours": f, "reference": g}, rounds=5)   # {name: [seconds, ...]}
    paired_median(times["ours"], times["reference"])             # median of per-round ratios

On a shared machine the load changes while a benchmark runs. Calls that take turns see
the same load round by round, so the ratio within a round is the fair comparison, and
its median over rounds the number to report (not the ratio of two separate medians).
Every benchmark of the project times through this module.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax


def time_call(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(wall seconds until fn()'s result is ready, the result)."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - t0, out


def take_turns(calls: Mapping[str, Callable[[], Any]], rounds: int,
               on_round: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, list[float]]:
    """Call every function once per round, in the given order, `rounds` times; return
    each one's wall seconds per round. `on_round(r, {name: seconds})` after each round
    (progress output). Warm-up (compilation) is the caller's: time only steady calls."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for r in range(rounds):
        this_round = {}
        for name, fn in calls.items():
            this_round[name] = time_call(fn)[0]
            times[name].append(this_round[name])
        if on_round is not None:
            on_round(r, this_round)
    return times


def paired_ratios(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """a[i] / b[i]: the two timed in the same round."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired times need equal, non-empty lengths; got {len(a)} and {len(b)}")
    return [x / y for x, y in zip(a, b)]


def paired_median(a: Sequence[float], b: Sequence[float]) -> float:
    return statistics.median(paired_ratios(a, b))


def summary(times: Sequence[float]) -> dict[str, float]:
    return {"min_s": min(times), "median_s": statistics.median(times)}
