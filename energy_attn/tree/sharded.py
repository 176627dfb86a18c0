"""Sequence-sharded energies: the tree reduction of Tree Attention (arXiv 2408.04093, §4).

Keys and values are split along the sequence over a mesh axis. Each device
computes its local energy terms per query row, and collectives combine them:

    m = pmax(stop_gradient(local_lse), axis)          # pmax has no derivative: stop it on the input
    F = Σ_i [ m_i + log psum(exp(local_lse_i − m_i), axis) ]

`jax.grad` of F wrt ζ is the attention output, and it *is* the paper's
Algorithm 3: one max all-reduce and two sum all-reduces, each O(B·H·d),
independent of the sequence length. Associative energies only: softmax (lse
combines), linear/kernel (numerator and denominator add), sigmoid (a plain sum
over keys; its default bias counts the GLOBAL number of visible keys).

    mesh = jax.make_mesh((4,), ("seq",))
    out = decode_attention(q, k, v, mesh=mesh, kv_length=n)    # q replicated, k/v sharded on T

    # or by hand, inside jax.shard_map over "seq":
    mask = shard_mask(k_local.shape[1], axis="seq", kv_length=n)
    out = attend_sharded_keys("softmax", q, k_local, v_local, axis="seq", mask=mask)

`axis` may be a tuple of mesh axes, e.g. ("node", "local"): reductions then run
one axis at a time, innermost first (inside a node, then across nodes), so the
tree is explicit in the program instead of left to the collective library.
"""
from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from ..autodiff import all_symbolic_zero, instantiate_zeros
from ..energies.linear import features
from ..kernels.linear_sums import dense_num_den
from ..energies.sigmoid import sigmoid as sigmoid_energy
from ..kernels import softmax_attention
from ..kv_cache import KVCache
from ..masks import Mask, as_mask, causal, padding
from ..primitives import default_beta, expand_kv_heads, logsumexp, scores, source
from ..registry import get_energy
from .layout import to_layout

Array = Any

# ------------------------------------------------------------------ mesh axes


def axis_names(axis) -> tuple:
    return (axis,) if isinstance(axis, str) else tuple(axis)


def _axis_arg(axis):
    names = axis_names(axis)
    return names[0] if len(names) == 1 else names


def shard_index(axis):
    """This device's position along `axis` (a tuple counts major to minor, like a PartitionSpec)."""
    return lax.axis_index(_axis_arg(axis))


def shard_count(axis) -> int:
    return math.prod(lax.axis_size(name) for name in axis_names(axis))


def tree_psum(x, axis):
    """psum over each axis in turn, innermost first: the reduction tree, spelled out."""
    for name in reversed(axis_names(axis)):
        x = lax.psum(x, name)
    return x


def tree_pvary(x, axis):
    """Mark a replicated x as varying, one axis at a time, outermost first.

    Per-device terms that use a replicated x implicitly "pvary" it, and the
    transpose of that is a psum of the cotangent: one flat all-reduce over every
    axis at once. Spelled out axis by axis, the transposes run innermost first.
    """
    for name in axis_names(axis):
        if name not in jax.typeof(x).manual_axis_type.varying:
            x = lax.pcast(x, name, to="varying")
    return x


def tree_pmax(x, axis):
    for name in reversed(axis_names(axis)):
        x = lax.pmax(x, name)
    return x


# ------------------------------------------------------------------ how partials combine


@dataclasses.dataclass(frozen=True)
class Combine:
    """How per-query-row partials (rows on axis 1) from key shards combine.

    Queries replicated (decode): every reduction is an all-reduce and each device
    ends with every row. Queries all-gathered in natural order (prefill,
    scheme="reduce_scatter"): row sums are reduce-scattered, so each device ends
    with the rows it owns (in its layout order), and energies are that shard's part.
    """
    axis: Any
    scatter: bool = False
    layout: str = "contiguous"

    def max(self, x):                       # every row, on every device
        return tree_pmax(x, self.axis)

    def sum_all(self, x):                   # every row, on every device
        return tree_psum(x, self.axis)

    def sum(self, x):                       # the rows this device owns
        if not self.scatter:
            return tree_psum(x, self.axis)
        x = to_layout(x, shard_count(self.axis), self.layout)
        return lax.psum_scatter(x, _axis_arg(self.axis), scatter_dimension=1, tiled=True)

    def own(self, x):                       # a full-row array -> the rows this device owns
        if not self.scatter:
            return x
        p = shard_count(self.axis)
        n = x.shape[1] // p
        x = to_layout(x, p, self.layout)
        return lax.dynamic_slice_in_dim(x, shard_index(self.axis) * n, n, axis=1)

    def total(self, x):                     # a scalar part -> the energy this device reports
        return x if self.scatter else tree_psum(x, self.axis)


