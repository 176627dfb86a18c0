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
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from energy_attn.sequence_sharding import SequenceSharding
from models import build_model, generate, num_params
from train.checkpoints.checkpoint import Checkpointer
from train.config import Config, OptimConfig, dump_yaml, to_dict
from train.data.pipeline import build_data
from train.loop.metrics import MetricsLogger, ProgressBar, read_metrics
from train.checkpoints.run_lock import RunLock
from train.checkpoints.run_record import (HISTORY, ConfigChanged, check_changes, config_changes,
                              experiment_changes, record_changes)
from train.loop.throughput import matmul_peak_flops, step_flops


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf and train.on_nonfinite is "stop"."""


# ------------------------------------------------------------------ pieces


def warmup_steps(cfg: OptimConfig, total_steps: int) -> int:
    """optim.warmup_steps, or a tenth of the run when the run is shorter than the warmup
    (a smoke run of 20 steps would otherwise never reach the peak learning rate)."""
    return cfg.warmup_steps if cfg.warmup_steps <= total_steps else total_steps // 10


def learning_rate_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to lr (`warmup_steps`), then cosine decay to min_lr at total_steps."""
    warmup = warmup_steps(cfg, total_steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.lr, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=cfg.min_lr)


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    """AdamW on `learning_rate_schedule`, with global-norm clipping. Non-finite gradients
    never reach the parameters (apply_if_finite); the loop then decides whether to stop or
    skip."""
    schedule = learning_rate_schedule(cfg, total_steps)
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


def sequence_spec(cfg: Config, mesh) -> SequenceSharding | None:
    """How the model's attention shards the sequence (None: mesh.seq = 1)."""
    if cfg.mesh.seq == 1:
        return None
    return SequenceSharding(mesh, seq_axis="seq", batch_axis="data", layout=cfg.mesh.seq_layout)


def sequence_layout(spec: SequenceSharding | None, seq_len: int):
    """The token order the devices hold: dual-chunk order puts chunks i and 2p-1-i on
    device i. Inputs, targets, positions and segment ids are permuted alike (targets
    were shifted before, so the next-token pairs survive shard boundaries), and the
    mean loss does not depend on token order."""
    if spec is None or spec.layout == "contiguous":
        return None
    from energy_attn.tree import dual_chunk_permutation
    return dual_chunk_permutation(seq_len, spec.num_shards)


def loss_fn(model, batch, *, deterministic: bool = True):
    logits = model(batch["inputs"], segment_ids=batch["segment_ids"],
                   positions=batch["positions"], deterministic=deterministic)
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()


def train_loss(model, batch):
    return loss_fn(model, batch, deterministic=False)   # dropout on


def accumulated_step(model, optimizer, batch, grad_accum: int):
    """One optimizer step on batch arrays shaped (grad_accum, micro_batch, T): the gradients
    of the micro-batches are averaged, then applied. Returns (loss, gradient norm)."""
    total_loss, total_grads = 0.0, None
    for i in range(grad_accum):
        micro = jax.tree.map(lambda x: x[i], batch)
        loss, grads = nnx.value_and_grad(train_loss)(model, micro)
        total_loss = total_loss + loss / grad_accum
        scaled = jax.tree.map(lambda g: g / grad_accum, grads)
        total_grads = scaled if total_grads is None else jax.tree.map(jnp.add, total_grads, scaled)
    optimizer.update(model, total_grads)
    return total_loss, optax.tree.norm(total_grads)


def make_train_step(grad_accum: int):
    """`step(model, optimizer, batch) -> (loss, grad_norm)` with nnx.jit: simple, and what
    the benchmarks that swap models call. The trainer uses `TrainStep`, which is faster."""
    return nnx.jit(partial(accumulated_step, grad_accum=grad_accum))


