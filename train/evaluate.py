"""`energy-attn eval` and `energy-attn sample` on a run directory."""
from __future__ import annotations

import jax
import numpy as np

from models import generate
from train.data import build_data
from train.loop import eval_metrics, evaluate
from train.run import load_run


def evaluate_run(run_dir, *, batches=None, which="latest") -> dict:
    cfg, _, model, step = load_run(run_dir, which=which)
    _, _, val_batches = build_data(cfg.data, batch_size=cfg.train.batch_size, seed=cfg.train.seed)
    loss = evaluate(model, val_batches(batches or cfg.train.eval_batches), jax.device_put)
    return {"step": step, **eval_metrics(loss, getattr(val_batches, "bytes_per_token", None))}


def sample_run(run_dir, prompt: str, *, max_new_tokens=200, temperature=0.8, top_k=40, seed=0,
               which="latest") -> str:
    cfg, tokenizer, model, _ = load_run(run_dir, which=which)
    ids = tokenizer.encode(prompt) if prompt else [tokenizer.eos_id]
    room = cfg.model.max_seq_len - len(ids)
    if room < 1:
        raise ValueError(f"the prompt is {len(ids)} tokens; the model's context is "
                         f"{cfg.model.max_seq_len} tokens")
    if max_new_tokens > room:
        max_new_tokens = room        # say so rather than fail: the user asked for text
        print(f"(generating {room} tokens: the model's context is {cfg.model.max_seq_len})")
    out = generate(model, np.asarray([ids], np.int32), max_new_tokens, rng=jax.random.key(seed),
                   temperature=temperature, top_k=top_k)
    new = [int(t) for t in np.asarray(out)[0, len(ids):]]
    return prompt + tokenizer.decode(new)
