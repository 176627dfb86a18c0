"""`energy-attn data bench`: how fast the token cache feeds training.

    energy-attn data prepare --source builtin --tokenizer byte --out data/builtin
    energy-attn data bench data/builtin configs/default.yaml --steps 30
"""
from __future__ import annotations

import time

import jax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from models import build_model
from train.loop.trainer import make_mesh, make_optimizer, make_train_step
from train.data.token_cache import build_cache_data


def benchmark(cfg, *, read_batches: int = 300, steps: int = 30, log=print) -> dict:
    """Tokens/s read by the cache iterator alone, and data time as a share of step time when
    training `cfg` (data.source=cache) for `steps` steps after a compile step."""
    B, T, accum = cfg.train.batch_size, cfg.data.seq_len, cfg.optim.grad_accum
    tok, it, _ = build_cache_data(cfg.data, batch_size=B, seed=cfg.train.seed)
    t0 = time.perf_counter()
    for _ in range(read_batches):
        next(it)
    read_s = time.perf_counter() - t0
    res = {"read_tokens_per_s": read_batches * B * T / read_s}
    log(f"cache iterator alone: {res['read_tokens_per_s']:,.0f} tokens/s "
        f"({read_batches} batches of {B}x{T})")

    cfg.model.vocab_size, cfg.model.max_seq_len = tok.vocab_size, max(cfg.model.max_seq_len, T)
    mesh = make_mesh(cfg)
    sharding = NamedSharding(mesh, P(None, "data"))
    model = build_model(cfg.model, rngs=nnx.Rngs(params=0, dropout=1))
    opt = nnx.Optimizer(model, make_optimizer(cfg.optim, cfg.train.steps), wrt=nnx.Param)
    step_fn = make_train_step(accum)

    def data():
        b = next(it)
        return jax.device_put({k: v.reshape(accum, B // accum, T) for k, v in b.items()}, sharding)

    float(step_fn(model, opt, data())[0])           # compile
    data_s = total_s = 0.0
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = data()
        t1 = time.perf_counter()
        float(step_fn(model, opt, batch)[0])
        t2 = time.perf_counter()
        data_s, total_s = data_s + t1 - t0, total_s + t2 - t0
    res.update(step_ms=1e3 * total_s / steps, data_ms=1e3 * data_s / steps,
               data_percent=100 * data_s / total_s)
    log(f"training {steps} steps ({B}x{T}, {cfg.model.name} d_model={cfg.model.d_model}): "
        f"step {res['step_ms']:.1f} ms, of which data {res['data_ms']:.2f} ms = "
        f"{res['data_percent']:.2f}% (target < 5%: {'PASS' if res['data_percent'] < 5 else 'FAIL'})")
    return res