class TrainStep:
    """The trainer's step: `accumulated_step` as one jax.jit of a pure function of the
    model's and optimizer's state. The module graph is split once here; nnx.jit would walk
    and rebuild it on every call, which costs a visible share of a small model's step.
    The state travels as a flat list of arrays: jit walks its arguments on every call, and
    an nnx.State (Variables inside) took ~3.9 ms a call to walk for the shakespeare recipe,
    a list of the same arrays 1.3 ms (two cores that the step's compute also needs).

        step = TrainStep(model, optimizer, grad_accum)
        loss, grad_norm = step(batch)       # device arrays: reading them waits for the step
        step.sync()                         # model and optimizer objects <- the current state
    """

    def __init__(self, model, optimizer, grad_accum: int = 1):
        self._objects = (model, optimizer)
        graphdef, state = nnx.split(self._objects)
        self.state, treedef = jax.tree.flatten(state)

        def pure(leaves, batch):
            model, optimizer = nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))
            loss, grad_norm = accumulated_step(model, optimizer, batch, grad_accum)
            leaves, after = jax.tree.flatten(nnx.state((model, optimizer)))
            if after != treedef:   # checked once, at trace time: leaves must not change places
                raise RuntimeError("the train step changed the structure of the model/optimizer "
                                   f"state:\n{treedef}\n->\n{after}")
            return leaves, loss, grad_norm
        self.jitted = jax.jit(pure)
        self._treedef = treedef

    def __call__(self, batch):
        self.state, loss, grad_norm = self.jitted(self.state, batch)
        return loss, grad_norm

    def sync(self) -> None:
        """Before the model or optimizer objects are read (eval, checkpoint, samples)."""
        nnx.update(self._objects, jax.tree.unflatten(self._treedef, self.state))


def make_eval_step():
    return nnx.jit(partial(loss_fn, deterministic=True))


def evaluate(model, val_batches, put, eval_step=None) -> float:
    eval_step = eval_step or make_eval_step()
    losses = [float(eval_step(model, put(b))) for b in val_batches]
    return float(np.mean(losses))


