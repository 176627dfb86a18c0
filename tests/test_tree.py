"""Sequence-sharded energies (energy_attn.tree) against single-device ea.attend.

Eight simulated CPU devices (tests/conftest.py). Every sharded result is compared
with `ea.attend` / `ea.attend_with_energy` on the gathered arrays: outputs,
the energy value, first-order gradients of a random linear functional of the
output wrt q, k, v, and a second-order check.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import PartitionSpec as P

import energy_attn as ea
from energy_attn import tree
from energy_attn.tree.hlo import collective_stats

B, T, H, HKV, D = 2, 32, 4, 2, 8
ENERGIES = ["softmax", "linear", "sigmoid"]


def make_mesh(shape, names):
    """Auto axes, as the trainer uses: shard_map reshards its inputs as needed."""
    return jax.make_mesh(shape, names, axis_types=(jax.sharding.AxisType.Auto,) * len(shape))


def rand(i, shape):
    return jnp.asarray(np.random.default_rng(i).standard_normal(shape), jnp.float32)


def close(a, b, tol, what=""):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol, err_msg=what)


@pytest.fixture(scope="module")
def qkv():
    q, k, v = rand(0, (B, T, H, D)), rand(1, (B, T, HKV, D)), rand(2, (B, T, HKV, D))
    w = rand(3, (B, T, H, D))                                 # a random linear functional of out
    ids = jnp.asarray(np.repeat([[0] * 11 + [1] * 13 + [2] * 8, [0] * 20 + [1] * 12], 1, 0))
    valid = jnp.ones((B, T), bool).at[1, -5:].set(False)       # padding at the end of row 1
    return q, k, v, w, ids, valid


# ------------------------------------------------------------------ layout


def test_dual_chunk_permutation_and_inverse():
    perm = tree.dual_chunk_permutation(16, 4)
    assert perm.tolist() == [0, 1, 14, 15, 2, 3, 12, 13, 4, 5, 10, 11, 6, 7, 8, 9]
    x = np.arange(3 * 16).reshape(3, 16)
    assert (x[:, perm][:, tree.dual_chunk_inverse(16, 4)] == x).all()
    # to_natural / to_layout are the same reorder, written as reshapes
    xp = jnp.asarray(x[:, perm])
    assert (np.asarray(tree.to_natural(xp, 4, "dual_chunk")) == x).all()
    assert (np.asarray(tree.to_layout(jnp.asarray(x), 4, "dual_chunk")) == x[:, perm]).all()


@pytest.mark.parametrize("layout,seq_len,shards,need", [("dual_chunk", 20, 4, "8 chunks"),
                                                         ("contiguous", 10, 4, "4 shards")])
def test_bad_divisibility_is_a_clear_error(layout, seq_len, shards, need):
    with pytest.raises(ValueError, match=rf"{need}.*seq_len={seq_len}.*num_shards={shards}"):
        tree.check_layout(layout, seq_len, shards)
    if layout == "dual_chunk":
        with pytest.raises(ValueError, match="seq_len=20"):
            tree.dual_chunk_permutation(seq_len, shards)


# ------------------------------------------------------------------ prefill / training


def sharded_prefill(energy, layout, scheme, p, *, causal=True, with_masks=True, **params):
    """(q, k, v, ids, valid) global, natural order -> (out, F) via attend_sequence_sharded."""
    mesh = make_mesh((p,), ("seq",))
    perm = tree.dual_chunk_permutation(T, p) if layout == "dual_chunk" else np.arange(T)
    inv = tree.inverse_permutation(perm)
    rows = P(None, "seq")

    def local(q, k, v, ids, valid):
        out, f = tree.attend_sequence_sharded_with_energy(
            energy, q, k, v, axis="seq", causal=causal, layout=layout, scheme=scheme,
            segment_ids=ids if with_masks else None, valid=valid if with_masks else None, **params)
        return out, lax.psum(f, "seq")

    fn = jax.shard_map(local, mesh=mesh, in_specs=(rows,) * 5, out_specs=(rows, P()))

    def run(q, k, v, ids, valid):
        out, f = fn(*(x[:, perm] for x in (q, k, v, ids, valid)))
        return out[:, inv], f
    return run


def reference(energy, *, causal=True, with_masks=True, **params):
    def run(q, k, v, ids, valid):
        mask = ea.causal() if causal else ea.Mask()
        if with_masks:
            mask = mask & ea.segments(ids) & ea.padding(kv_valid=valid, q_valid=valid)
        return ea.attend_with_energy(energy, q, k, v, mask=mask, **params)
    return run


def first_order(run, w):
    def loss(q, k, v, ids, valid):
        return jnp.sum(run(q, k, v, ids, valid)[0] * w)
    return jax.jit(lambda *a: (run(*a), jax.grad(loss, argnums=(0, 1, 2))(*a)))


PREFILL_CASES = [(e, "dual_chunk", s) for e in ENERGIES for s in ("allgather_kv", "reduce_scatter")] \
    + [("softmax", "contiguous", s) for s in ("allgather_kv", "reduce_scatter")]


@pytest.mark.parametrize("energy,layout,scheme", PREFILL_CASES)
def test_prefill_matches_single_device(qkv, energy, layout, scheme):
    q, k, v, w, ids, valid = qkv
    (out, f), grads = first_order(sharded_prefill(energy, layout, scheme, 4), w)(q, k, v, ids, valid)
    (out_ref, f_ref), grads_ref = first_order(reference(energy), w)(q, k, v, ids, valid)
    close(out, out_ref, 1e-5, "output")
    close(f, f_ref, 1e-4, "energy: psum of local energies")
    assert np.abs(np.asarray(out[1, -5:])).max() == 0          # padded queries answer 0
    for name, g, g_ref in zip("qkv", grads, grads_ref):
        close(g, g_ref, 1e-4, f"d/d{name}")


@pytest.mark.parametrize("energy,scheme", [("softmax", "allgather_kv"), ("softmax", "reduce_scatter")])
def test_prefill_second_order(qkv, energy, scheme):
    """grad of ‖∂L/∂q‖² wrt k: differentiates through the collectives' transposes twice."""
    q, k, v, w, ids, valid = qkv

    def second(run):
        def loss(q, k, v):
            return jnp.sum(run(q, k, v, ids, valid)[0] * w)
        return jax.jit(jax.grad(lambda q, k, v: jnp.sum(jax.grad(loss)(q, k, v) ** 2), argnums=(1, 2)))
    got = second(sharded_prefill(energy, "dual_chunk", scheme, 4))(q, k, v)
    want = second(reference(energy))(q, k, v)
    for g, g_ref in zip(got, want):
        close(g, g_ref, 2e-4, "second order")


