"""Training / prefill with every token sequence-sharded: queries, keys and values.

Call inside `jax.shard_map` with this device's (B, T/p, H, D) shards; it returns
this device's output shard. Two communication schemes, same result:

  "allgather_kv":   all-gather K/V (and key segment ids) and run the ordinary
                    single-device `ea.attend` on the local queries, with their
                    true global positions. Any energy works. Backward: the
                    transpose of all_gather is a reduce-scatter of dK, dV.
  "reduce_scatter": all-gather Q instead; every device computes per-row
                    partials of ALL queries against its LOCAL keys, combined by
                    a max all-reduce and a reduce-scatter of (B, T, H) row sums;
                    ∂/∂ζ routes the numerators through a reduce-scatter too.
                    Associative energies only (softmax, linear, sigmoid).

    def step(q, k, v, ids):     # inside jax.shard_map(..., in_specs=P(None, "seq"), ...)
        return attend_sequence_sharded("softmax", q, k, v, axis="seq", segment_ids=ids,
                                       layout="dual_chunk")

Layouts: "contiguous" (device i holds tokens [i·T/p, (i+1)·T/p)) or "dual_chunk"
(the caller permuted the sequence with `dual_chunk_permutation` before sharding:
device i holds chunks i and 2p−1−i of 2p). Causal masks always use the tokens'
TRUE global positions, so the model may run in either order. The energy view
holds: psum over devices of the returned local energies is the single-device F.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from ..contract import _check_inputs
from ..registry import get_energy
from ..masks import Mask, causal as causal_mask, padding, segments
from .layout import LAYOUTS, check_layout, chunk_starts, to_natural
from .sharded import (Combine, _axis_arg, _f32, resolve_sharded, shard_count, shard_index,
                      zero_source)

SCHEMES = ("allgather_kv", "reduce_scatter")
# Measured (8 simulated CPU devices, B=1 T=4096 H=4 D=64, causal softmax, fwd+bwd):
# allgather_kv 2.42 s, reduce_scatter 2.54 s contiguous; 2.30 s vs 3.29 s dual_chunk. Rerun:
#   XLA_FLAGS=--xla_force_host_platform_device_count=8 python -c \
#     "from energy_attn.tree.prefill import compare_schemes; compare_schemes(4096)"
DEFAULT_SCHEME = "allgather_kv"


def attend_sequence_sharded(energy, q, k, v, *, axis="seq", causal=True, segment_ids=None,
                            valid=None, layout="contiguous", scheme=None, **params):
    """This device's attention output (B, T/p, H, Dv); see the module docstring.

    segment_ids: local (B, T/p) document ids (packed rows attend within a document).
    valid: local (B, T/p) bool; padding tokens are neither seen as keys nor
        answered as queries (their output is 0).
    """
    return attend_sequence_sharded_with_energy(
        energy, q, k, v, axis=axis, causal=causal, segment_ids=segment_ids, valid=valid,
        layout=layout, scheme=scheme, **params)[0]


def attend_sequence_sharded_with_energy(energy, q, k, v, *, axis="seq", causal=True,
                                        segment_ids=None, valid=None, layout="contiguous",
                                        scheme=None, **params):
    """(out, F_local): psum over `axis` of F_local is the energy of the whole sequence."""
    scheme = DEFAULT_SCHEME if scheme is None else scheme
    if scheme not in SCHEMES:
        raise ValueError(f"scheme={scheme!r} is not one of {SCHEMES}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not one of {LAYOUTS}")
    _check_shards(q, k, v, segment_ids, valid)
    p = shard_count(axis)
    check_layout(layout, q.shape[1] * p, p)
    out_dtype = jnp.result_type(q, k, v)
    q, k, v = _f32(q, k, v)
    run = _allgather_kv if scheme == "allgather_kv" else _reduce_scatter
    out, f = run(energy, q, k, v, axis, causal, segment_ids, valid, layout, params)
    return out.astype(out_dtype), f


def _check_shards(q, k, v, segment_ids, valid):
    for name, x in (("q", q), ("k", k), ("v", v)):
        if getattr(x, "ndim", None) != 4:
            raise ValueError(f"{name} must be this device's (B, T/p, H, D) shard; got "
                             f"{getattr(x, 'shape', type(x).__name__)}")
    if not q.shape[:2] == k.shape[:2] == v.shape[:2]:
        raise ValueError(f"q, k, v shards must share (B, T/p); got {q.shape}, {k.shape}, {v.shape} "
                         "(sequence sharding is self-attention)")
    for name, x in (("segment_ids", segment_ids), ("valid", valid)):
        if x is not None and tuple(x.shape) != q.shape[:2]:
            raise ValueError(f"{name} must be this device's (B, T/p) = {q.shape[:2]} shard; "
                             f"got {tuple(x.shape)}")


def _gather(x, axis, p, layout):
    """All-gather a local (B, T/p, ...) shard to the whole (B, T, ...) in natural order."""
    return to_natural(lax.all_gather(x, _axis_arg(axis), axis=1, tiled=True), p, layout)


def _chunks(layout, t_local, p, idx):
    """[(global start, local slice)] of this device's contiguous chunks."""
    out, lo = [], 0
    for start, n in chunk_starts(layout, t_local, p, idx):
        out.append((start, slice(lo, lo + n)))
        lo += n
    return out