def to_global(tree, sharding: NamedSharding):
    """Arrays every process holds identically (a batch from the deterministic data
    pipeline, parameters built from the same seed) -> global jax.Arrays placed as
    `sharding` says. One process: a device_put. Several: each process fills the
    slices its own devices hold (device_put cannot reach other hosts' devices)."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def one(x):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):       # RNG keys travel as their raw bits
            return jax.random.wrap_key_data(one(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])
    return jax.tree.map(one, tree)


@dataclass
class RunResult:
    step: int
    train_loss: float
    val_loss: float
    params: int
    wall_s: float
    skipped_steps: int = 0          # updates skipped for non-finite loss (train.on_nonfinite=skip)
    already_complete: bool = False  # the run directory had finished this config before


# ------------------------------------------------------------------ the run


def train(cfg: Config, *, log=print, allow_config_change: bool = False) -> RunResult:
    """Train `cfg` in `cfg.train.run_dir`, resuming it if it holds a checkpoint.

    The run directory holds one experiment: a config that changes what the experiment is
    raises ConfigChanged unless `allow_config_change` (the change is then recorded in
    config_history.jsonl); a run that already finished this config returns at once,
    touching nothing. One process at a time may write a run directory (RunLocked)."""
    t_start = time.perf_counter()
    run_dir = Path(cfg.train.run_dir)
    main_process = jax.process_index() == 0
    if not main_process:                 # one voice: process 0 prints and writes the files
        log = lambda *_: None            # noqa: E731
    lock = RunLock(run_dir).acquire() if main_process else None
    try:
        changes = config_changes(run_dir, cfg)    # read-only: every process decides alike
        check_changes(run_dir, changes, allow=allow_config_change)
        return _train(cfg, run_dir, changes, allow_config_change, log, main_process, t_start)
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: Config, run_dir: Path, changes: dict, allow_config_change: bool, log,
           main_process: bool, t_start: float) -> RunResult:
    mesh = make_mesh(cfg)
    spec = sequence_spec(cfg, mesh)
    layout = sequence_layout(spec, cfg.data.seq_len)
    # (accum, batch, T): batch over `data`, sequence over `seq`.
    batch_sharding = NamedSharding(mesh, P(None, "data", "seq"))
    replicated = NamedSharding(mesh, P())

    # Data first: the tokenizer fixes the vocabulary size. Every process reads the
    # same global batches and keeps its devices' slices (see to_global).
    tokenizer, train_batches, val_batches = build_data(
        cfg.data, batch_size=cfg.train.batch_size, seed=cfg.train.seed)
    cfg.model.vocab_size = tokenizer.vocab_size
    cfg.model.max_seq_len = max(cfg.model.max_seq_len, cfg.data.seq_len)

    model = build_model(cfg.model, rngs=nnx.Rngs(params=cfg.train.seed, dropout=cfg.train.seed + 1),
                        sequence_sharding=spec)
    optimizer = nnx.Optimizer(model, make_optimizer(cfg.optim, cfg.train.steps), wrt=nnx.Param)
    # Replicate every parameter and optimizer slot over the mesh (data parallelism).
    nnx.update(model, to_global(nnx.state(model), replicated))
    nnx.update(optimizer, to_global(nnx.state(optimizer), replicated))

    ckpt = Checkpointer(run_dir, keep=cfg.checkpoint.keep, keep_best=cfg.checkpoint.keep_best)
    start_step = 0
    try:
        if cfg.checkpoint.resume:
            restored = ckpt.restore_latest(_checkpoint_state(model, optimizer))
            if restored is not None:
                start_step, state, meta = restored
                if start_step > cfg.train.steps:
                    raise ConfigChanged(
                        f"{run_dir} is at step {start_step}, past train.steps={cfg.train.steps}; "
                        f"to train it longer set train.steps above {start_step}")
                if start_step == cfg.train.steps and not experiment_changes(changes):
                    return _already_complete(cfg, run_dir, ckpt, start_step, num_params(model), log, t_start)
                nnx.update(model, state["model"])
                nnx.update(optimizer, state["optimizer"])
                train_batches.restore(meta["data"])
                log(f"resumed from step {start_step} in {run_dir}")
    except BaseException:
        ckpt.close()
        raise
    if main_process:
        _record(run_dir, start_step, changes, allow_config_change, log)
        dump_yaml(cfg, run_dir / "config.yaml")
    metrics = (MetricsLogger(run_dir, wandb_mode=cfg.logging.wandb, project=cfg.logging.project,
                             config=to_dict(cfg), background=True) if main_process else _NoMetrics())
    n_params = num_params(model)
    log(f"model {cfg.model.name}: {n_params / 1e6:.2f}M parameters, energy "
        f"{cfg.model.attention.energy}, vocab {tokenizer.vocab_size}; {cfg.train.steps} steps; "
        f"run directory {run_dir}")
    if warmup_steps(cfg.optim, cfg.train.steps) != cfg.optim.warmup_steps:
        log(f"optim.warmup_steps={cfg.optim.warmup_steps} is longer than the {cfg.train.steps}-step "
            f"run: warming up over {warmup_steps(cfg.optim, cfg.train.steps)} steps (a tenth of it)")

    accum = cfg.optim.grad_accum
    micro = cfg.train.batch_size // accum

    def put(batch, leading_accum=False):
        batch = {k: np.asarray(v) for k, v in batch.items()}
        if layout is not None:
            batch = {k: v[..., layout] for k, v in batch.items()}
        if leading_accum:
            batch = {k: v.reshape(accum, micro, *v.shape[1:]) for k, v in batch.items()}
            return to_global(batch, batch_sharding)
        return to_global(batch, NamedSharding(mesh, P("data", "seq")))

    train_step = TrainStep(model, optimizer, accum)
    eval_step = make_eval_step()
    lr_at = learning_rate_schedule(cfg.optim, cfg.train.steps)
    tokens_per_step = cfg.train.batch_size * cfg.data.seq_len
    bar = ProgressBar(cfg.train.steps, initial_step=start_step,
                      enabled=cfg.logging.progress_bar and main_process)
    val_loss, loss, grad_norm = math.nan, math.nan, math.nan
    step = start_step
    skipped, skipped_in_a_row = 0, 0
    # Losses stay on the device until a step that logs, evaluates or saves: reading one
    # waits for its step, and a read every step would stop the host from preparing the next
    # batch while the device computes. Non-finite steps are found there, in order; none can
    # have reached a checkpoint (every save comes after such a read) or the parameters
    # (apply_if_finite).
    pending: list[tuple[int, jax.Array, jax.Array]] = []
    flops_per_step = peak = None
    # What an eval covers: the first train.eval_batches batches of the validation split.
    val_tokens = int(min(cfg.train.eval_batches, getattr(val_batches, "max_batches", math.inf))
                     * cfg.train.batch_size * cfg.data.seq_len)
    split_rows = getattr(val_batches, "num_rows", None)
    val_covers = f"{val_tokens:,} tokens" + ("" if split_rows is None else
                                             f" of the split's {split_rows * cfg.data.seq_len:,}")
    timer_step, timer_t = start_step, time.perf_counter()

    def settle() -> None:
        nonlocal loss, grad_norm, skipped, skipped_in_a_row
        for at, l, g in pending:
            loss, grad_norm = float(l), float(g)
            if math.isfinite(loss) and math.isfinite(grad_norm):
                skipped_in_a_row = 0
                continue
            if cfg.train.on_nonfinite == "stop":
                raise TrainingDiverged(
                    f"non-finite loss ({loss}) or gradient norm ({grad_norm}) at step {at}; "
                    f"stopped without saving. {_kept(ckpt, run_dir)} "
                    "(train.on_nonfinite=skip skips such steps instead)")
            skipped, skipped_in_a_row = skipped + 1, skipped_in_a_row + 1
            if skipped_in_a_row >= cfg.train.max_skipped_steps:
                raise TrainingDiverged(
                    f"{skipped_in_a_row} steps in a row had a non-finite loss or gradient "
                    f"(up to step {at}; train.max_skipped_steps={cfg.train.max_skipped_steps}); "
                    f"stopped without saving. {_kept(ckpt, run_dir)}")
            log(f"step {at}: non-finite loss/gradients, update skipped "
                f"({skipped} so far, {skipped_in_a_row} in a row)")
        pending.clear()

    try:
        while step < cfg.train.steps:
            batch = put(next(train_batches), leading_accum=True)
            pending.append((step + 1, *train_step(batch)))
            step += 1
            last = step == cfg.train.steps
            log_now = step % cfg.logging.log_every == 0 or last
            eval_now = step % cfg.train.eval_every == 0 or last
            save_now = step % cfg.checkpoint.every == 0 or last
            sample_now = bool(cfg.train.sample_every) and step % cfg.train.sample_every == 0 and not last
            first = step == start_step + 1
            if not (log_now or eval_now or save_now or sample_now or first or len(pending) >= 10):
                continue
            settle()
            if first:     # one early read: startup (data, model, compile) made visible
                log(f"first step done {time.perf_counter() - t_start:.1f} s after start "
                    "(data, model, compilation)")
            tok_s = tokens_per_step * (step - timer_step) / (time.perf_counter() - timer_t)
            bar.update(step, loss, tok_s)
            if first and main_process:     # once, after step 1: what a step costs and what the machine does
                flops_per_step = step_flops(train_step.jitted, train_step.state, batch)
                peak = matmul_peak_flops(cfg.model.compute_dtype) if flops_per_step else None
            if log_now:
                speed = {"tokens_per_s": tok_s}
                if flops_per_step:
                    speed["flop_per_s"] = flops_per_step * tok_s / tokens_per_step
                    speed["mfu"] = speed["flop_per_s"] / peak
                metrics.log(step, {"loss": loss, "grad_norm": grad_norm, "lr": float(lr_at(step - 1)),
                                   **speed, "skipped_steps": skipped})
            if eval_now or save_now:
                train_step.sync()
            if eval_now:
                val_loss = evaluate(model, val_batches(cfg.train.eval_batches), put, eval_step)
                val = eval_metrics(val_loss, getattr(val_batches, "bytes_per_token", None))
                metrics.log(step, {**val, "tokens": val_tokens}, split="val")
                log(f"step {step}: " + ", ".join(f"val {k} {v:.4f}" for k, v in val.items())
                    + f" ({val_covers})")
            if sample_now:
                train_step.sync()
                _write_samples(model, tokenizer, cfg, run_dir, step, log, write=main_process)
            if save_now:
                ckpt.save(step, state=_checkpoint_state(model, optimizer),
                          meta={"step": step, "data": train_batches.state(),
                                "tokenizer": tokenizer.to_dict() if hasattr(tokenizer, "to_dict") else None},
                          val_loss=val_loss if math.isfinite(val_loss) else None)
            timer_step, timer_t = step, time.perf_counter()   # tokens/s counts training only
        settle()
        train_step.sync()
        if math.isnan(val_loss):      # resumed at the last step: nothing was evaluated
            val_loss = evaluate(model, val_batches(cfg.train.eval_batches), put, eval_step)
        _write_samples(model, tokenizer, cfg, run_dir, step, log, write=main_process)
    finally:
        bar.close()
        ckpt.close()          # waits for the async save: never exit with a half-written checkpoint
        metrics.close()
    if main_process:
        _plot_losses(run_dir)
    wall = time.perf_counter() - t_start
    log(f"done: step {step}, train loss {loss:.4f}, val loss {val_loss:.4f} "
        + (f"({skipped} non-finite steps skipped) " if skipped else "")
        + f"({wall:.0f} s); run directory {run_dir}")
    return RunResult(step=step, train_loss=loss, val_loss=val_loss, params=n_params, wall_s=wall,
                     skipped_steps=skipped)


def _kept(ckpt: Checkpointer, run_dir: Path) -> str:
    """What a stopped run leaves behind, for its last message."""
    ckpt.wait()
    last = ckpt.latest_step()
    if last is None:
        return f"No checkpoint was saved yet, so {run_dir} has nothing to resume from."
    return f"The last good checkpoint (step {last}) in {run_dir} is kept."


def _record(run_dir: Path, step: int, changes: dict, allowed: bool, log) -> None:
    """Append what changed since the run's last session to config_history.jsonl."""
    defining = experiment_changes(changes)
    if defining:
        how = "--allow-config-change"
    elif "train.steps" in changes:
        how = "train.steps changed"
        old, new = changes["train.steps"]
        log(f"train.steps {old} -> {new}: the learning-rate schedule now ends at step {new}")
    else:
        how = "run settings (not the experiment)"
    if changes:
        record_changes(run_dir, step, changes, how=how)
        log(f"config changes from step {step} recorded in {run_dir / HISTORY}: "
            + ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items()))


