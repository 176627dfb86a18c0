"""The training loop, top to bottom.

    config -> data + tokenizer -> model (from the registry) -> optimizer
           -> resume from the run directory's latest checkpoint, if any
           -> step / log / eval / checkpoint ... -> final eval, samples, plot

Everything the run needs to continue exactly where it stopped is in the
checkpoint: model state (including dropout RNG counters), optimizer state, the
step, and the data iterator's position.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from models import build_model, generate, num_params
from train.checkpoint import Checkpointer
from train.config import Config, OptimConfig, dump_yaml, to_dict
from train.data import build_data
from train.metrics import MetricsLogger, ProgressBar, read_metrics


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf and train.on_nonfinite is "stop"."""


# ------------------------------------------------------------------ pieces


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    """AdamW with linear warmup then cosine decay to min_lr, and global-norm clipping.
    Non-finite gradients never reach the parameters (apply_if_finite); the loop
    then decides whether to stop or skip."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.lr, warmup_steps=cfg.warmup_steps,
        decay_steps=max(total_steps, cfg.warmup_steps + 1), end_value=cfg.min_lr)
    # No weight decay on vectors (norm scales, biases), as in nanoGPT.
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                     optax.adamw(schedule, b1=cfg.beta1, b2=cfg.beta2,
                                 weight_decay=cfg.weight_decay, mask=decay_mask))
    return optax.apply_if_finite(tx, max_consecutive_errors=1_000_000)


def make_mesh(cfg: Config):
    shape = (cfg.mesh.data, cfg.mesh.seq)
    needed = math.prod(shape)
    if needed > jax.device_count():
        raise ValueError(f"mesh data={shape[0]} x seq={shape[1]} needs {needed} devices; "
                         f"only {jax.device_count()} are visible")
    # Auto axes: XLA propagates shardings from the batch; the model code stays sharding-free.
    return jax.make_mesh(shape, ("data", "seq"), devices=jax.devices()[:needed],
                         axis_types=(jax.sharding.AxisType.Auto,) * 2)


def loss_fn(model, batch, *, deterministic: bool = True):
    logits = model(batch["inputs"], segment_ids=batch["segment_ids"],
                   positions=batch["positions"], deterministic=deterministic)
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()


def train_loss(model, batch):
    return loss_fn(model, batch, deterministic=False)   # dropout on


def make_train_step(grad_accum: int):
    @nnx.jit
    def train_step(model, optimizer, batch):
        # batch arrays are (grad_accum, micro_batch, T): average the gradients.
        total_loss, total_grads = 0.0, None
        for i in range(grad_accum):
            micro = jax.tree.map(lambda x: x[i], batch)
            loss, grads = nnx.value_and_grad(train_loss)(model, micro)
            total_loss = total_loss + loss / grad_accum
            scaled = jax.tree.map(lambda g: g / grad_accum, grads)
            total_grads = scaled if total_grads is None else jax.tree.map(jnp.add, total_grads, scaled)
        optimizer.update(model, total_grads)
        return total_loss, optax.tree.norm(total_grads)
    return train_step


@nnx.jit
def eval_step(model, batch):
    return loss_fn(model, batch, deterministic=True)


def evaluate(model, val_batches, put) -> float:
    losses = [float(eval_step(model, put(b))) for b in val_batches]
    return float(np.mean(losses))


@dataclass
class RunResult:
    step: int
    train_loss: float
    val_loss: float
    params: int
    wall_s: float


# ------------------------------------------------------------------ the run


def train(cfg: Config, *, log=print) -> RunResult:
    t_start = time.perf_counter()
    run_dir = Path(cfg.train.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    mesh = make_mesh(cfg)
    batch_sharding = NamedSharding(mesh, P(None, "data"))   # (accum, batch, T): batch over `data`
    replicated = NamedSharding(mesh, P())

    # Data first: the tokenizer fixes the vocabulary size.
    tokenizer, train_batches, val_batches = build_data(
        cfg.data, batch_size=cfg.train.batch_size, seed=cfg.train.seed,
        process_index=jax.process_index(), process_count=jax.process_count())
    cfg.model.vocab_size = tokenizer.vocab_size
    cfg.model.max_seq_len = max(cfg.model.max_seq_len, cfg.data.seq_len)

    model = build_model(cfg.model, rngs=nnx.Rngs(params=cfg.train.seed, dropout=cfg.train.seed + 1))
    optimizer = nnx.Optimizer(model, make_optimizer(cfg.optim, cfg.train.steps), wrt=nnx.Param)
    # Replicate every parameter and optimizer slot over the mesh (data parallelism).
    nnx.update(model, jax.device_put(nnx.state(model), replicated))
    nnx.update(optimizer, jax.device_put(nnx.state(optimizer), replicated))

    ckpt = Checkpointer(run_dir, keep=cfg.checkpoint.keep, keep_best=cfg.checkpoint.keep_best)
    start_step = 0
    if cfg.checkpoint.resume:
        restored = ckpt.restore_latest(_checkpoint_state(model, optimizer))
        if restored is not None:
            start_step, state, meta = restored
            nnx.update(model, state["model"])
            nnx.update(optimizer, state["optimizer"])
            train_batches.restore(meta["data"])
            log(f"resumed from step {start_step} in {run_dir}")
    dump_yaml(cfg, run_dir / "config.yaml")
    metrics = MetricsLogger(run_dir, wandb_mode=cfg.logging.wandb, project=cfg.logging.project,
                            config=to_dict(cfg))
    n_params = num_params(model)
    log(f"model {cfg.model.name}: {n_params / 1e6:.2f}M parameters, energy "
        f"{cfg.model.attention.energy}, vocab {tokenizer.vocab_size}; {cfg.train.steps} steps")

    accum = cfg.optim.grad_accum
    micro = cfg.train.batch_size // accum

    def put(batch, leading_accum=False):
        batch = {k: np.asarray(v) for k, v in batch.items()}
        if leading_accum:
            batch = {k: v.reshape(accum, micro, *v.shape[1:]) for k, v in batch.items()}
            return jax.device_put(batch, batch_sharding)
        return jax.device_put(batch, NamedSharding(mesh, P("data")))

    train_step = make_train_step(accum)
    tokens_per_step = cfg.train.batch_size * cfg.data.seq_len
    bar = ProgressBar(cfg.train.steps, initial_step=start_step, enabled=cfg.logging.progress_bar)
    val_loss, loss = math.nan, math.nan
    step = start_step
    try:
        while step < cfg.train.steps:
            t0 = time.perf_counter()
            batch = put(next(train_batches), leading_accum=True)
            loss, grad_norm = train_step(model, optimizer, batch)
            loss, grad_norm = float(loss), float(grad_norm)   # syncs: we must see NaN at once
            step += 1
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                if cfg.train.on_nonfinite == "stop":
                    raise TrainingDiverged(
                        f"non-finite loss ({loss}) or gradient norm ({grad_norm}) at step {step}; "
                        f"stopped without saving. The last good checkpoint in {run_dir} is kept "
                        "(set train.on_nonfinite=skip to skip such steps instead)")
                log(f"step {step}: non-finite loss/gradients, update skipped")
            tok_s = tokens_per_step / (time.perf_counter() - t0)
            bar.update(step, loss, tok_s)
            if step % cfg.logging.log_every == 0 or step == cfg.train.steps:
                metrics.log(step, {"loss": loss, "grad_norm": grad_norm, "tokens_per_s": tok_s})
            if step % cfg.train.eval_every == 0 or step == cfg.train.steps:
                val_loss = evaluate(model, val_batches(cfg.train.eval_batches), put)
                val = eval_metrics(val_loss, getattr(val_batches, "bytes_per_token", None))
                metrics.log(step, val, split="val")
                log(f"step {step}: " + ", ".join(f"val {k} {v:.4f}" for k, v in val.items()))
            if step % cfg.checkpoint.every == 0 or step == cfg.train.steps:
                ckpt.save(step, state=_checkpoint_state(model, optimizer),
                          meta={"step": step, "data": train_batches.state(),
                                "tokenizer": tokenizer.to_dict() if hasattr(tokenizer, "to_dict") else None},
                          val_loss=val_loss if math.isfinite(val_loss) else None)
        if math.isnan(val_loss):      # resumed at the last step: nothing was evaluated
            val_loss = evaluate(model, val_batches(cfg.train.eval_batches), put)
        _write_samples(model, tokenizer, cfg, run_dir, log)
    finally:
        bar.close()
        ckpt.close()          # waits for the async save: never exit with a half-written checkpoint
        metrics.close()
    _plot_losses(run_dir)
    wall = time.perf_counter() - t_start
    log(f"done: step {step}, train loss {loss:.4f}, val loss {val_loss:.4f} "
        f"({wall:.0f} s); run directory {run_dir}")
    return RunResult(step=step, train_loss=loss, val_loss=val_loss, params=n_params, wall_s=wall)


def _checkpoint_state(model, optimizer):
    return {"model": nnx.state(model), "optimizer": nnx.state(optimizer)}


def eval_metrics(val_loss: float, bytes_per_token: float | None) -> dict:
    out = {"loss": val_loss, "perplexity": math.exp(min(val_loss, 50.0))}
    if bytes_per_token:
        out["bits_per_byte"] = val_loss / math.log(2) / bytes_per_token
    return out


def _write_samples(model, tokenizer, cfg: Config, run_dir: Path, log):
    prompt = np.asarray([[tokenizer.eos_id]], np.int32)   # start of a fresh document
    max_new = min(cfg.train.sample_tokens, cfg.model.max_seq_len - 1)
    out = generate(model, prompt, max_new, rng=jax.random.key(cfg.train.seed),
                   temperature=cfg.train.temperature, top_k=cfg.train.top_k or None)
    text = tokenizer.decode([int(t) for t in np.asarray(out)[0, 1:]])
    (run_dir / "samples.txt").write_text(text)
    log("sample:\n" + text[:500])


def _plot_losses(run_dir: Path):
    """loss.png: train and val loss against step, from metrics.jsonl."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[str, list] = {"train": [], "val": []}
    for row in read_metrics(run_dir):
        split = row.get("split", "train")
        if split in curves and "loss" in row:
            curves[split].append((row["step"], row["loss"]))
    fig, ax = plt.subplots(figsize=(6, 4))
    for split, pts in curves.items():
        if pts:
            ax.plot(*zip(*sorted(pts)), label=split, marker="o" if split == "val" else None)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(run_dir.name)
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "loss.png", dpi=100)
    plt.close(fig)