@pytest.mark.parametrize("scheme", ["allgather_kv", "reduce_scatter"])
def test_prefill_non_causal_eight_devices(qkv, scheme):
    q, k, v, w, ids, valid = qkv
    out, f = jax.jit(sharded_prefill("softmax", "dual_chunk", scheme, 8, causal=False,
                                     with_masks=False))(q, k, v, ids, valid)
    out_ref, f_ref = reference("softmax", causal=False, with_masks=False)(q, k, v, ids, valid)
    close(out, out_ref, 1e-5)
    close(f, f_ref, 1e-4)


def test_prefill_with_a_batch_axis_too(qkv, scheme="allgather_kv"):
    """Batch over "data", sequence over "seq" (the trainer's mesh): ζ must vary over both."""
    q, k, v, w, ids, valid = qkv
    mesh = make_mesh((2, 4), ("data", "seq"))
    perm = tree.dual_chunk_permutation(T, 4)
    rows, heads = P("data", "seq"), P("data", "seq", None, None)

    def local(q, k, v, ids):
        out, f = tree.attend_sequence_sharded_with_energy("softmax", q, k, v, axis="seq",
                                                          segment_ids=ids, layout="dual_chunk",
                                                          scheme=scheme)
        return out, lax.psum(f, ("data", "seq"))
    fn = jax.shard_map(local, mesh=mesh, in_specs=(heads,) * 3 + (rows,), out_specs=(heads, P()))
    out, f = jax.jit(fn)(q[:, perm], k[:, perm], v[:, perm], ids[:, perm])
    out_ref, f_ref = ea.attend_with_energy("softmax", q, k, v, mask=ea.causal() & ea.segments(ids))
    close(out[:, tree.inverse_permutation(perm)], out_ref, 1e-5)
    close(f, f_ref, 1e-4)


