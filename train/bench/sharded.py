"""Sequence-sharded train step vs one device, same model and same global batch.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m train.bench.sharded

Both steps start from the same parameters and see the same batches; they take
turns step by step. On simulated CPU devices the "devices" share two cores, so
the ratio shows the overhead of sharding (collectives, layout), not a speed-up.
"""
from __future__ import annotations

import statistics
import sys

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from energy_attn.timing import paired_median, take_turns
from models import build_model
from train.config import load_config
from train.data.pipeline import build_data
from train.loop.trainer import make_mesh, make_optimizer, make_train_step, sequence_layout, sequence_spec

DEFAULTS = ["model.num_layers=2", "model.d_model=128", "model.num_heads=4", "data.seq_len=2048",
            "model.max_seq_len=2048", "train.batch_size=2", "mesh.seq=8", "logging.wandb=disabled"]


def bench_sharded_step(overrides=(), *, steps: int = 8, log=lambda m: print(m, file=sys.stderr)) -> dict:
    cfg = load_config(None, [*DEFAULTS, *overrides])
    tokenizer, batches, _ = build_data(cfg.data, batch_size=cfg.train.batch_size, seed=cfg.train.seed)
    cfg.model.vocab_size = tokenizer.vocab_size
    data = [{k: np.asarray(v)[None] for k, v in next(batches).items()} for _ in range(steps + 1)]
    runs = {}
    for name in ("one device", f"seq-sharded x{cfg.mesh.seq * cfg.mesh.data}"):
        sharded = name != "one device"
        if not sharded:
            cfg_run = load_config(None, [*DEFAULTS, *overrides, "mesh.seq=1", "mesh.data=1"])
        else:
            cfg_run = cfg
        mesh = make_mesh(cfg_run)
        spec = sequence_spec(cfg_run, mesh)
        layout = sequence_layout(spec, cfg.data.seq_len)
        model = build_model(cfg.model, rngs=nnx.Rngs(params=0, dropout=1), sequence_sharding=spec)
        optimizer = nnx.Optimizer(model, make_optimizer(cfg.optim, 1000), wrt=nnx.Param)
        sharding = NamedSharding(mesh, P(None, "data", "seq"))
        put = lambda b, layout=layout, sharding=sharding: jax.device_put(  # noqa: E731
            {k: v[..., layout] if layout is not None else v for k, v in b.items()}, sharding)
        runs[name] = dict(model=model, optimizer=optimizer, step=make_train_step(1), put=put,
                          losses=[])
    log(f"bench sharded step: {cfg.model.num_layers} layers, d_model {cfg.model.d_model}, batch "
        f"{cfg.train.batch_size} x {cfg.data.seq_len} tokens, mesh data={cfg.mesh.data} seq={cfg.mesh.seq} "
        f"({cfg.mesh.seq_layout}); compiling …")

    def run_step(r, batch):
        loss, _ = r["step"](r["model"], r["optimizer"], r["put"](batch))
        r["losses"].append(float(loss))            # waits for the step

    for r in runs.values():
        run_step(r, data[0])                       # compile
    batches = {name: iter(data[1:]) for name in runs}
    times = take_turns({name: (lambda r=r, it=batches[name]: run_step(r, next(it))) for name, r in runs.items()},
                       len(data) - 1)
    names = list(runs)
    res = {n: dict(median_ms=1e3 * statistics.median(times[n]), final_loss=runs[n]["losses"][-1])
           for n in names}
    res["ratio"] = paired_median(times[names[1]], times[names[0]])
    res["loss_gap"] = max(abs(a - b) for a, b in zip(runs[names[0]]["losses"], runs[names[1]]["losses"]))
    res["names"] = names
    return res


def format_report(res: dict) -> str:
    a, b = res["names"]
    return (f"train step, same global batch: {a} {res[a]['median_ms']:.1f} ms, {b} {res[b]['median_ms']:.1f} ms "
            f"-> ratio {res['ratio']:.2f} (simulated devices share this machine's cores); "
            f"largest loss difference {res['loss_gap']:.1e}")


if __name__ == "__main__":           # extra arguments are config overrides, e.g. mesh.seq=4
    try:
        print(format_report(bench_sharded_step(sys.argv[1:])))
    except ValueError as e:          # e.g. a mesh larger than the visible devices
        sys.exit(f"bench sharded step: {e} (set XLA_FLAGS=--xla_force_host_platform_device_count=N)")
