"""`energy-attn bench models`: train-step time and compiled memory of each zoo model
as the sequence grows, how both grow from T = 4k to T = 16k, and how the hybrid and
the BST compare with the transformer at 16k.

    from models.bench_models import bench_models, format_report
    res = bench_models(models=["transformer", "bst"], lengths=[1024, 4096])
    print(format_report(res))

Models (`zoo_config`), at about equal parameter count (the report prints each count
and its ratio to the transformer's): with width d and L = `num_layers`,
    transformer  L layers of width d;
    bst          max(1, L-1) BST layers of width d (each layer also holds a
                 cross-attention, so one fewer), variant and W from the options;
    zamba        2L Mamba-2 layers of width 5d/8 and ONE application of the shared
                 attention block (shared_every = 2L): at L = 3 that is Zamba's six
                 Mamba layers per shared block; Mamba-2 (SSD) because Mamba-1's elementwise scan
                 is 4x slower on CPU (`python -c "from models.bench_models import
                 mamba_layers; mamba_layers()"`).

Time: one train step = forward + backward + AdamW, jitted once per (model, T). Every
model at every length is compiled first, then timed in rounds that visit each once, so a
load change on the machine hits them alike; a time is the fastest round (the least
disturbed), and each model's ratio to the transformer is also given as the median over
rounds of that round's ratio. Memory: XLA's own account of the compiled step,
`memory_analysis()` temp + argument bytes (activations and workspace, plus
parameters, optimizer state and the batch), independent of allocator history.

Targets, each printed with PASS/MISS:
    BST's step time grows <= 5x from 4k to 16k (linear plus the block attention);
    the hybrid's growth is well below the transformer's: we require < 0.5x of it;
    at 16k the hybrid and the BST are both faster than the transformer and need
    less memory.
"""
from __future__ import annotations

import math
import sys
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from energy_attn.timing import paired_median, take_turns

from .bst import BlockStateTransformer, BSTConfig, BSTLayerConfig
from .config import ModelConfig
from .mamba import Mamba1, Mamba2, SSMConfig
from .registry import MODELS, build_model
from .zamba import SharedBlockConfig, ZambaConfig

ZOO = ("transformer", "zamba", "bst")
LENGTHS = (1024, 2048, 4096, 8192, 16384)
GROWTH_FROM, GROWTH_TO = 4096, 16384
BST_MAX_GROWTH = 5.0
HYBRID_VS_TRANSFORMER = 0.5


