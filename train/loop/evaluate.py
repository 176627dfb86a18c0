"""`energy-attn eval` and `energy-attn sample` on a run directory."""
from __future__ import annotations

import math

import jax
import numpy as np

from models import generate
from train.data.pipeline import build_data
from train.loop.trainer import eval_metrics, evaluate
from train.checkpoints.run import load_run


def evaluate_run(run_dir, *, batches: int | str | None = None, which="latest") -> dict:
    """Validation metrics of a run's checkpoint, and what they cover: batches (an int, "all"
    for the whole validation split, None for the run's train.eval_batches), tokens, split."""
    cfg, _, model, step = load_run(run_dir, which=which)
    _, _, val_batches = build_data(cfg.data, batch_size=cfg.train.batch_size, seed=cfg.train.seed)
    total = getattr(val_batches, "max_batches", None)
    if batches == "all":
        if total is None:
            raise ValueError("--batches all needs a finite validation split; this data source "
                             "streams (give a number of batches)")
        batches = total
    n = min(batches or cfg.train.eval_batches, total or math.inf)
    loss = evaluate(model, val_batches(n), jax.device_put)
    split_rows = getattr(val_batches, "num_rows", None)
    return {"step": step, **eval_metrics(loss, getattr(val_batches, "bytes_per_token", None)),
            "checkpoint": which, "energy": cfg.model.attention.energy, "model": cfg.model.name,
            "batches": int(n), "tokens": int(n) * cfg.train.batch_size * cfg.data.seq_len,
            "split_tokens": None if split_rows is None else split_rows * cfg.data.seq_len}


def sample_run(run_dir, prompt: str, *, max_new_tokens=200, temperature=0.8, top_k=40, seed=0,
               which="latest", log=print) -> str:
    """The prompt and `max_new_tokens` tokens after it. Past the model's context the
    window slides: the last half of the context is kept as the next prompt (and it says so)."""
    cfg, tokenizer, model, _ = load_run(run_dir, which=which)
    context = cfg.model.max_seq_len
    ids = tokenizer.encode(prompt) if prompt else [tokenizer.eos_id]
    if len(ids) >= context:
        ids = ids[-(context // 2):]
        log(f"(the prompt is longer than the model's {context}-token context: continuing from "
            f"its last {len(ids)} tokens)")
    if len(ids) + max_new_tokens > context:
        log(f"(sliding window: the model sees {context} tokens, so generation restarts from the "
            f"last {context // 2} whenever the context is full)")
    rng, new = jax.random.key(seed), []
    while len(new) < max_new_tokens:
        rng, key = jax.random.split(rng)
        window = ids[-(context // 2):] if len(ids) >= context else ids
        count = min(max_new_tokens - len(new), context - len(window))
        out = generate(model, np.asarray([window], np.int32), count, rng=key,
                       temperature=temperature, top_k=top_k)
        chunk = [int(t) for t in np.asarray(out)[0, len(window):]]
        new += chunk
        ids = list(window) + chunk
    return prompt + tokenizer.decode(new)