def test_prefill_errors(qkv):
    q, k, v, *_ = qkv
    mesh = make_mesh((4,), ("seq",))
    rows = P(None, "seq")

    def call(energy="softmax", **kw):
        fn = jax.shard_map(lambda q, k, v: tree.attend_sequence_sharded(energy, q, k, v, **kw),
                           mesh=mesh, in_specs=(rows,) * 3, out_specs=rows)
        return fn(q, k, v)

    with pytest.raises(ValueError, match="entmax.*cannot be sequence-sharded.*threshold"):
        call("entmax", scheme="reduce_scatter")
    with pytest.raises(ValueError, match="scheme='ring'"):
        call(scheme="ring")
    with pytest.raises(ValueError, match="layout='zigzag'"):
        call(layout="zigzag")
    with pytest.raises(ValueError, match="valid must be this device's"):
        call(valid=jnp.ones((B, 3), bool))


# ------------------------------------------------------------------ decode with a sharded KV cache


def decode_reference(energy, kv_length, q_offset, tq):
    filled = jnp.arange(T)[None, :] < jnp.asarray(kv_length).reshape(-1, 1)
    mask = ea.padding(kv_valid=jnp.broadcast_to(filled, (B, T)))
    if q_offset is not None:
        mask = mask & ea.causal(q_offset)
    return lambda q, k, v: ea.attend_with_energy(energy, q, k, v, mask=mask)


@pytest.mark.parametrize("energy,tq,kv_length,q_offset", [
    ("softmax", 1, (19, 5), None), ("softmax", 3, 19, 16), ("sigmoid", 1, (19, 5), None),
    ("linear", 3, 19, 16)])
def test_decode_matches_single_device(energy, tq, kv_length, q_offset):
    """Shard 3 of 4 holds no filled key (and for row 1, shards 1-3): zeros, never NaN."""
    q, k, v, w = rand(4, (B, tq, H, D)), rand(5, (B, T, HKV, D)), rand(6, (B, T, HKV, D)), \
        rand(7, (B, tq, H, D))
    mesh = make_mesh((4,), ("seq",))
    n = jnp.asarray(kv_length, jnp.int32)

    def sharded(q, k, v, n):
        return tree.decode_attention_with_energy(q, k, v, mesh=mesh, energy=energy, kv_length=n,
                                                 q_offset=q_offset)

    def both(run):
        loss = lambda q, k, v, *a: jnp.sum(run(q, k, v, *a)[0] * w)
        return jax.jit(lambda *a: (run(*a), jax.grad(loss, argnums=(0, 1, 2))(*a)))
    (out, f), grads = both(sharded)(q, k, v, n)               # kv_length traced
    (out_ref, f_ref), grads_ref = both(decode_reference(energy, n, q_offset, tq))(q, k, v)
    close(out, out_ref, 1e-5, "output")
    close(f, f_ref, 1e-4, "energy")
    for name, g, g_ref in zip("qkv", grads, grads_ref):
        assert np.isfinite(np.asarray(g)).all()
        close(g, g_ref, 1e-4, f"d/d{name}")


def test_decode_second_order():
    q, k, v = rand(4, (B, 2, H, D)), rand(5, (B, T, HKV, D)), rand(6, (B, T, HKV, D))
    w = rand(7, (B, 2, H, D))
    mesh = make_mesh((4,), ("seq",))

    def second(attend):
        loss = lambda q, k, v: jnp.sum(attend(q, k, v) * w)
        return jax.jit(jax.grad(lambda q, k, v: jnp.sum(jax.grad(loss)(q, k, v) ** 2), argnums=(1, 2)))
    got = second(lambda q, k, v: tree.decode_attention(q, k, v, mesh=mesh, kv_length=27))(q, k, v)
    want = second(lambda q, k, v: decode_reference("softmax", 27, None, 2)(q, k, v)[0])(q, k, v)
    for g, g_ref in zip(got, want):
        close(g, g_ref, 2e-4, "second order")


