"""train.checkpoints.checkpoint: Orbax round trips (nnx state, optax state, PRNG keys, meta), the
keep-N + best policy, async saves, and falling back past damaged checkpoints."""
import os
import shutil
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from train.checkpoints.checkpoint import CheckpointError, Checkpointer, CheckpointMismatch, CheckpointWarning

X = jnp.ones((2, 3))


class Tiny(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.lin = nnx.Linear(3, 8, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)     # carries an RNG key + counter in its state
        self.out = nnx.Linear(8, 2, rngs=rngs)

    def __call__(self, x):
        return self.out(self.drop(self.lin(x)))


def make(seed=0, steps=1):
    """A model and an adamw optimizer with `steps` updates applied (non-trivial state)."""
    model = Tiny(nnx.Rngs(params=seed, dropout=seed + 1))
    opt = nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param)
    for _ in range(steps):
        grads = nnx.grad(lambda m: jnp.sum(m(X) ** 2))(model)
        opt.update(model, grads)
    return model, opt


def train_state(model, opt, key_seed=7):
    return {"model": nnx.state(model), "opt": nnx.state(opt), "rng": jax.random.key(key_seed)}


def fresh_target():
    model, opt = make(seed=123, steps=0)
    return model, opt, train_state(model, opt, key_seed=0)


def raw(x):
    return np.asarray(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x)


def assert_bitwise_equal(a, b):
    (pa, la), (pb, lb) = (zip(*jax.tree_util.tree_flatten_with_path(t)[0]) for t in (a, b))
    assert pa == pb                        # same entries (Variable metadata aside)
    for x, y in zip(la, lb):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(raw(x), raw(y))
        assert raw(x).tobytes() == raw(y).tobytes()


def save_steps(run_dir, steps, val_losses=None, **kw):
    model, opt = make()
    with Checkpointer(run_dir, **kw) as ckpt:
        for i, s in enumerate(steps):
            vl = val_losses[i] if val_losses else None
            ckpt.save(s, state=train_state(model, opt, key_seed=s), meta={"step": s}, val_loss=vl)
    return model, opt


def test_round_trip_bitwise_into_new_process(tmp_path):
    model, opt = make(steps=2)
    state = train_state(model, opt)
    meta = {"step": 2, "data": {"epoch": 0, "position": 1234}, "config": "tiny",
            "tokenizer": {"vocab": ["\n", " ", "a", "é"]}}
    ckpt = Checkpointer(tmp_path, async_save=True)
    ckpt.save(2, state=state, meta=meta, val_loss=1.5)
    ckpt.wait()
    # A second Checkpointer on the same directory is what a new process sees.
    other = Checkpointer(tmp_path)
    m2, o2, target = fresh_target()
    step, restored, meta2 = other.restore_latest(target)
    assert step == 2 and meta2 == meta
    assert_bitwise_equal(restored, state)
    assert jnp.issubdtype(restored["rng"].dtype, jax.dtypes.prng_key)   # still a typed key
    nnx.update(m2, restored["model"])
    nnx.update(o2, restored["opt"])
    assert int(o2.step[...]) == 2
    np.testing.assert_array_equal(m2(X), model(X))     # same params and same dropout RNG stream
    ckpt.close()
    other.close()


def test_round_trip_of_a_trainer_style_optax_chain(tmp_path):
    """clip + masked adamw (MaskedNode leaves) + apply_if_finite (bool/int counters)."""
    def tx():
        mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
        chain = optax.chain(optax.clip_by_global_norm(1.0),
                            optax.adamw(optax.cosine_decay_schedule(1e-3, 10), mask=mask))
        return optax.apply_if_finite(chain, max_consecutive_errors=100)

    model = Tiny(nnx.Rngs(params=0, dropout=1))
    opt = nnx.Optimizer(model, tx(), wrt=nnx.Param)
    for _ in range(2):
        opt.update(model, nnx.grad(lambda m: jnp.sum(m(X) ** 2))(model))
    state = {"model": nnx.state(model), "optimizer": nnx.state(opt)}
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(2, state=state, meta={"step": 2})
    m2 = Tiny(nnx.Rngs(params=9, dropout=9))
    o2 = nnx.Optimizer(m2, tx(), wrt=nnx.Param)
    with Checkpointer(tmp_path) as ckpt:
        _, restored, _ = ckpt.restore_latest({"model": nnx.state(m2), "optimizer": nnx.state(o2)})
    assert_bitwise_equal(restored, state)
    nnx.update(o2, restored["optimizer"])
    assert int(o2.step[...]) == 2