def _already_complete(cfg: Config, run_dir: Path, ckpt: Checkpointer, step: int, n_params: int,
                      log, t_start: float) -> RunResult:
    """A finished run asked to train again with the same experiment: report, touch nothing."""
    val_loss = ckpt.val_loss(step)
    ckpt.close()
    train_rows = [r for r in read_metrics(run_dir) if r.get("split", "train") == "train" and "loss" in r]
    train_loss = train_rows[-1]["loss"] if train_rows else math.nan
    val = f"val loss {val_loss:.4f}" if val_loss is not None else "no val loss recorded"
    log(f"{run_dir} is already complete: step {step} of {cfg.train.steps}, {val}; nothing to do "
        f"(to train it longer: train.run_dir={run_dir} train.steps=N with N > {step})")
    return RunResult(step=step, train_loss=train_loss,
                     val_loss=val_loss if val_loss is not None else math.nan,
                     params=n_params, wall_s=time.perf_counter() - t_start,
                     already_complete=True)


def _checkpoint_state(model, optimizer):
    return {"model": nnx.state(model), "optimizer": nnx.state(optimizer)}


def eval_metrics(val_loss: float, bytes_per_token: float | None) -> dict:
    out = {"loss": val_loss, "perplexity": math.exp(min(val_loss, 50.0))}
    if bytes_per_token:
        out["bits_per_byte"] = val_loss / math.log(2) / bytes_per_token
    return out