def test_sharded_cache_append_matches_kv_cache():
    mesh = make_mesh((4,), ("seq",))                           # 8 slots per shard
    cache = tree.ShardedKVCache.zeros(mesh, batch=B, max_len=T, num_kv_heads=HKV, key_dim=D)
    ref = ea.KVCache.zeros(B, T, HKV, D, D)
    append = jax.jit(lambda c, kn, vn: c.append(kn, vn))       # index traced
    attend = jax.jit(lambda c, q: c.attend(q, energy="softmax"))
    for step, n in enumerate([6, 5, 13]):                      # 6→11 and 11→24 straddle shards
        kn, vn = rand(10 + step, (B, n, HKV, D)), rand(20 + step, (B, n, HKV, D))
        q = rand(30 + step, (B, n, H, D))
        mask = ref.attention_mask(n)
        ref = ref.append(kn, vn)
        cache = append(cache, kn, vn)
        assert int(cache.index) == int(ref.index)
        close(cache.k, ref.k, 0, "keys")
        close(cache.v, ref.v, 0, "values")
    # the last n tokens' queries: causal over the filled positions, as KVCache's mask says
    close(attend(cache, q), ea.attend("softmax", q, ref.k, ref.v, mask=mask), 1e-5, "attend")
    with pytest.raises(ValueError, match="overflow"):
        cache.append(kn[:, :1].repeat(9, 1), vn[:, :1].repeat(9, 1))


def test_decode_errors():
    mesh = make_mesh((4,), ("seq",))
    q, k = rand(4, (B, 1, H, D)), rand(5, (B, T, HKV, D))
    with pytest.raises(ValueError, match="sparsemax.*cannot be sequence-sharded.*threshold"):
        tree.decode_attention(q, k, k, mesh=mesh, energy="sparsemax")
    with pytest.raises(ValueError, match="cannot be sequence-sharded"):
        tree.decode_attention(q, k, k, mesh=mesh, energy=lambda q, k, v, z, *, mask: 0.0)
    with pytest.raises(ValueError, match="KV length 30 must be divisible by the 4 devices"):
        tree.decode_attention(q, k[:, :30], k[:, :30], mesh=mesh)
    with pytest.raises(ValueError, match="feature_map='exp'"):
        tree.decode_attention(q, k, k, mesh=mesh, energy="linear", feature_map="exp")
    with pytest.raises(ValueError, match="'tensor'.*mesh lacks"):
        tree.decode_attention(q, k, k, mesh=mesh, seq_axes=("tensor",))


# ------------------------------------------------------------------ the explicit tree on a 2-D mesh


def test_two_level_tree_reduces_inside_nodes_then_across():
    mesh = make_mesh((2, 4), ("node", "local"))
    q = rand(4, (B, 1, H, D))

    def compiled(t):
        k, v = rand(5, (B, t, HKV, D)), rand(6, (B, t, HKV, D))
        fn = jax.jit(lambda q, k, v: tree.decode_attention(q, k, v, mesh=mesh,
                                                           seq_axes=("node", "local"), kv_length=21))
        filled = jnp.broadcast_to(jnp.arange(t) < 21, (B, t))
        close(fn(q, k, v), ea.attend("softmax", q, k, v, mask=ea.padding(kv_valid=filled)), 1e-5)
        return collective_stats(fn.lower(q, k, v).compile())

    stats = compiled(T)
    groups = [sorted(map(tuple, op["replica_groups"])) for op in stats["ops"]]
    inside = [(0, 1, 2, 3), (4, 5, 6, 7)]
    across = [(0, 4), (1, 5), (2, 6), (3, 7)]
    # Algorithm 3's max, denominator and numerator: each reduced inside a node, then across
    assert groups.count(inside) == 3 and groups.count(across) == 3, groups
    assert stats["total_count"] == 6 == stats["by_kind"]["all-reduce"]["count"], stats["by_kind"]
    # O(B·H·d) per step, whatever the cache length: (max + denominator + numerator) × 2 levels
    assert stats["total_bytes"] == 2 * 4 * (B * H + B * H + B * H * D)
    assert compiled(4 * T)["total_bytes"] == stats["total_bytes"]