# ------------------------------------------------------------------ per-row partials


def _lse_rows_reference(q, k, v, zeta, mask, beta):
    s = scores(q, k, mask=mask, beta=beta) + source(zeta, v)
    return logsumexp(s, axis=-1)                                # (B, H, Tq)


@partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def _lse_rows(impl, block_q, block_k, q, k, v, zeta, mask, beta):
    """Per-row log-partition from the fast softmax kernel (same rule as energies/softmax.py)."""
    return softmax_attention(q, k, v, zeta, mask, beta, impl, block_q, block_k)[1]


@partial(_lse_rows.defjvp, symbolic_zeros=True)
def _lse_rows_jvp(impl, block_q, block_k, primals, tangents):
    q, k, v, zeta, mask, beta = primals
    dq, dk, dv, dzeta, dmask, dbeta = tangents
    if not all(all_symbolic_zero(t) for t in (dq, dk, dv, dmask, dbeta)):
        return jax.jvp(_lse_rows_reference, primals, instantiate_zeros(tangents))
    out, lse = softmax_attention(q, k, v, zeta, mask, beta, impl, block_q, block_k)
    if isinstance(dzeta, SymbolicZero):
        return lse, jnp.zeros_like(lse)
    return lse, jnp.einsum("bqhd,bqhd->bhq", dzeta, out)     # ∂lse_i/∂ζ_i = out_i


def _visible(mask: Mask, tq: int, tk: int):
    """(B|1, Tq, H|1) number of keys each query row sees in this block (a constant)."""
    ok = mask.allowed(0, tq, 0, tk, tq, tk)
    if ok is None:
        return jnp.full((1, tq, 1), tk, jnp.float32)
    return jnp.sum(ok, axis=-1, dtype=jnp.float32).transpose(0, 2, 1)


def softmax_sharded(q, blocks, zeta, combine: Combine, *, beta=None, impl="auto", block_q=128,
                    block_k=512):
    beta = jnp.asarray(default_beta(q.shape[-1]) if beta is None else beta, q.dtype)
    parts = []
    for k, v, mask in blocks:
        lse = _lse_rows(impl, block_q, block_k, q, k, v, zeta, mask, beta).transpose(0, 2, 1)
        parts.append((lse, _visible(mask, q.shape[1], k.shape[1]) > 0))   # (B, Tq, H)
    # An empty shard (every key masked, e.g. all in the future) weighs exactly 0.
    local_max = jnp.max(jnp.stack([jnp.where(has, lse, -jnp.inf) for lse, has in parts]), 0)
    m = combine.max(lax.stop_gradient(local_max))
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    total = combine.sum(sum(jnp.where(has, jnp.exp(jnp.where(has, lse, m) - m), 0.0)
                            for lse, has in parts))
    m, nonempty = combine.own(m), total > 0
    return jnp.sum(jnp.where(nonempty, m + jnp.log(jnp.where(nonempty, total, 1.0)), 0.0))


def linear_sharded(q, blocks, zeta, combine: Combine, *, feature_map="elu", num_features=None,
                   seed=0, eps=1e-6, chunk=64):
    del chunk   # the O(T) prefix-sum path needs the whole sequence; shards use the dense sums
    if feature_map == "exp":
        raise ValueError("feature_map='exp' cannot be sequence-sharded: its key features are "
                         "normalised by a max over ALL keys; use 'elu' or 'relu', or "
                         "scheme='allgather_kv' for prefill")
    h = q.shape[2]
    opts = dict(num_features=num_features, seed=seed)
    fq = features(q, feature_map, is_query=True, **opts)
    z = 0.0
    for k, v, mask in blocks:
        fk = expand_kv_heads(features(k, feature_map, is_query=False, **opts), h)
        num, den = dense_num_den(fq, fk, expand_kv_heads(v, h), mask)
        z = z + den + jnp.sum(zeta * num, -1)                    # (B, Tq, H): adds across shards
    return jnp.sum(jnp.log(combine.sum(z) + eps))


