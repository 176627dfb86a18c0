"""Attention masks as one small pytree.

A `Mask` says which (query, key) pairs may interact and what additive bias the
scores get. It is never a dense T×T array unless you give it one: kernels ask it
for one block at a time (`allowed`, `bias_block`), so blockwise kernels can skip
whole blocks that causality or a sliding window rules out.

Positions: query i sits at key position `q_offset + i`. The default offset is
`Tk - Tq`, so a few new queries against a longer key sequence (decoding) are the
*last* positions. A KV cache passes its (traced) write index instead.

Compose masks with `&`:  `causal() & sliding_window(128) & padding(kv_valid=m)`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = Any

_ARRAY_FIELDS = ("q_offset_array", "kv_valid", "q_valid", "q_segment_ids",
                 "kv_segment_ids", "bias", "allowed_pairs")


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class Mask:
    causal: bool = False
    window: int | None = None          # keys within `window` positions of the query
    q_offset: int | None = None        # static offset (None: Tk - Tq)
    q_offset_array: Array | None = None  # traced offset, e.g. a KV-cache index
    kv_valid: Array | None = None      # (B, Tk) bool: padding of keys
    q_valid: Array | None = None       # (B, Tq) bool: padding of queries
    q_segment_ids: Array | None = None   # (B, Tq) int: packed documents
    kv_segment_ids: Array | None = None  # (B, Tk) int
    bias: Array | None = None          # broadcastable to (B, H, Tq, Tk), e.g. ALiBi
    allowed_pairs: Array | None = None  # explicit bool, broadcastable to (B, H, Tq, Tk)

    # -- pytree: flags and static ints are aux data so they stay static under jit
    def tree_flatten(self):
        children = tuple(getattr(self, f) for f in _ARRAY_FIELDS)
        return children, (self.causal, self.window, self.q_offset)

    @classmethod
    def tree_unflatten(cls, aux, children):
        causal, window, q_offset = aux
        return cls(causal, window, q_offset, *children)

    # -- composition
    def __and__(self, other: "Mask") -> "Mask":
        if other is None:
            return self
        if not isinstance(other, Mask):
            raise TypeError(f"can only combine a Mask with a Mask, got {type(other).__name__}")
        if (self.q_offset is not None or self.q_offset_array is not None) and \
                (other.q_offset is not None or other.q_offset_array is not None):
            raise ValueError("both masks set a query offset (causal(offset)); give it once")
        merged = {}
        for f in dataclasses.fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if f.name == "causal":
                merged[f.name] = a or b
            elif a is None:
                merged[f.name] = b
            elif b is None:
                merged[f.name] = a
            elif f.name == "window":
                merged[f.name] = min(a, b)
            elif f.name == "bias":
                merged[f.name] = a + b
            elif f.name in ("kv_valid", "q_valid", "allowed_pairs"):
                merged[f.name] = jnp.logical_and(a, b)
            else:
                raise ValueError(f"cannot combine two masks that both set `{f.name}`")
        return Mask(**merged)

    __rand__ = __and__

    # -- questions kernels ask
    def restrictions(self) -> tuple[str, ...]:
        """Names of the fields this mask sets (q_offset only places queries; it restricts
        nothing by itself)."""
        return tuple(f.name for f in dataclasses.fields(self)
                     if f.name != "q_offset" and getattr(self, f.name) is not None
                     and getattr(self, f.name) is not False)

    def restricts_beyond(self, *names: str) -> tuple[str, ...]:
        """The restrictions this mask sets other than `names`: () when a kernel that handles
        only those can take it."""
        return tuple(r for r in self.restrictions() if r not in names)

    @property
    def is_trivial(self) -> bool:
        return not self.restrictions()

    @property
    def has_dynamic_offset(self) -> bool:
        return self.q_offset_array is not None

    def rows_never_empty(self, tq: int, tk: int) -> bool:
        """Statically true if every query sees at least its own position's key
        (only causal/window restrictions, and every query position is a key)."""
        if self.restricts_beyond("causal", "window"):     # a bias may hold -inf, ids may differ
            return False
        off = self.offset(tq, tk)
        return 0 <= off and off + tq <= tk

    def offset(self, tq: int, tk: int):
        if self.q_offset_array is not None:
            return self.q_offset_array
        return tk - tq if self.q_offset is None else self.q_offset

    def static_key_range(self, q_start, q_stop, tq: int, tk: int):
        """Keys [lo, hi) that queries [q_start, q_stop) can possibly see, from causality and
        the window (a traced offset: all keys). Python ints in, ints out; traced query
        bounds (a kernel's loop index) give traced bounds."""
        if self.has_dynamic_offset:
            return 0, tk
        traced = isinstance(q_start, jax.Array) or isinstance(q_stop, jax.Array)
        clip = jnp.clip if traced else (lambda x, a, b: min(max(x, a), b))
        off = self.offset(tq, tk)
        lo, hi = 0, tk
        if self.causal:
            hi = clip(off + q_stop, 0, tk)
        if self.window is not None:
            lo = clip(off + q_start - self.window + 1, 0, tk)
            if not self.causal:
                hi = clip(off + q_stop + self.window - 1, 0, tk)
        return lo, (jnp.maximum if traced else max)(lo, hi)

    def allowed(self, q_start, q_len: int, k_start, k_len: int, tq: int, tk: int):
        """Bool array broadcastable to (B, H, q_len, k_len), or None if nothing is masked."""
        qpos = self.offset(tq, tk) + q_start + jnp.arange(q_len)[:, None]
        kpos = k_start + jnp.arange(k_len)[None, :]
        out = None

        def both(a, b):
            return b if a is None else jnp.logical_and(a, b)

        if self.causal:
            out = both(out, (kpos <= qpos)[None, None])
        if self.window is not None:
            near = (qpos - kpos < self.window) if self.causal else (jnp.abs(qpos - kpos) < self.window)
            out = both(out, near[None, None])
        if self.kv_valid is not None:
            kv = jax.lax.dynamic_slice_in_dim(self.kv_valid, k_start, k_len, axis=1)
            out = both(out, kv[:, None, None, :])
        if self.q_valid is not None:
            qv = jax.lax.dynamic_slice_in_dim(self.q_valid, q_start, q_len, axis=1)
            out = both(out, qv[:, None, :, None])
        if self.q_segment_ids is not None:
            kv_ids = self.q_segment_ids if self.kv_segment_ids is None else self.kv_segment_ids
            qs = jax.lax.dynamic_slice_in_dim(self.q_segment_ids, q_start, q_len, axis=1)
            ks = jax.lax.dynamic_slice_in_dim(kv_ids, k_start, k_len, axis=1)
            out = both(out, qs[:, None, :, None] == ks[:, None, None, :])
        if self.allowed_pairs is not None:
            out = both(out, _slice_last2(self.allowed_pairs, q_start, q_len, k_start, k_len))
        return out

    def bias_block(self, q_start, q_len: int, k_start, k_len: int):
        if self.bias is None:
            return None
        return _slice_last2(self.bias, q_start, q_len, k_start, k_len)

    def check(self, batch: int, heads: int, tq: int, tk: int) -> None:
        """Raise a ValueError that names the field if a mask array has the wrong shape."""
        def need(name, arr, shape):
            if arr is not None and tuple(arr.shape) != shape:
                raise ValueError(f"mask.{name} has shape {tuple(arr.shape)}; expected {shape} "
                                 f"(batch={batch}, {'Tq' if 'q_' in name else 'Tk'}=...)")
        need("kv_valid", self.kv_valid, (batch, tk))
        need("q_valid", self.q_valid, (batch, tq))
        need("q_segment_ids", self.q_segment_ids, (batch, tq))
        if self.kv_segment_ids is not None:
            if self.q_segment_ids is None:
                raise ValueError("mask.kv_segment_ids needs q_segment_ids too; use segments(q_ids, kv_ids)")
            need("kv_segment_ids", self.kv_segment_ids, (batch, tk))
        elif self.q_segment_ids is not None and tq != tk:
            raise ValueError(f"segments(q_ids) alone needs Tq == Tk (got {tq} vs {tk}); "
                             "pass kv_ids for cross-attention or decoding")
        for name in ("bias", "allowed_pairs"):
            arr = getattr(self, name)
            if arr is None:
                continue
            full = (batch, heads, tq, tk)
            ok = arr.ndim == 4 and all(a in (1, b) for a, b in zip(arr.shape, full))
            if not ok:
                raise ValueError(f"mask.{name} has shape {tuple(arr.shape)}; expected a shape "
                                 f"broadcastable to (batch, heads, Tq, Tk) = {full}, with 4 axes")
        if self.window is not None and self.window < 1:
            raise ValueError(f"sliding_window size must be >= 1, got {self.window}")


def _slice_last2(arr, q_start, q_len, k_start, k_len):
    if arr.shape[-2] != 1:
        arr = jax.lax.dynamic_slice_in_dim(arr, q_start, q_len, axis=arr.ndim - 2)
    if arr.shape[-1] != 1:
        arr = jax.lax.dynamic_slice_in_dim(arr, k_start, k_len, axis=arr.ndim - 1)
    return arr


# ---------------------------------------------------------------- constructors
def causal(offset: int | Array | None = None) -> Mask:
    """Query i sees keys at positions <= offset + i (offset defaults to Tk - Tq)."""
    if offset is None or isinstance(offset, (int, np.integer)):
        return Mask(causal=True, q_offset=None if offset is None else int(offset))
    return Mask(causal=True, q_offset_array=jnp.asarray(offset))


def sliding_window(size: int) -> Mask:
    """Keys fewer than `size` positions away (combine with causal() for a causal window)."""
    return Mask(window=int(size))


def padding(kv_valid: Array | None = None, q_valid: Array | None = None) -> Mask:
    """Boolean validity per key (B, Tk) and/or per query (B, Tq). Invalid queries output zeros."""
    return Mask(kv_valid=None if kv_valid is None else jnp.asarray(kv_valid, bool),
                q_valid=None if q_valid is None else jnp.asarray(q_valid, bool))


def lengths(kv_lengths: Array, max_len: int) -> Mask:
    """Padding mask from per-example key lengths."""
    return padding(kv_valid=jnp.arange(max_len)[None, :] < jnp.asarray(kv_lengths)[:, None])


def segments(q_ids: Array, kv_ids: Array | None = None) -> Mask:
    """Packed sequences: attend only within the same document id."""
    return Mask(q_segment_ids=jnp.asarray(q_ids),
                kv_segment_ids=None if kv_ids is None else jnp.asarray(kv_ids))


def bias(values: Array) -> Mask:
    """An additive score bias, broadcastable to (B, H, Tq, Tk)."""
    values = jnp.asarray(values)
    if values.ndim < 4:
        values = values.reshape((1,) * (4 - values.ndim) + values.shape)
    return Mask(bias=values)


def explicit(allowed: Array) -> Mask:
    """A dense boolean mask, broadcastable to (B, H, Tq, Tk)."""
    allowed = jnp.asarray(allowed, bool)
    if allowed.ndim < 4:
        allowed = allowed.reshape((1,) * (4 - allowed.ndim) + allowed.shape)
    return Mask(allowed_pairs=allowed)


def alibi_slopes(num_heads: int) -> np.ndarray:
    """Press et al. 2022 geometric slopes, 2^(-8h/H)."""
    return np.array([2.0 ** (-8.0 * (h + 1) / num_heads) for h in range(num_heads)], np.float32)


def alibi(num_heads: int, tq: int, tk: int, offset: int | None = None) -> Mask:
    """ALiBi as an additive bias: -slope_h * (query position - key position)."""
    off = tk - tq if offset is None else offset
    dist = (off + jnp.arange(tq))[:, None] - jnp.arange(tk)[None, :]
    return bias(-jnp.asarray(alibi_slopes(num_heads))[:, None, None] * jnp.abs(dist)[None])


def as_mask(mask: Mask | None) -> Mask:
    if mask is None:
        return Mask()
    if not isinstance(mask, Mask):
        raise TypeError("mask must be an energy_attn Mask (e.g. ea.causal(), ea.padding(...)); "
                        f"got {type(mask).__name__}. Wrap a dense boolean array with ea.explicit(...)")
    return mask
