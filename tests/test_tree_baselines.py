"""Tree-attention baselines (ring, all-gather of partials) against single-device
attention, and the HLO collective accounting against hand-computed byte counts.
Runs on the 8 simulated CPU devices of conftest.py."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

import energy_attn as ea
from energy_attn.tree.baselines import (allgather_partials_decode_attention, ring_attention,
                                        ring_decode_attention)
from energy_attn.tree.hlo import collective_stats, memory_stats, shape_bytes

DECODERS = [ring_decode_attention, allgather_partials_decode_attention]


def _qkv(b, tq, tk, h, hkv, d, seed=0):
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(kq, (b, tq, h, d)), jax.random.normal(kk, (b, tk, hkv, d)),
            jax.random.normal(kv, (b, tk, hkv, d)))


def _mesh(kind):
    if kind == "1d":
        return jax.make_mesh((8,), ("seq",)), ("seq",)
    # a 2-D (node, local) mesh with Auto axes: the ring/gather runs over both axes
    return jax.make_mesh((2, 4), ("node", "local"), axis_types=(AxisType.Auto,) * 2), ("node", "local")


# ------------------------------------------------------------------ decode baselines


@pytest.mark.parametrize("decoder", DECODERS, ids=["ring", "allgather"])
@pytest.mark.parametrize("tq", [1, 2])
def test_decode_matches_single_device(decoder, tq):
    mesh, axes = _mesh("1d")
    b, t = 3, 64
    q, k, v = _qkv(b, tq, t, h=4, hkv=2, d=8)
    # partially filled caches: one row ends inside shard 4, one fills only shard 0,
    # one is empty (outputs zeros, not NaN)
    lengths = jnp.array([37, 5, 0])
    want = ea.attend("softmax", q, k, v, mask=ea.lengths(lengths, t))
    step = jax.jit(lambda q, k, v, n: decoder(q, k, v, mesh=mesh, seq_axes=axes, kv_length=n))
    got = step(q, k, v, lengths)
    assert got.shape == (b, tq, 4, 8)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    assert not np.any(got[2])


@pytest.mark.parametrize("decoder", DECODERS, ids=["ring", "allgather"])
def test_decode_2d_mesh_full_cache_eager(decoder):
    """Both axes of a (node, local) mesh, kv_length=None, β given, called eagerly."""
    mesh, axes = _mesh("2d")
    q, k, v = _qkv(2, 2, 64, h=4, hkv=4, d=8, seed=3)
    want = jax.nn.dot_product_attention(q, k, v, scale=0.3, implementation="xla")
    got = decoder(q, k, v, mesh=mesh, seq_axes=axes, beta=0.3)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("decoder", DECODERS, ids=["ring", "allgather"])
def test_decode_bf16(decoder):
    mesh, _ = _mesh("1d")
    q, k, v = _qkv(2, 1, 32, h=2, hkv=2, d=16, seed=1)
    want = ea.attend("softmax", q, k, v)
    got = decoder(*(x.astype(jnp.bfloat16) for x in (q, k, v)), mesh=mesh)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(got.astype(jnp.float32), want, atol=3e-2)


def test_decode_bad_input_is_one_clear_error():
    mesh, _ = _mesh("1d")
    q, k, v = _qkv(1, 1, 60, h=2, hkv=2, d=8)
    with pytest.raises(ValueError, match="not divisible by the 8 devices"):
        ring_decode_attention(q, k, v, mesh=mesh)
    q, k, v = _qkv(1, 1, 64, h=2, hkv=2, d=8)
    with pytest.raises(ValueError, match="seq_axes"):
        allgather_partials_decode_attention(q, k, v, mesh=mesh, seq_axes=("sequence",))
    with pytest.raises(ValueError, match="heads"):
        ring_decode_attention(q[:, :, :1].repeat(3, 2), k, v, mesh=mesh)


# ------------------------------------------------------------------ ring prefill


def _ring_prefill(mesh, causal):
    spec = P(None, "seq")
    return jax.jit(jax.shard_map(lambda q, k, v: ring_attention(q, k, v, axis="seq", causal=causal),
                                 mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec))


@pytest.mark.parametrize("causal", [True, False])
def test_ring_prefill_and_grads_match_single_device(causal):
    mesh = jax.make_mesh((8,), ("seq",), axis_types=(AxisType.Auto,))
    q, k, v = _qkv(2, 32, 32, h=4, hkv=2, d=8, seed=2)
    w = jax.random.normal(jax.random.key(9), q.shape)
    ring = _ring_prefill(mesh, causal)
    mask = ea.causal() if causal else None
    single = lambda q, k, v: ea.attend("softmax", q, k, v, mask=mask)
    np.testing.assert_allclose(ring(q, k, v), single(q, k, v), atol=1e-5, rtol=1e-5)
    loss = lambda attn: (lambda q, k, v: jnp.sum(attn(q, k, v) * w))
    got = jax.grad(loss(ring), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(loss(single), argnums=(0, 1, 2))(q, k, v)
    for g, r, name in zip(got, want, "qkv"):
        np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-4, err_msg=f"d loss / d {name}")


# ------------------------------------------------------------------ HLO accounting


def _compiled(fn, *arrays, in_specs, out_specs, mesh):
    f = jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs))
    placed = [jax.device_put(x, NamedSharding(mesh, s)) for x, s in zip(arrays, in_specs)]
    return f.lower(*placed).compile()


def test_shape_bytes():
    assert shape_bytes("f32[2,16,128]{2,1,0}") == 2 * 16 * 128 * 4
    assert shape_bytes("(bf16[3,5]{1,0}, s32[], pred[7])") == 3 * 5 * 2 + 4 + 7
    assert shape_bytes("token[]") == 0


def test_psum_and_pmax_bytes():
    mesh, _ = _mesh("1d")
    x = jnp.ones((8 * 2, 16, 128))              # each device holds f32[2,16,128]
    c = _compiled(lambda x: (jax.lax.psum(x, "seq"), jax.lax.pmax(x[0, 0], "seq")), x,
                  in_specs=(P("seq"),), out_specs=(P(), P()), mesh=mesh)
    s = collective_stats(c)
    ar = s["by_kind"]["all-reduce"]
    sizes = sorted(op["result_bytes"] for op in s["ops"])
    assert ar["count"] == 2 and s["total_count"] == 2
    assert sizes == [128 * 4, 2 * 16 * 128 * 4]
    assert ar["bytes"] == 128 * 4 + 2 * 16 * 128 * 4
    assert all(op["group_size"] == 8 and op["replica_groups"] == [list(range(8))] for op in s["ops"])
    assert ar["wire_bytes"] == pytest.approx(2 * 7 / 8 * (128 * 4 + 2 * 16 * 128 * 4))
    assert collective_stats(c.as_text())["total_bytes"] == s["total_bytes"]
    assert memory_stats(c)["argument_bytes"] == 2 * 16 * 128 * 4      # per device: its shard


def test_ppermute_in_a_loop_counts_every_trip():
    mesh, _ = _mesh("1d")
    ring = [(i, (i + 1) % 8) for i in range(8)]

    def f(x, y):
        once = jax.lax.ppermute(x, "seq", ring)
        looped, _ = jax.lax.scan(lambda c, _: (jax.lax.ppermute(c, "seq", ring) * 2, None), y,
                                 None, length=5)
        return once, looped
    x, y = jnp.ones((8 * 3, 4)), jnp.ones((8 * 6, 10))
    s = collective_stats(_compiled(f, x, y, in_specs=(P("seq"), P("seq")),
                                   out_specs=(P("seq"), P("seq")), mesh=mesh))
    cp = s["by_kind"]["collective-permute"]
    assert cp["count"] == 1 + 5
    assert cp["wire_bytes"] == 3 * 4 * 4 + 5 * 6 * 10 * 4
    assert all(op["source_target_pairs"] == ring for op in s["ops"])


def test_gather_scatter_and_subgroups():
    mesh = jax.make_mesh((2, 4), ("node", "local"))

    def f(x):
        return (jax.lax.all_gather(x, "local", to="invarying"),
                jax.lax.psum_scatter(x, "local", tiled=True), jax.lax.psum(x, "node"))
    x = jnp.ones((8 * 8, 6))                                    # f32[8,6] per device
    s = collective_stats(_compiled(f, x, in_specs=(P(("node", "local")),),
                                   out_specs=(P("node"), P(("node", "local")), P("local")), mesh=mesh))
    by = {op["kind"]: op for op in s["ops"]}
    ag, rs, ar = by["all-gather"], by["reduce-scatter"], by["all-reduce"]
    assert (ag["result_bytes"], ag["operand_bytes"], ag["group_size"]) == (4 * 8 * 6 * 4, 8 * 6 * 4, 4)
    assert ag["wire_bytes"] == pytest.approx(3 / 4 * 4 * 8 * 6 * 4)
    assert (rs["result_bytes"], rs["operand_bytes"]) == (2 * 6 * 4, 8 * 6 * 4)
    assert ar["group_size"] == 2 and sorted(map(sorted, ar["replica_groups"])) == [
        [0, 4], [1, 5], [2, 6], [3, 7]]
    assert s["total_bytes"] == 4 * 8 * 6 * 4 + 8 * 6 * 4 + 8 * 6 * 4


def test_async_pairs_and_iota_groups_in_text():
    # Hand-written HLO in the async / iota-group forms GPU and TPU compilers print.
    text = """HloModule m, num_partitions=8

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(%a, %b)
}