def test_restore_into_abstract_target_with_current_shardings(tmp_path):
    mesh = jax.make_mesh((4, 2), ("a", "b"))
    model, opt = make()
    saved = jax.device_put(nnx.state(model), NamedSharding(mesh, P()))   # saved replicated
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state={"model": saved}, meta={})
    # Target: abstract (nnx.eval_shape) with a *different* sharding for one kernel.
    abstract = nnx.eval_shape(lambda: nnx.state(Tiny(nnx.Rngs(0))))
    col = NamedSharding(mesh, P(None, "a"))
    replicated = NamedSharding(mesh, P())
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                            abstract)
    abstract["lin"]["kernel"].set_value(jax.ShapeDtypeStruct((3, 8), jnp.float32, sharding=col))
    with Checkpointer(tmp_path) as ckpt:
        _, restored, _ = ckpt.restore_latest({"model": abstract})
    kernel = restored["model"]["lin"]["kernel"][...]
    assert kernel.sharding == col
    assert restored["model"]["out"]["kernel"][...].sharding == replicated
    assert_bitwise_equal(restored["model"], nnx.state(model))


def test_partial_restore_of_model_only(tmp_path):
    model, opt = save_steps(tmp_path, [5])
    m2, _, _ = fresh_target()
    with Checkpointer(tmp_path) as ckpt:
        step, state, meta = ckpt.restore_latest({"model": nnx.state(m2)}, partial=True)
    assert step == 5 and set(state) == {"model"} and meta == {"step": 5}
    assert_bitwise_equal(state["model"], nnx.state(model))


def test_keep_n_deletes_old_steps(tmp_path):
    save_steps(tmp_path, [1, 2, 3, 4, 5], keep=2, keep_best=False, async_save=False)
    with Checkpointer(tmp_path, keep=2, keep_best=False) as ckpt:
        assert ckpt.all_steps() == [4, 5] and ckpt.latest_step() == 5
    on_disk = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert on_disk == ["4", "5"]


def test_keep_best_survives_even_when_older_than_n(tmp_path):
    save_steps(tmp_path, [1, 2, 3, 4, 5], val_losses=[2.0, 0.5, 1.0, None, 3.0], keep=2)
    ckpt = Checkpointer(tmp_path, keep=2)          # new instance: val losses read from disk
    assert ckpt.all_steps() == [2, 4, 5] and ckpt.best_step() == 2
    model, opt = make()
    ckpt.save(6, state=train_state(model, opt), meta={}, val_loss=0.25)   # a new best
    ckpt.save(7, state=train_state(model, opt), meta={}, val_loss=0.9)
    ckpt.wait()
    assert ckpt.all_steps() == [6, 7] and ckpt.best_step() == 6
    _, opt_, target = fresh_target()
    step, _, meta = ckpt.restore_latest(target, which="best")
    assert step == 6
    ckpt.close()


def _damage_data(step_dir):
    for f in (step_dir / "state" / "d").iterdir():
        os.remove(f)


def _truncate(rel):
    def f(step_dir):
        with open(step_dir / rel, "r+b") as fh:
            fh.truncate(5)
    return f


# Orbax's async readers complain on their way out of a failed read; that noise is theirs.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")
@pytest.mark.parametrize("damage,what", [
    (_damage_data, "array data deleted"),
    (_truncate("state/manifest.ocdbt"), "array index truncated"),
    (_truncate("state/_METADATA"), "tree metadata truncated"),
    (lambda d: shutil.rmtree(d / "meta"), "meta missing"),
    (_truncate("meta/metadata"), "meta truncated"),
])
def test_damaged_newest_falls_back_to_previous(tmp_path, damage, what):
    save_steps(tmp_path, [1, 2])
    damage(tmp_path / "checkpoints" / "2")
    model, opt = make()
    ckpt = Checkpointer(tmp_path)
    _, _, target = fresh_target()
    with pytest.warns(CheckpointWarning, match=r"step 2 .*could not be restored"):
        step, state, meta = ckpt.restore_latest(target)
    assert step == 1 and meta == {"step": 1}, what
    assert_bitwise_equal(state, train_state(model, opt, key_seed=1))
    assert ckpt.latest_step() == 1
    # Training resumes from step 1 and saves step 2 again: the damaged one is moved aside.
    with pytest.warns(CheckpointWarning, match="moved the unreadable checkpoint at step 2"):
        ckpt.save(2, state=train_state(model, opt, key_seed=2), meta={"step": 2})
    ckpt.close()
    assert (tmp_path / "checkpoints" / "2.unreadable").is_dir()
    with Checkpointer(tmp_path) as again:
        assert again.all_steps() == [1, 2]
        assert again.restore_latest(target)[0] == 2