def sigmoid_sharded(q, blocks, zeta, combine: Combine, *, beta=None, bias=None, block_q=128):
    row_bias = None
    if bias is None:   # −log(number of keys the query sees), counted over ALL shards
        seen = combine.sum_all(sum(_visible(m, q.shape[1], k.shape[1]) for k, _, m in blocks))
        row_bias = Mask(bias=-jnp.log(jnp.maximum(seen, 1.0)).transpose(0, 2, 1)[..., None])
    total = sum(sigmoid_energy(q, k, v, zeta, mask=mask & row_bias, beta=beta,
                               bias=0.0 if bias is None else bias, block_q=block_q)
                for k, v, mask in blocks)
    return combine.total(total)


SHARDED = {"softmax": softmax_sharded, "linear": linear_sharded, "sigmoid": sigmoid_sharded}
WHY_NOT = {
    "sparsemax": "its threshold τ_i solves Σ_j [s_ij − τ_i]_+ = 1 over ALL keys at once, so "
                 "per-shard partials do not combine with one associative reduction",
    "entmax": "its threshold τ_i solves Σ_j [(α−1)s_ij − τ_i]_+^(1/(α−1)) = 1 over ALL keys at "
              "once, so per-shard partials do not combine with one associative reduction",
}


def resolve_sharded(energy):
    """The sharded form of a built-in energy (by name or as the registered function)."""
    names = {get_energy(n): n for n in SHARDED}
    name = energy if isinstance(energy, str) else names.get(energy)
    if name in SHARDED:
        return SHARDED[name]
    label = energy if isinstance(energy, str) else getattr(energy, "__name__", repr(energy))
    why = WHY_NOT.get(name if isinstance(name, str) else "", None)
    reason = f": {why}" if why else " (only associative energies shard across keys)"
    raise ValueError(f"energy {label!r} cannot be sequence-sharded{reason}. Shardable energies: "
                     f"{sorted(SHARDED)}" + ("; for prefill, scheme='allgather_kv' runs any "
                                             "energy" if why else ""))


# ------------------------------------------------------------------ keys sharded, queries replicated


def sharded_energy(energy, axis="seq"):
    """energy(q, k_local, v_local, zeta, *, mask, **params) -> F, for use inside shard_map.

    q, zeta are replicated; k_local, v_local are this device's key shard, and
    `mask` is in local key coordinates (see `shard_mask`). F (replicated) is the
    energy over all keys, so `jax.grad` wrt ζ is the attention over all keys.
    """
    fn = resolve_sharded(energy)

    def energy_fn(q, k_local, v_local, zeta, *, mask=None, **params):
        # dF/dζ (the numerator all-reduce) and dF/dq reduce along the explicit tree
        q, zeta = tree_pvary(q, axis), tree_pvary(zeta, axis)
        return fn(q, [(k_local, v_local, as_mask(mask))], zeta, Combine(axis), **params)
    energy_fn.__name__ = f"sharded_{getattr(fn, '__name__', 'energy')}"
    return energy_fn


def shard_mask(t_local: int, *, axis="seq", kv_length=None, q_start=None, batch: int | None = None):
    """Mask of replicated queries against this device's key shard, in global positions.

    The shard holds global positions [i·t_local, (i+1)·t_local), i = shard_index(axis).
    kv_length (int, scalar or (B,) array): only keys at positions < kv_length are
    filled. q_start: query j sits at global position q_start + j and sees keys at
    positions <= its own (causal); None: every filled key.
    """
    k0 = shard_index(axis) * t_local
    mask = Mask()
    if q_start is not None:
        mask = causal(jnp.asarray(q_start, jnp.int32) - k0)
    if kv_length is not None:
        n = jnp.asarray(kv_length, jnp.int32)
        filled = (k0 + jnp.arange(t_local))[None, :] < n.reshape(-1, 1)
        if batch is not None:
            filled = jnp.broadcast_to(filled, (batch, t_local))
        mask = mask & padding(kv_valid=filled)
    return mask


def zero_source(q, v):
    """ζ = 0 of the output's shape, varying over the same mesh axes as q.

    Inside shard_map a plain jnp.zeros is replicated, and jax.grad wrt a
    replicated ζ would SUM the per-device gradients (the transpose of its
    implicit pvary): right when q is replicated too (decode), wrong when each
    device holds its own queries.
    """
    zeta = jnp.zeros(q.shape[:-1] + v.shape[-1:], q.dtype)
    axes = tuple(sorted(jax.typeof(q).manual_axis_type.varying))
    return lax.pcast(zeta, axes, to="varying") if axes else zeta