ENTRY %main (p: f32[4,8]) -> f32[16,8] {
  %p = f32[4,8]{1,0} parameter(0)
  %ars = f32[4,8]{1,0} all-reduce-start(%p), replica_groups=[2,4]<=[4,2]T(1,0), to_apply=%add
  %ard = f32[4,8]{1,0} all-reduce-done(%ars)
  %ags = (f32[4,8]{1,0}, f32[16,8]{1,0}) all-gather-start(%ard), replica_groups=[2,4]<=[8], dimensions={0}
  ROOT %agd = f32[16,8]{1,0} all-gather-done(%ags)
}
"""
    s = collective_stats(text)
    by = {op["kind"]: op for op in s["ops"]}
    assert s["total_count"] == 2
    assert by["all-reduce"]["replica_groups"] == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert by["all-gather"]["replica_groups"] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert by["all-gather"]["result_bytes"] == 16 * 8 * 4 and by["all-gather"]["operand_bytes"] == 4 * 8 * 4
    assert by["all-reduce"]["wire_bytes"] == pytest.approx(2 * 3 / 4 * 4 * 8 * 4)
    with pytest.raises(ValueError, match="ENTRY"):
        collective_stats("not hlo")


def test_decode_communication_scales_as_expected():
    """Ring sends its whole K/V block p−1 times; all-gather sends partials of size O(B·H·D)."""
    mesh, _ = _mesh("1d")
    b, t, h, d = 1, 256, 2, 8
    q, k, v = _qkv(b, 1, t, h=h, hkv=h, d=d)
    stats = {}
    for fn in DECODERS:
        c = jax.jit(lambda q, k, v, fn=fn: fn(q, k, v, mesh=mesh)).lower(q, k, v).compile()
        stats[fn] = collective_stats(c)
    ring = stats[ring_decode_attention]["by_kind"]["collective-permute"]
    assert ring["count"] == 2 * 7                          # K and V, p−1 hops
    assert ring["wire_bytes"] == 2 * 7 * b * (t // 8) * h * d * 4
    gather = stats[allgather_partials_decode_attention]
    assert gather["by_kind"]["collective-permute"]["count"] == 0
    assert gather["by_kind"]["all-gather"]["bytes"] == 8 * (b * h * d + b * h) * 4


# ------------------------------------------------------------------ bench decode (tiny, in-process)


def test_bench_decode_measures_all_three_and_matches_paper_formulas():
    from energy_attn.bench_decode import can_run_here, format_report, paper_formulas, targets
    from energy_attn.bench_decode import measure
    assert can_run_here(4)                       # conftest gave this process 8 devices
    b, t, h, d, p = 1, 256, 2, 8, 4
    res = measure(tokens=t, heads=h, head_dim=d, batch=b, devices=p, rounds=1, log=lambda m: None)
    m = res["methods"]
    assert set(m) == {"tree", "ring", "allgather"}
    assert m["ring"]["max_abs_diff_vs_tree"] < 1e-5 and m["allgather"]["max_abs_diff_vs_tree"] < 1e-5
    assert all(len(x["times_s"]) == 1 for x in m.values())
    # tree and all-gather alternate (a paired ratio); the ring runs in rounds of its own
    assert "tree_over_this_paired" in m["allgather"] and "tree_over_this_paired" not in m["ring"]
    paper = paper_formulas(tokens=t, heads=h, head_dim=d, batch=b, devices=p, itemsize=4)
    # tree: one max and two sum all-reduces of O(b·d) — exactly the paper's count
    assert m["tree"]["comm_wire_bytes"] == pytest.approx(paper["tree_comm_bytes"])
    # ring: K and V, p−1 hops (the paper's "p" counts one hop too many), + one b·d broadcast
    kv_hops = 2 * b * (t // p) * h * d * (p - 1) * 4
    assert m["ring"]["comm_wire_bytes"] == pytest.approx(kv_hops + 2 * (p - 1) / p * b * h * d * 4)
    res["paper"], res["wall_s"] = paper, 0.0
    res["targets"] = targets(res)
    assert [x["status"] in ("PASS", "MISS") for x in res["targets"]] == [True] * 4
    assert "ring / tree communication" in format_report(res)