def test_unfinished_save_of_killed_process_is_ignored(tmp_path):
    save_steps(tmp_path, [1])
    tmp = tmp_path / "checkpoints" / "2.orbax-checkpoint-tmp-1712345678"
    (tmp / "state").mkdir(parents=True)
    (tmp / "state" / "garbage").write_bytes(b"\0" * 10)
    ckpt = Checkpointer(tmp_path)
    assert ckpt.all_steps() == [1]
    _, _, target = fresh_target()
    with pytest.warns(CheckpointWarning, match="step 2 is unfinished"):
        assert ckpt.restore_latest(target)[0] == 1
    model, opt = make()
    ckpt.save(2, state=train_state(model, opt), meta={})
    ckpt.close()
    assert not tmp.exists()
    assert Checkpointer(tmp_path).all_steps() == [1, 2]


def test_restore_right_after_async_save_waits(tmp_path):
    model, opt = make()
    state = train_state(model, opt)
    with Checkpointer(tmp_path, async_save=True) as ckpt:
        ckpt.save(3, state=state, meta={"step": 3})
        _, _, target = fresh_target()
        step, restored, _ = ckpt.restore_latest(target)    # no explicit wait()
    assert step == 3
    assert_bitwise_equal(restored, state)


def test_async_save_is_safe_against_donated_buffers(tmp_path):
    """jit donation deletes the old arrays right after the next step: the save must
    have copied them off the device before save() returned."""
    model, opt = make()
    state = jax.tree.map(jnp.copy, train_state(model, opt))
    expected = jax.tree.map(lambda x: np.array(raw(x)), state)
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state=state, meta={})
        for leaf in jax.tree.leaves(state):
            leaf.delete()
    _, _, target = fresh_target()
    _, restored, _ = Checkpointer(tmp_path).restore_latest(target)
    for x, y in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(raw(x), y)


def test_empty_run_dir_returns_none_and_creates_nothing(tmp_path):
    _, _, target = fresh_target()
    with Checkpointer(tmp_path / "run") as ckpt:
        assert ckpt.restore_latest(target) is None
        assert ckpt.latest_step() is None and ckpt.best_step() is None and ckpt.all_steps() == []
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_nothing_restorable_raises_rather_than_restarting(tmp_path):
    save_steps(tmp_path, [1])
    other = {"model": nnx.state(nnx.Linear(4, 4, rngs=nnx.Rngs(0)))}    # a different model
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(CheckpointMismatch, match="has no array model/bias .*config changed"):
            ckpt.restore_latest(other)


def test_shape_mismatch_names_the_array_and_both_shapes_before_reading(tmp_path):
    save_steps(tmp_path, [1, 2])
    model, opt, target = fresh_target()
    wider = dict(target, rng=jax.random.key(0))
    wider["model"] = nnx.state(Tiny(nnx.Rngs(0)))
    wider["model"]["lin"]["kernel"].set_value(jnp.zeros((3, 9)))
    with Checkpointer(tmp_path) as ckpt, warnings.catch_warnings():
        warnings.simplefilter("error")          # no fallback warnings: every checkpoint has this shape
        with pytest.raises(CheckpointMismatch) as e:
            ckpt.restore_latest(wider)
    assert "checkpoint step 2" in str(e.value)
    assert "model/lin/kernel has shape (3, 8) there and (3, 9) here" in str(e.value)
    wider["model"]["lin"]["kernel"].set_value(jnp.zeros((3, 8), jnp.bfloat16))
    with Checkpointer(tmp_path) as ckpt, pytest.raises(CheckpointMismatch,
                                                       match="dtype float32 there and bfloat16 here"):
        ckpt.restore_latest(wider)


def test_save_checks(tmp_path):
    model, opt = make()
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(TypeError, match="JSON"):
            ckpt.save(1, state=train_state(model, opt), meta={"x": np.zeros(2)})
        ckpt.save(1, state=train_state(model, opt), meta={})
        with pytest.raises(CheckpointError, match="already has a checkpoint at step 1"):
            ckpt.save(1, state=train_state(model, opt), meta={})
    with pytest.raises(ValueError):
        Checkpointer(tmp_path, keep=0)
