"""`energy-attn bench train`: the same model trained three times in one process: with
energy attention, with jax.nn.dot_product_attention in its place, and with the attention's
core left out (each query gets its own position's value), which says what share of the step
the attention itself costs.

Both models start from the same initial parameters, see the same batches, and
run the same jitted step; only the attention call differs. The models take
turns step by step, so a burst of machine load hits both alike; the headline is
the median over steps of the paired ratio (energy step / the dpa step right
next to it), which is far steadier on a noisy machine than a ratio of medians
taken over long separate stretches. Prints the ratio (target <= 1), and the attention
core's share of the energy step: 1 - (core left out / energy), paired the same way.
"""
from __future__ import annotations

import statistics
import sys
import time
from contextlib import nullcontext
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import energy_attn as ea
from energy_attn.layer import EnergyAttention
from energy_attn.primitives import expand_kv_heads
from energy_attn.timing import paired_median, take_turns
from models import build_model
from train.config import Config
from train.data.pipeline import build_data
from train.loop.trainer import TrainStep, make_optimizer


def _dpa_heads(self, q, k, v, mask, *, sharded: bool = True):
    """The baseline: XLA's own attention with the same (dense) mask."""
    allowed = ea.allowed_pairs(mask, q.shape[1], k.shape[1])
    return jax.nn.dot_product_attention(q, k, v, mask=allowed, implementation="xla")


def _skipped_heads(self, q, k, v, mask, *, sharded: bool = True):
    """The attention's core left out: no scores, no softmax, no weighted sum. Each query
    gets the value at its own position (self-attention) or the keys' mean value (cross-
    attention), plus a 1e-9-sized dependence on q and k, so that their projections and
    RoPE stay in the step (XLA would drop them otherwise) and only the core is missing."""
    v = expand_kv_heads(v, q.shape[2])
    if v.shape[1] != q.shape[1]:
        v = jnp.broadcast_to(v.mean(1, keepdims=True), q.shape[:3] + v.shape[3:])
    return v + 1e-9 * (q.mean() + k.mean()).astype(v.dtype)


def bench_train(cfg: Config, *, steps: int = 60, rounds: int = 2,
                log=lambda m: print(m, file=sys.stderr)) -> dict:
    tokenizer, batches, _ = build_data(cfg.data, batch_size=cfg.train.batch_size, seed=cfg.train.seed)
    cfg.model.vocab_size = tokenizer.vocab_size
    cfg.model.max_seq_len = max(cfg.model.max_seq_len, cfg.data.seq_len)
    accum = cfg.optim.grad_accum
    data = [{k: np.asarray(v).reshape(accum, -1, *np.shape(v)[1:]) for k, v in next(batches).items()}
            for _ in range(steps)]

    runs = {}
    for name, patch in (("energy", nullcontext()),
                        ("dot_product_attention", mock.patch.object(EnergyAttention, "attend_heads", _dpa_heads)),
                        ("attention_core_left_out", mock.patch.object(EnergyAttention, "attend_heads",
                                                                      _skipped_heads))):
        model = build_model(cfg.model, rngs=nnx.Rngs(params=cfg.train.seed, dropout=cfg.train.seed + 1))
        optimizer = nnx.Optimizer(model, make_optimizer(cfg.optim, cfg.train.steps), wrt=nnx.Param)
        # The trainer's own step (one jax.jit of the state); it is traced, under the patch, at
        # its first call, and keeps that trace.
        runs[name] = dict(step=TrainStep(model, optimizer, accum), patch=patch, losses=[])

    def run_step(r, batch):
        with r["patch"]:
            loss, _ = r["step"](batch)
            r["losses"].append(float(loss))     # waits for the step

    log(f"bench train: {cfg.model.num_layers} layers, d_model {cfg.model.d_model}, "
        f"batch {cfg.train.batch_size} x {cfg.data.seq_len} tokens, {steps} steps each, "
        f"taking turns step by step ({rounds} passes); compiling …")
    for r in runs.values():
        run_step(r, data[0])                       # compile
    per_pass = len(data) - 1
    batches = {name: iter(data[1:] * rounds) for name in runs}

    def progress(i, _):
        if (i + 1) % per_pass == 0:
            log(f"  pass {(i + 1) // per_pass}/{rounds} done")
    times = take_turns({name: (lambda r=r, it=batches[name]: run_step(r, next(it))) for name, r in runs.items()},
                       rounds * per_pass, on_round=progress)
    for name, r in runs.items():
        r["times"] = times[name]
    res = {}
    for name, r in runs.items():
        res[name] = dict(median_ms=1e3 * statistics.median(r["times"]), min_ms=1e3 * min(r["times"]),
                         final_loss=r["losses"][-1], steps=len(r["losses"]))
    res["ratio"] = paired_median(runs["energy"]["times"], runs["dot_product_attention"]["times"])
    res["ratio_of_medians"] = res["energy"]["median_ms"] / res["dot_product_attention"]["median_ms"]
    res["loss_gap"] = abs(res["energy"]["final_loss"] - res["dot_product_attention"]["final_loss"])
    res["attention_share"] = 1 - paired_median(runs["attention_core_left_out"]["times"], runs["energy"]["times"])
    return res