class _NoMetrics:
    """Stands in for MetricsLogger on processes other than 0."""
    wandb_mode = "disabled"

    def log(self, *args, **kwargs):
        pass

    def close(self):
        pass


def _write_samples(model, tokenizer, cfg: Config, run_dir: Path, step: int, log, write: bool = True):
    """Append one sample to samples.txt under a header that says how it was drawn."""
    prompt = np.asarray([[tokenizer.eos_id]], np.int32)   # start of a fresh document
    max_new = min(cfg.train.sample_tokens, cfg.model.max_seq_len - 1)
    t = cfg.train
    out = generate(model, prompt, max_new, rng=jax.random.fold_in(jax.random.key(t.seed), step),
                   temperature=t.temperature, top_k=t.top_k or None)
    text = tokenizer.decode([int(x) for x in np.asarray(out)[0, 1:]])
    if not write:
        return
    header = (f"=== step {step} · prompt: start of a document (the EOS token) · temperature "
              f"{t.temperature} · top_k {t.top_k or 'all'} · {max_new} tokens ===")
    with open(run_dir / "samples.txt", "a") as f:
        f.write(f"{header}\n{text}\n\n")
    log(f"sample at step {step}:\n" + text[:500])


def _plot_losses(run_dir: Path):
    """loss.png: train and val loss against step, from metrics.jsonl (compare's plot, one run)."""
    from train.workflows.compare import plot_curves, summarize
    plot_curves([summarize(run_dir)], run_dir / "loss.png")