def _loss(model, tokens):
    logits = model(tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()


def _largest_divisor_at_most(n: int, cap: int) -> int:
    return max(k for k in range(1, min(n, cap) + 1) if n % k == 0)


def zoo_config(name: str, seq_len: int, *, d_model: int = 128, num_layers: int = 3, num_heads: int = 4,
               block_len: int = 64, variant: str = "mh") -> ModelConfig:
    """The benchmark's shape of each zoo model (see the module docstring)."""
    common = dict(name=name, vocab_size=256, max_seq_len=seq_len, num_heads=num_heads)
    if name == "bst":
        return BSTConfig(d_model=d_model, num_layers=max(1, num_layers - 1), **common,
                         bst=BSTLayerConfig(variant=variant, block_len=block_len))
    if name == "zamba":
        # Narrower and deeper than the transformer, as Zamba is: the shared block is
        # 2·width wide, and the Mamba layers take the rest of the parameter budget.
        width = max(8, d_model * 5 // 8 // 8 * 8)
        inner = 2 * width
        if inner % num_heads:
            raise ValueError(f"--heads={num_heads} must divide the hybrid's shared-block width {inner} "
                             f"(2 x 5/8 of --d-model={d_model})")
        return ZambaConfig(d_model=width, num_layers=2 * num_layers, **common,
                           ssm=SSMConfig(kind="mamba2", head_dim=_largest_divisor_at_most(inner, 32)),
                           zamba=SharedBlockConfig(shared_every=2 * num_layers))
    return ModelConfig(d_model=d_model, num_layers=num_layers, **common)


def parameter_count(cfg: ModelConfig) -> int:
    model = nnx.eval_shape(lambda: build_model(cfg, rngs=nnx.Rngs(0)))
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def compile_step(cfg: ModelConfig, *, batch: int):
    """A jitted train step at cfg.max_seq_len: (run, compiled memory bytes, box). run()
    takes one step and returns its loss (a device array); box["loss"] is the last one."""
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
    box = {"state": state}

    def run():
        loss, box["state"] = compiled(box["state"], tokens)
        box["loss"] = loss
        return loss

    jax.block_until_ready(run())                   # warm-up
    return run, memory, box


def bench_models(*, models=ZOO, lengths=LENGTHS, d_model: int = 128, num_layers: int = 3,
                 num_heads: int = 4, batch: int = 1, block_len: int = 64, variant: str = "mh",
                 repeats: int = 3, configs: dict[str, ModelConfig] | None = None,
                 log=lambda m: print(m, file=sys.stderr, flush=True)) -> dict:
    """`configs` ({model name: ModelConfig}, e.g. the shipped YAML files) replaces the
    zoo shapes: each config is measured as it is, at max_seq_len = T."""
    if configs is not None:
        models = list(configs)
    for t in lengths:
        if configs is None and t % block_len:
            raise ValueError(f"--lengths: {t} is not a multiple of --block-len={block_len} (the BST's block)")
        if configs is not None and "bst" in configs and t % configs["bst"].bst.block_len:
            raise ValueError(f"--lengths: {t} is not a multiple of the BST config's "
                             f"block length {configs['bst'].bst.block_len}")
    shape = dict(d_model=d_model, num_layers=num_layers, num_heads=num_heads, block_len=block_len,
                 variant=variant)
    res = {"settings": dict(**shape, batch=batch, repeats=repeats,
                            shapes="zoo shapes" if configs is None else "the given configs",
                            timing="fastest of the rounds, each round one step of every model at every length",
                            memory="XLA memory_analysis(): temp + argument bytes of the compiled step",
                            device=str(jax.devices()[0].platform)),
           "models": {}, "params": {}, "missing": []}
    # Compile every (model, T) first, then time them in rounds that visit every model at
    # every length: a load change on the machine hits all of them alike, and each round
    # gives a paired ratio to the transformer.
    runs = {}
    for name in models:
        if name not in MODELS:
            log(f"[bench models] {name}: not registered here, skipped")
            res["missing"].append(name)
            continue
        if configs is None:
            configs_at = {t: zoo_config(name, t, **shape) for t in lengths}
        else:
            configs_at = {t: configs[name].replace(max_seq_len=t) for t in lengths}
        res["params"][name] = parameter_count(configs_at[lengths[0]])
        for t, cfg in configs_at.items():
            t0 = time.perf_counter()
            runs[name, t] = compile_step(cfg, batch=batch)
            log(f"[bench models] {name:12s} T={t:6d}: compiled, memory {_mib(runs[name, t][1])} "
                f"({time.perf_counter() - t0:.0f} s with a warm-up step)")
    names = list(res["params"])

    def progress(r, seconds):
        log(f"[bench models] round {r + 1}/{repeats}: " + "; ".join(
            f"{name} " + ", ".join(f"T={t} {seconds[name, t] * 1e3:.0f} ms" for t in lengths)
            for name in names))
    times = take_turns({key: run for key, (run, _, _) in runs.items()}, repeats, on_round=progress)
    for name in names:
        rows = res["models"][name] = {}
        for t in lengths:
            rows[t] = {"step_s": min(times[name, t]), "step_s_all": times[name, t],
                       "memory_bytes": runs[name, t][1], "loss": float(runs[name, t][2]["loss"])}
            if "transformer" in names and name != "transformer":
                rows[t]["paired_ratio_median"] = paired_median(times[name, t], times["transformer", t])
    del runs
    res["growth"] = growth(res["models"], GROWTH_FROM, GROWTH_TO)
    res["at_longest"] = versus_transformer(res["models"], GROWTH_TO)
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


def versus_transformer(results: dict, length: int) -> dict:
    """At `length`: each model's step time and memory over the transformer's (< 1 passes)."""
    base = results.get("transformer", {}).get(length)
    out = {"length": length}
    if base is None:
        return out
    for name, rows in results.items():
        if name == "transformer" or length not in rows:
            continue
        r = rows[length]
        mem = (r["memory_bytes"] / base["memory_bytes"]
               if r["memory_bytes"] and base["memory_bytes"] else None)
        out[name] = {"time": r["step_s"] / base["step_s"], "memory": mem}
        out[name]["pass"] = out[name]["time"] < 1 and mem is not None and mem < 1
    return out


def _mib(n):
    return "   n/a" if n is None else f"{n / 2**20:7.1f} MiB"


def format_report(res: dict) -> str:
    s = res["settings"]
    shape = (f"width {s['d_model']}, {s['num_layers']} transformer layers, heads={s['num_heads']}, "
             f"bst {s['variant']} W={s['block_len']}" if s.get("shapes", "zoo shapes") == "zoo shapes"
             else "models as in the given configs")
    lines = [f"train step (fwd+bwd+AdamW), {shape}, batch={s['batch']}; "
             f"{s['repeats']} rounds; time = {s['timing']}; memory = {s['memory']}", ""]
    base = res["params"].get("transformer")
    for name, count in res["params"].items():
        rel = f" ({count / base:.2f} x transformer)" if base and name != "transformer" else ""
        lines.append(f"{name:12s} {count:,} parameters{rel}")
    lines.append("")
    lengths = sorted({t for rows in res["models"].values() for t in rows})
    lines.append(f"{'model':12s} " + " ".join(f"{'T=' + str(t):>20s}" for t in lengths))
    for name, rows in res["models"].items():
        cells = [f"{rows[t]['step_s'] * 1e3:8.1f} ms {_mib(rows[t]['memory_bytes'])}" if t in rows
                 else f"{'-':>20s}" for t in lengths]
        lines.append(f"{name:12s} " + " ".join(f"{c:>20s}" for c in cells))
    base_rows = res["models"].get("transformer", {})
    for name, rows in res["models"].items():
        if name == "transformer" or not base_rows:
            continue
        cells = [f"{rows[t]['step_s'] / base_rows[t]['step_s']:.2f}x" if t in rows and t in base_rows
                 else "-" for t in lengths]
        lines.append(f"{name + '/tr':12s} " + " ".join(f"{c:>20s}" for c in cells)
                     + "   (fastest step over the transformer's fastest)")
        cells = [f"{rows[t]['paired_ratio_median']:.2f}x" if "paired_ratio_median" in rows.get(t, {})
                 else "-" for t in lengths]
        lines.append(f"{'':12s} " + " ".join(f"{c:>20s}" for c in cells)
                     + "   (median over rounds of the same round's ratio)")
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
    v = res["at_longest"]
    lines += ["", f"at T={v['length']}, over the transformer (target: both < 1):"]
    others = [name for name in res["models"] if name in v]
    for name in others:
        r = v[name]
        mem = "n/a" if r["memory"] is None else f"{r['memory']:.2f}"
        lines.append(f"  {name:12s} time {r['time']:5.2f}  memory {mem:>5s}   "
                     f"{'PASS' if r['pass'] else 'MISS'}")
    if not others:
        lines.append(f"  (needs the transformer and another model at T={v['length']})")
    return "\n".join(lines)


def _seconds_per_call(fn, n: int) -> float:
    """Mean wall seconds of n calls of fn() after one compile-and-warm-up call."""
    jax.block_until_ready(fn())
    t0 = time.perf_counter()
    for _ in range(n):
        jax.block_until_ready(fn())
    return (time.perf_counter() - t0) / n


def mamba_layers(lengths=(4096, 16384), d_model: int = 128, repeats: int = 3):
    """Print fwd+bwd seconds of one Mamba-1 and one Mamba-2 layer (batch 1, default
    sizes), measured side by side in one run:
        python -c "from models.bench_models import mamba_layers; mamba_layers()"
    """
    for length in lengths:
        x = jax.random.normal(jax.random.key(0), (1, length, d_model))
        row = []
        for cls in (Mamba1, Mamba2):
            layer = cls(d_model, rngs=nnx.Rngs(0))
            step = nnx.jit(nnx.grad(lambda m, x: (m(x) ** 2).mean()))
            row.append(_seconds_per_call(lambda: step(layer, x), repeats))
        print(f"T={length:6d}  mamba1 {row[0]:.3f} s  mamba2 {row[1]:.3f} s  "
              f"(mamba1 / mamba2 = {row[0] / row[1]:.2f})", flush=True)


def bst_decode(max_lens=(1024, 4096), variants=("mh", "sh"), d_model: int = 128,
               num_layers: int = 4, steps: int = 20, log=print) -> list[dict]:
    """Per-token decode time, side by side in one run: the recurrent cache against
    re-running the forward pass over a max_len token history for every token (what a
    cache-less BST must do). Batch 1, one jitted call per token:
        python -c "from models.bench_models import bst_decode; bst_decode()"
    """
    rows = []
    for variant in variants:
        cfg = BSTConfig(vocab_size=256, max_seq_len=max(max_lens), d_model=d_model,
                        num_layers=num_layers, num_heads=4, bst=BSTLayerConfig(variant=variant, block_len=64))
        graphdef, state = nnx.split(BlockStateTransformer(cfg, rngs=nnx.Rngs(0)))

        @jax.jit
        def recompute(state, history, index, token):
            history = jax.lax.dynamic_update_slice(history, token, (0, index))
            return jax.lax.dynamic_slice_in_dim(nnx.merge(graphdef, state).forward(history), index, 1, axis=1)

        @jax.jit
        def recurrent(state, token, cache):
            return nnx.merge(graphdef, state)(token, cache=cache)

        token = jnp.ones((1, 1), jnp.int32)
        for max_len in max_lens:
            history = jnp.zeros((1, max_len), jnp.int32)
            cache = nnx.merge(graphdef, state).init_cache(1, max_len)
            old = _seconds_per_call(lambda: recompute(state, history, jnp.int32(max_len // 2), token), steps)
            new = _seconds_per_call(lambda: recurrent(state, token, cache), steps)
            size = sum(x.nbytes for x in jax.tree.leaves(cache))
            rows.append(dict(variant=variant, max_len=max_len, recompute_s=old, recurrent_s=new,
                             cache_bytes=size))
            log(f"bst {variant} d={d_model} L={num_layers} W=64 max_len={max_len:5d}: recompute "
                f"{old * 1e3:7.2f} ms/token | recurrent cache {new * 1e3:5.2f} ms/token "
                f"({old / new:5.1f}x faster) | cache {size / 1024:.0f} KiB")
    return rows