def _allgather_kv(energy, q, k, v, axis, causal, segment_ids, valid, layout, params):
    p, idx = shard_count(axis), shard_index(axis)
    k_all, v_all = _gather(k, axis, p, layout), _gather(v, axis, p, layout)
    ids_all = None if segment_ids is None else _gather(segment_ids, axis, p, layout)
    valid_all = None if valid is None else _gather(valid, axis, p, layout)
    outs, total = [], 0.0
    for start, rows in _chunks(layout, q.shape[1], p, idx):
        mask = causal_mask(start) if causal else Mask()      # queries at start + i, keys natural
        if segment_ids is not None:
            mask = mask & segments(segment_ids[:, rows], ids_all)
        if valid is not None:
            mask = mask & padding(kv_valid=valid_all, q_valid=valid[:, rows])
        out, f = _attend_local(energy, q[:, rows], k_all, v_all, mask, params)
        outs.append(out)
        total = total + f
    return jnp.concatenate(outs, axis=1), total


def _attend_local(energy, q, k, v, mask, params):
    """ea.attend_with_energy, except that ζ varies over the mesh axes like q does
    (ea.attend's replicated ζ would sum the gradients of all devices' queries)."""
    fn = get_energy(energy)
    _check_inputs(q, k, v, mask)
    f, out = jax.value_and_grad(lambda z: fn(q, k, v, z, mask=mask, **params))(zero_source(q, v))
    return out, f


def _reduce_scatter(energy, q, k, v, axis, causal, segment_ids, valid, layout, params):
    fn = resolve_sharded(energy)
    p, idx = shard_count(axis), shard_index(axis)
    q_all = _gather(q, axis, p, layout)
    ids_all = None if segment_ids is None else _gather(segment_ids, axis, p, layout)
    valid_all = None if valid is None else _gather(valid, axis, p, layout)
    blocks = []
    for start, rows in _chunks(layout, q.shape[1], p, idx):
        # Queries in natural order (row r at position r); keys at start + j: j <= r − start.
        mask = causal_mask(-start) if causal else Mask()
        if segment_ids is not None:
            mask = mask & segments(ids_all, segment_ids[:, rows])
        if valid is not None:
            mask = mask & padding(kv_valid=valid[:, rows], q_valid=valid_all)
        blocks.append((k[:, rows], v[:, rows], mask))
    combine = Combine(axis, scatter=True, layout=layout)

    def energy_of(zeta):     # zeta: this device's rows; every device needs every row's ζ
        return fn(q_all, blocks, _gather(zeta, axis, p, layout), combine, **params)

    f, out = jax.value_and_grad(energy_of)(zero_source(q, v))
    return out, f


# ------------------------------------------------------------------ which scheme is faster


def compare_schemes(seq_len=4096, batch=1, heads=4, head_dim=64, energy="softmax", repeats=5):
    """Median forward+backward time of each scheme × layout, side by side in one run."""
    import statistics
    import time

    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P

    p = len(jax.devices())
    mesh = jax.make_mesh((p,), ("seq",))
    spec = NamedSharding(mesh, P(None, "seq"))
    key = jax.random.split(jax.random.PRNGKey(0), 3)
    q, k, v = (jax.device_put(jax.random.normal(kk, (batch, seq_len, heads, head_dim)), spec)
               for kk in key)
    steps = {}
    for layout in LAYOUTS:
        for scheme in SCHEMES:
            def loss(q, k, v, layout=layout, scheme=scheme):
                out = attend_sequence_sharded(energy, q, k, v, axis="seq", layout=layout,
                                              scheme=scheme)
                return jnp.sum(out ** 2)
            sm = jax.shard_map(lambda q, k, v, loss=loss: lax.psum(loss(q, k, v), "seq"), mesh=mesh,
                               in_specs=(P(None, "seq"),) * 3, out_specs=P())
            fwd_bwd = jax.jit(jax.value_and_grad(sm, argnums=(0, 1, 2)))
            jax.block_until_ready(fwd_bwd(q, k, v))
            steps[(layout, scheme)] = fwd_bwd
    times = {name: [] for name in steps}
    for _ in range(repeats):                      # alternate, so load changes hit every variant
        for name, fn in steps.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(q, k, v))
            times[name].append(time.perf_counter() - t0)
    print(f"{p} devices, B={batch} T={seq_len} H={heads} D={head_dim}, {energy}, causal, "
          f"forward+backward, median of {repeats}")
    base = statistics.median(times[("contiguous", DEFAULT_SCHEME)])
    for (layout, scheme), ts in times.items():
        med = statistics.median(ts)
        print(f"  {layout:10s} {scheme:14s} {med * 1e3:8.1f} ms   ({med / base:.2f}× contiguous "
              f"{DEFAULT_SCHEME})")
    return {f"{layout}/{scheme}": float(np.median(ts)) for (layout, scheme), ts in times.items()}