def bench_recipe(config: str, overrides=(), *, versus: str | None = None, rounds: int = 1,
                 log=lambda m: print(m, file=sys.stderr)) -> dict:
    """The whole `energy-attn train CONFIG` as a user runs it, in a child process with a fresh
    run directory: wall time of the process, time to the first step, steps/s, final val loss.

    `versus`: a shell command timed against it (nanoGPT's train.py: see README, Benchmarks).
    The two take turns for `rounds` rounds, the first one alternating, so that a machine that
    slows down or speeds up meanwhile hits both; each round gives a wall-time ratio.
    Returns {"ours": [run, ...], "versus": [run, ...], "ratios": [...], "ratio": median}
    ("versus" and the ratios only with `versus`)."""
    ours, theirs = [], []
    for i in range(rounds):
        turns = ("ours", "versus") if i % 2 == 0 else ("versus", "ours")
        for who in turns:
            if who == "ours":
                ours.append(_time_recipe(config, overrides, log))
                log(f"round {i + 1}/{rounds}: ours {ours[-1]['wall_s']:.1f} s")
            elif versus:
                theirs.append(_time_command(versus, log))
                log(f"round {i + 1}/{rounds}: versus {theirs[-1]['wall_s']:.1f} s")
    res = {"ours": ours}
    if versus:
        ratios = [a["wall_s"] / b["wall_s"] for a, b in zip(ours, theirs)]
        res.update(versus=theirs, command=versus, ratios=ratios, ratio=statistics.median(ratios))
    return res


def _time_recipe(config: str, overrides, log) -> dict:
    import json
    import re
    import subprocess
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "train.cli", "train", config, *overrides,
               f"train.run_dir={tmp}/run", "logging.progress_bar=false"]
        log("bench train --recipe: " + " ".join(cmd[2:]))
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"the recipe failed (exit {proc.returncode}): "
                               f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}")
        first = re.search(r"first step done ([\d.]+) s after start", proc.stdout)
        rows = [json.loads(l) for l in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r.get("split", "train") == "train"]
    val = [r["loss"] for r in rows if r.get("split") == "val"]
    steps = train_rows[-1]["step"] if train_rows else 0
    return {"wall_s": wall, "steps": steps, "first_step_s": float(first.group(1)) if first else None,
            "median_tokens_per_s": statistics.median(r["tokens_per_s"] for r in train_rows[1:] or train_rows),
            "val_loss": val[-1] if val else None}


def _time_command(command: str, log) -> dict:
    """Wall time of a shell command, and the last "val loss X" it printed (nanoGPT's format)."""
    import re
    import subprocess
    log(f"bench train --versus: {command}")
    t0 = time.perf_counter()
    proc = subprocess.run(command, shell=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"the --versus command failed (exit {proc.returncode}): "
                           f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    val = re.findall(r"val loss ([\d.]+)", proc.stdout + proc.stderr)
    return {"wall_s": wall, "val_loss": float(val[-1]) if val else None}


def format_recipe(res: dict) -> str:
    lines = []
    for r in res["ours"]:
        first = f"{r['first_step_s']:.1f} s" if r["first_step_s"] is not None else "?"
        lines.append(f"whole recipe: {r['wall_s']:.1f} s wall for {r['steps']} steps "
                     f"({r['steps'] / r['wall_s']:.2f} steps/s over the process), first step after "
                     f"{first}, median {r['median_tokens_per_s']:.0f} tokens/s, final val loss "
                     f"{r['val_loss']:.4f}")
    if "versus" in res:
        for r in res["versus"]:
            val = f"{r['val_loss']:.4f}" if r["val_loss"] is not None else "not printed"
            lines.append(f"versus: {r['wall_s']:.1f} s wall, last val loss {val}")
        rounds = ", ".join(f"{x:.2f}" for x in res["ratios"])
        status = "PASS" if res["ratio"] <= 0.8 else "FAIL"
        lines.append(f"wall-time ratio ours / versus: {res['ratio']:.2f} median of {len(res['ratios'])} "
                     f"round(s) ({rounds})  (target <= 0.8: {status})")
    return "\n".join(lines)


def format_report(res: dict) -> str:
    lines = [f"{'attention':<24}{'median ms/step':>16}{'min ms/step':>14}{'final loss':>12}"]
    for name in ("energy", "dot_product_attention", "attention_core_left_out"):
        r = res[name]
        lines.append(f"{name:<24}{r['median_ms']:>16.1f}{r['min_ms']:>14.1f}{r['final_loss']:>12.4f}")
    status = "PASS" if res["ratio"] <= 1.0 else "FAIL"
    lines.append(f"step-time ratio energy / dot_product_attention: {res['ratio']:.3f} median of "
                 f"paired steps, {res['ratio_of_medians']:.3f} ratio of medians  (target <= 1.0: {status})")
    lines.append(f"final-loss difference (same init, same batches): {res['loss_gap']:.2e}")
    lines.append(f"the attention core's share of the energy step: {100 * res['attention_share']:.0f}% "
                 "(1 - core left out / energy, median of paired steps; the rest: projections, RoPE, "
                 "MLP or SSM layers, embedding, loss, optimizer)")
    return "\n".join(lines)