def _f32(*xs):
    dtype = jnp.promote_types(jnp.result_type(*xs), jnp.float32)
    return [x.astype(dtype) for x in xs]


def attend_sharded_keys_with_energy(energy, q, k_local, v_local, *, axis="seq", mask=None, **params):
    """(out, F) inside shard_map: out = ∂F/∂ζ at 0 over all key shards, both replicated."""
    for name, x in (("q", q), ("k_local", k_local), ("v_local", v_local)):
        if x.ndim != 4:
            raise ValueError(f"{name} must have shape (B, T, H, D); got {x.shape}")
    out_dtype = jnp.result_type(q, k_local, v_local)
    q, k_local, v_local = _f32(q, k_local, v_local)
    f = sharded_energy(energy, axis)
    zeta = zero_source(q, v_local)
    value, out = jax.value_and_grad(lambda z: f(q, k_local, v_local, z, mask=mask, **params))(zeta)
    return out.astype(out_dtype), value


def attend_sharded_keys(energy, q, k_local, v_local, *, axis="seq", mask=None, **params):
    """Attention of replicated queries over sequence-sharded keys, inside shard_map."""
    return attend_sharded_keys_with_energy(energy, q, k_local, v_local, axis=axis, mask=mask,
                                           **params)[0]


# ------------------------------------------------------------------ decode with a sharded cache


def _seq_spec(seq_axes):
    names = tuple(seq_axes)
    return names[0] if len(names) == 1 else names


def _place(x, mesh, spec):
    """Put x on the mesh with `spec` (reshard on Explicit meshes, a constraint on Auto ones)."""
    sharding = NamedSharding(mesh, spec)
    if all(t == AxisType.Explicit for t in mesh.axis_types):
        return jax.sharding.reshard(x, sharding)
    return lax.with_sharding_constraint(x, sharding)


def _num_shards(mesh, seq_axes) -> int:
    missing = [a for a in seq_axes if a not in mesh.axis_names]
    if missing:
        raise ValueError(f"seq_axes {tuple(seq_axes)} name {missing}, which the mesh lacks "
                         f"(mesh axes: {tuple(mesh.axis_names)})")
    return math.prod(mesh.shape[a] for a in seq_axes)


def decode_attention_with_energy(q, k, v, *, mesh, seq_axes=("seq",), energy="softmax",
                                 kv_length=None, q_offset=None, **params):
    """(out, F): see `decode_attention`."""
    seq_axes = axis_names(seq_axes)
    p = _num_shards(mesh, seq_axes)
    resolve_sharded(energy)
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"q, k, v must have shape (B, T, H, D); got {q.shape}, {k.shape}, {v.shape}")
    b, t = k.shape[:2]
    if t % p:
        raise ValueError(f"the KV length {t} must be divisible by the {p} devices of seq_axes "
                         f"{seq_axes}")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"q has {q.shape[2]} heads, not a multiple of the {k.shape[2]} K/V heads")
    lengths = jnp.broadcast_to(jnp.asarray(t if kv_length is None else kv_length, jnp.int32), (b,))
    q_start = jnp.asarray(0 if q_offset is None else q_offset, jnp.int32)
    axis = _seq_spec(seq_axes)

    def local(q, k, v, lengths, q_start):
        mask = shard_mask(k.shape[1], axis=axis, kv_length=lengths,
                          q_start=None if q_offset is None else q_start)
        return attend_sharded_keys_with_energy(energy, q, k, v, axis=axis, mask=mask, **params)

    kv = P(None, axis)
    fn = jax.shard_map(local, mesh=mesh, in_specs=(P(), kv, kv, P(), P()), out_specs=(P(), P()),
                       check_vma=True)
    return fn(_place(q, mesh, P()), _place(k, mesh, kv), _place(v, mesh, kv),
              _place(lengths, mesh, P()), _place(q_start, mesh, P()))


