"""A fixed-size key/value cache for incremental decoding.

The buffers have a static length `max_len`, and `index` (how many positions are
filled) is an array, so one compiled decode step serves every position: under
`jax.jit` the index is traced, never baked into the program.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from .masks import Mask, causal, padding

Array = Any


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    k: Array        # (B, max_len, H_kv, Dk), keys already rotated by RoPE
    v: Array        # (B, max_len, H_kv, Dv)
    index: Array    # int32 scalar: positions [0, index) are filled

    @classmethod
    def zeros(cls, batch: int, max_len: int, num_kv_heads: int, key_dim: int, value_dim: int,
              dtype=jnp.float32) -> "KVCache":
        return cls(k=jnp.zeros((batch, max_len, num_kv_heads, key_dim), dtype),
                   v=jnp.zeros((batch, max_len, num_kv_heads, value_dim), dtype),
                   index=jnp.zeros((), jnp.int32))

    @property
    def max_len(self) -> int:
        return self.k.shape[1]

    @staticmethod
    def check_room(index, num_new: int, max_len: int) -> None:
        """ValueError unless `num_new` positions fit after `index` in a buffer of `max_len`
        (checked only when `index` is concrete: under jit it is traced). Any decode buffer
        with a write index uses it (the energy transformer's token cache too)."""
        if num_new > max_len:
            raise ValueError(f"cannot write {num_new} tokens into a cache of max_len {max_len}")
        if not isinstance(index, jax.core.Tracer) and int(index) + num_new > max_len:
            raise ValueError(f"cache overflow: {int(index)} positions filled + {num_new} new "
                             f"> max_len {max_len}; create the cache with a larger max_len")

    def append(self, k_new, v_new) -> "KVCache":
        """Write T new keys/values at `index` and advance it by T.

        Overflow is caught only when `index` is concrete. Under jit it is traced
        and cannot be checked: `dynamic_update_slice` then clamps the write to the
        end of the buffer and silently overwrites the last positions.
        """
        num_new = k_new.shape[1]
        self.check_room(self.index, num_new, self.max_len)
        start = (0, self.index, 0, 0)
        k = jax.lax.dynamic_update_slice(self.k, k_new.astype(self.k.dtype), start)
        v = jax.lax.dynamic_update_slice(self.v, v_new.astype(self.v.dtype), start)
        return KVCache(k=k, v=v, index=self.index + num_new)

    def attention_mask(self, num_new: int) -> Mask:
        """Mask for the `num_new` queries just written: causal from position `index`,
        and only the filled part of the buffer. (Call on the cache *before* append.)

        Causality alone already hides the unfilled tail; the padding repeats it,
        so stale or zero slots are excluded by construction, not by coincidence.
        """
        filled = jnp.arange(self.max_len) < self.index + num_new
        batch = self.k.shape[0]
        return causal(self.index) & padding(kv_valid=jnp.broadcast_to(filled, (batch, self.max_len)))
