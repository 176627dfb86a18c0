"""What verified checkpoints cost: the checksum manifest against a whole save and restore.

    energy-attn bench checkpoint [CONFIG] [KEY=VALUE ...]      # default: the shakespeare recipe

Builds the config's model and optimizer (the state a checkpoint holds), then times, in
alternating rounds: computing the manifest (checksums of every array), a whole save
(async save + wait, manifest included), verifying the arrays read back, and a whole
restore (read + verify). Prints medians in ms and the manifest's share of each.
"""
from __future__ import annotations

import statistics
import tempfile
import time

import jax
from flax import nnx

from models import build_model, num_params
from train.checkpoints.checkpoint import Checkpointer, abstract_like, array_manifest, verify
from train.config import Config
from train.data.pipeline import build_data
from train.loop.trainer import _checkpoint_state, make_optimizer


def _ms(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t0) * 1e3, out


def bench_checkpoint(cfg: Config, *, rounds: int = 5, log=print) -> dict:
    tokenizer, _, _ = build_data(cfg.data, batch_size=cfg.train.batch_size, seed=cfg.train.seed)
    cfg.model.vocab_size = tokenizer.vocab_size
    cfg.model.max_seq_len = max(cfg.model.max_seq_len, cfg.data.seq_len)
    model = build_model(cfg.model, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, make_optimizer(cfg.optim, cfg.train.steps), wrt=nnx.Param)
    state = _checkpoint_state(model, optimizer)
    nbytes = sum(x.nbytes for x in jax.tree.leaves(state) if hasattr(x, "nbytes"))
    log(f"{cfg.model.name}: {num_params(model) / 1e6:.2f}M parameters; checkpointed state "
        f"{nbytes / 2**20:.1f} MiB; {rounds} rounds")
    times: dict[str, list[float]] = {k: [] for k in ("manifest", "save", "verify", "restore")}
    meta = {"step": 1, "data": {"epoch": 0, "position": 0}}
    with tempfile.TemporaryDirectory() as tmp:
        with Checkpointer(tmp, keep=1, keep_best=False) as ckpt:
            for r in range(rounds + 1):            # round 0 warms up Orbax and the caches
                t_manifest, manifest = _ms(lambda: array_manifest(state, meta))

                def save():
                    ckpt.save(r + 1, state=state, meta=meta)
                    ckpt.wait()
                t_save, _ = _ms(save)
                target = abstract_like(state)
                t_restore, (restored, rmeta) = _ms(lambda: ckpt.restore(r + 1, target))
                t_verify, _ = _ms(lambda: verify(manifest, restored, rmeta, where="bench"))
                if r:
                    for k, v in zip(times, (t_manifest, t_save, t_verify, t_restore)):
                        times[k].append(v)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"state_mib": nbytes / 2**20, "params": num_params(model), "median_ms": med,
            "manifest_share_of_save": med["manifest"] / med["save"],
            "verify_share_of_restore": med["verify"] / med["restore"]}


def format_report(res: dict) -> str:
    m = res["median_ms"]
    return "\n".join([
        f"checksums at save:    {m['manifest']:7.1f} ms of a {m['save']:7.1f} ms save "
        f"({100 * res['manifest_share_of_save']:.1f}%)",
        f"checksums at restore: {m['verify']:7.1f} ms of a {m['restore']:7.1f} ms restore "
        f"({100 * res['verify_share_of_restore']:.1f}%)",
    ])
