"""`energy-attn bench models`: train-step time and compiled memory of each zoo model
as the sequence grows, and how both grow from T = 4k to T = 16k.

    from models.bench_models import bench_models, format_report
    res = bench_models(models=["transformer", "bst"], lengths=[1024, 4096])
    print(format_report(res))

One train step = forward + backward + AdamW update, jitted once per (model, T).
Time: median of `repeats` steps after the compile step. Memory: XLA's own account
of the compiled step, `memory_analysis()` temp + argument bytes (activations and
workspace, plus parameters, optimizer state and the batch); it is what the step
needs, independent of the process's allocator history, so it is comparable
across models in one run. Targets (growth 4k -> 16k, step time): BST <= 5x
(linear plus T log T); the transformer is reported (about 16x for quadratic
attention; a blockwise/flash kernel and the T-linear rest make it less on CPU);
the hybrid's growth must be well below the transformer's (we require < 0.5x of it).
"""
from __future__ import annotations

import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from .config import BSTConfig, ModelConfig
from .registry import MODELS, build_model

ZOO = ("transformer", "zamba", "bst")
LENGTHS = (1024, 2048, 4096, 8192, 16384)
BST_MAX_GROWTH = 5.0
HYBRID_VS_TRANSFORMER = 0.5


def _loss(model, tokens):
    logits = model(tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()


def measure(cfg: ModelConfig, *, batch: int, repeats: int) -> dict:
    """Step time (s, median) and compiled memory (bytes) of one train step at cfg.max_seq_len."""
    model = build_model(cfg, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))

    def step(state, tokens):
        model, optimizer = nnx.merge(graphdef, state)
        loss, grads = nnx.value_and_grad(_loss)(model, tokens)
        optimizer.update(model, grads)
        return loss, nnx.state((model, optimizer))

    tokens = jax.random.randint(jax.random.PRNGKey(0), (batch, cfg.max_seq_len + 1), 0, cfg.vocab_size)
    compiled = jax.jit(step, donate_argnums=0).lower(state, tokens).compile()
    mem = compiled.memory_analysis()
    memory = None if mem is None else int(mem.temp_size_in_bytes + mem.argument_size_in_bytes)
    loss, state = compiled(state, tokens)          # warm-up
    loss.block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        loss, state = compiled(state, tokens)
        loss.block_until_ready()
        times.append(time.perf_counter() - t0)
    return {"step_s": statistics.median(times), "memory_bytes": memory, "loss": float(loss)}


def model_config(name: str, seq_len: int, *, d_model: int, num_layers: int, num_heads: int,
                 block_len: int, variant: str) -> ModelConfig:
    return ModelConfig(name=name, vocab_size=256, max_seq_len=seq_len, d_model=d_model,
                       num_layers=num_layers, num_heads=num_heads,
                       bst=BSTConfig(variant=variant, block_len=block_len))


def bench_models(*, models=ZOO, lengths=LENGTHS, d_model: int = 128, num_layers: int = 2,
                 num_heads: int = 4, batch: int = 1, block_len: int = 64, variant: str = "mh",
                 repeats: int = 3, log=lambda m: print(m, file=sys.stderr, flush=True)) -> dict:
    for t in lengths:
        if t % block_len:
            raise ValueError(f"--lengths: {t} is not a multiple of --block-len={block_len} (the BST's block)")
    res = {"settings": dict(d_model=d_model, num_layers=num_layers, num_heads=num_heads, batch=batch,
                            block_len=block_len, variant=variant, repeats=repeats,
                            memory="XLA memory_analysis(): temp + argument bytes of the compiled step",
                            device=str(jax.devices()[0].platform)),
           "models": {}, "missing": []}
    for name in models:
        if name not in MODELS:
            log(f"[bench models] {name}: not registered here, skipped")
            res["missing"].append(name)
            continue
        rows = res["models"][name] = {}
        for t in lengths:
            cfg = model_config(name, t, d_model=d_model, num_layers=num_layers, num_heads=num_heads,
                               block_len=block_len, variant=variant)
            t0 = time.perf_counter()
            rows[t] = measure(cfg, batch=batch, repeats=repeats)
            log(f"[bench models] {name:12s} T={t:6d}: step {rows[t]['step_s'] * 1e3:9.1f} ms, "
                f"memory {_mib(rows[t]['memory_bytes'])} ({time.perf_counter() - t0:.0f} s with compile)")
    res["growth"] = growth(res["models"], 4096, 16384)
    return res


def growth(results: dict, lo: int, hi: int) -> dict:
    """Ratios hi/lo of step time and memory, with PASS/MISS against the targets."""
    out = {"from": lo, "to": hi}
    for name, rows in results.items():
        if lo in rows and hi in rows:
            mem = (rows[hi]["memory_bytes"] / rows[lo]["memory_bytes"]
                   if rows[lo]["memory_bytes"] else None)
            out[name] = {"time": rows[hi]["step_s"] / rows[lo]["step_s"], "memory": mem}
    if "bst" in out:
        out["bst"]["target"] = f"time <= {BST_MAX_GROWTH:g}x"
        out["bst"]["pass"] = out["bst"]["time"] <= BST_MAX_GROWTH
    if "zamba" in out and "transformer" in out:
        limit = HYBRID_VS_TRANSFORMER * out["transformer"]["time"]
        out["zamba"]["target"] = f"time < {HYBRID_VS_TRANSFORMER:g} x transformer's = {limit:.1f}x"
        out["zamba"]["pass"] = out["zamba"]["time"] < limit
    if "transformer" in out:
        out["transformer"]["target"] = "report (quadratic attention: about 16x)"
    return out


def _mib(n):
    return "   n/a" if n is None else f"{n / 2**20:7.1f} MiB"


def format_report(res: dict) -> str:
    s = res["settings"]
    lines = [f"train step (fwd+bwd+AdamW), d_model={s['d_model']}, layers={s['num_layers']}, "
             f"heads={s['num_heads']}, batch={s['batch']}, bst {s['variant']} W={s['block_len']}, "
             f"median of {s['repeats']}; memory = {s['memory']}", ""]
    lengths = sorted({t for rows in res["models"].values() for t in rows})
    lines.append(f"{'model':12s} " + " ".join(f"{'T=' + str(t):>20s}" for t in lengths))
    for name, rows in res["models"].items():
        cells = [f"{rows[t]['step_s'] * 1e3:8.1f} ms {_mib(rows[t]['memory_bytes'])}" if t in rows
                 else f"{'-':>20s}" for t in lengths]
        lines.append(f"{name:12s} " + " ".join(f"{c:>20s}" for c in cells))
    for name in res["missing"]:
        lines.append(f"{name:12s} not registered in this checkout: skipped")
    g = res["growth"]
    lines += ["", f"growth T={g['from']} -> T={g['to']}:"]
    found = False
    for name in res["models"]:
        if name in g:
            found = True
            r = g[name]
            verdict = "" if "pass" not in r else ("PASS" if r["pass"] else "MISS")
            mem = "n/a" if r["memory"] is None else f"{r['memory']:.1f}x"
            lines.append(f"  {name:12s} time {r['time']:5.1f}x  memory {mem:>6s}   "
                         f"target: {r['target']}  {verdict}")
    if not found:
        lines.append(f"  (needs both T={g['from']} and T={g['to']} in --lengths)")
    return "\n".join(lines)