def decode_attention(q, k, v, *, mesh, seq_axes=("seq",), energy="softmax", kv_length=None,
                     q_offset=None, **params):
    """Attention of a few new queries over a KV cache sharded along its length.

    q (B, Tq, H, D) replicated; k, v (B, T, H_kv, D) sharded along T over the
    mesh axes `seq_axes` (T divisible by their product); returns (B, Tq, H, Dv)
    replicated. kv_length (int or traced scalar or (B,)): the filled positions
    [0, kv_length); every query sees all of them (default: all T). q_offset: if
    given, query j sits at position q_offset + j and sees keys up to its own
    position only (several new tokens already appended to the cache).
    One max and two sum all-reduces of O(B·H·D), whatever T is.
    """
    return decode_attention_with_energy(q, k, v, mesh=mesh, seq_axes=seq_axes, energy=energy,
                                        kv_length=kv_length, q_offset=q_offset, **params)[0]


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class ShardedKVCache:
    """A KV cache whose length axis is sharded over `seq_axes` of `mesh` (jit-friendly).

        cache = ShardedKVCache.zeros(mesh, batch=2, max_len=1024, num_kv_heads=2, key_dim=64)
        cache = cache.append(k_new, v_new)              # only the owning shard changes
        out = cache.attend(q_new)                       # causal over the filled positions
    """
    k: Array          # (B, max_len, H_kv, Dk), sharded along max_len
    v: Array          # (B, max_len, H_kv, Dv)
    index: Array      # int32 scalar: positions [0, index) are filled
    mesh: Any = None
    seq_axes: tuple = ("seq",)

    def tree_flatten(self):
        return (self.k, self.v, self.index), (self.mesh, self.seq_axes)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children, *aux)

    @classmethod
    def zeros(cls, mesh, *, batch: int, max_len: int, num_kv_heads: int, key_dim: int,
              value_dim: int | None = None, seq_axes=("seq",), dtype=jnp.float32):
        seq_axes = axis_names(seq_axes)
        p = _num_shards(mesh, seq_axes)
        if max_len % p:
            raise ValueError(f"max_len={max_len} must be divisible by the {p} devices of seq_axes "
                             f"{seq_axes}")
        spec = P(None, _seq_spec(seq_axes))
        make = lambda d: jax.device_put(jnp.zeros((batch, max_len, num_kv_heads, d), dtype),
                                        NamedSharding(mesh, spec))
        return cls(make(key_dim), make(key_dim if value_dim is None else value_dim),
                   jnp.zeros((), jnp.int32), mesh, seq_axes)

    @property
    def max_len(self) -> int:
        return self.k.shape[1]

    def append(self, k_new, v_new) -> "ShardedKVCache":
        """Write T_new tokens at `index` (they may straddle shards) and advance it."""
        n = k_new.shape[1]
        KVCache.check_room(self.index, n, self.max_len)
        axis = _seq_spec(self.seq_axes)
        kv = P(None, axis)

        def write(block, new, index):
            # One dynamic_update_slice of a window of W slots; slots that hold no new
            # token keep their old value, so only the owning shard(s) change.
            t_local = block.shape[1]
            w = min(n, t_local)
            rel = index - shard_index(axis) * t_local            # new token 0, in local slots
            start = jnp.clip(rel, 0, t_local - w)
            which = start + jnp.arange(w) - rel                   # new token per window slot
            mine = ((which >= 0) & (which < n))[None, :, None, None]
            old = lax.dynamic_slice_in_dim(block, start, w, axis=1)
            fresh = jnp.take(new.astype(block.dtype), jnp.clip(which, 0, n - 1), axis=1)
            return lax.dynamic_update_slice_in_dim(block, jnp.where(mine, fresh, old), start, axis=1)

        fn = jax.shard_map(lambda kb, vb, kn, vn, i: (write(kb, kn, i), write(vb, vn, i)),
                           mesh=self.mesh, in_specs=(kv, kv, P(), P(), P()), out_specs=(kv, kv),
                           check_vma=True)
        k, v = fn(self.k, self.v, _place(k_new, self.mesh, P()), _place(v_new, self.mesh, P()),
                  _place(jnp.asarray(self.index, jnp.int32), self.mesh, P()))
        return dataclasses.replace(self, k=k, v=v, index=self.index + n)

    def attend(self, q, *, energy="softmax", **params):
        """Attention of the last q.shape[1] appended tokens' queries: causal, filled part only."""
        n = q.shape[1]
        return decode_attention(q, self.k, self.v, mesh=self.mesh, seq_axes=self.seq_axes,
                                energy=energy, kv_length=self.index, q_offset=self.index - n,
                                **params)
