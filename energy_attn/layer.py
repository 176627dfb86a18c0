"""The attention layer: projections + RoPE around `ea.attend`.

    layer = EnergyAttention(d_model=256, num_heads=8, energy="softmax", rngs=nnx.Rngs(0))
    y = layer(x, mask=ea.causal())                        # self-attention
    y = layer(x, context=states)                          # cross-attention (no RoPE)
    cache = layer.init_cache(batch, max_len)
    y, cache = layer(prompt, cache=cache)                 # prefill, causal implied
    y, cache = layer(next_token, cache=cache)             # one decode step

The layer never computes attention itself: it only shapes q, k, v and hands
them to `ea.attend(energy, ...)`, i.e. to ∂F/∂ζ of the chosen energy.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import jax.numpy as jnp
from flax import nnx

from .contract import attend
from .kv_cache import KVCache
from .masks import Mask
from .registry import get_energy
from .rope import apply_rope
from .sequence_sharding import SequenceSharding, active, attend_sharded


class EnergyAttention(nnx.Module):
    """Multi-head (optionally grouped-query) attention defined by a scalar energy.

    energy: a registered name ("softmax", ...) or any function
        `energy(q, k, v, zeta, *, mask, **params) -> scalar`.
    energy_params: extra keyword arguments for the energy (e.g. {"beta": 0.5}).
    num_kv_heads: K/V heads for grouped-query attention (default num_heads).
    head_dim / value_dim: widths of q·k and of v per head (default d_model // num_heads).
    context_dim: width of `context` for cross-attention (default d_model).
    sequence_sharding: split self-attention's sequence over a mesh axis and reduce the
        energy across devices (energy_attn.sequence_sharding); None: one device.
    """

    def __init__(self, d_model: int, num_heads: int, *, num_kv_heads: int | None = None,
                 head_dim: int | None = None, value_dim: int | None = None,
                 context_dim: int | None = None, energy: str | Callable = "softmax",
                 energy_params: dict | None = None, use_rope: bool = True,
                 rope_base: float = 10000.0, use_bias: bool = False, dtype=jnp.float32,
                 param_dtype=jnp.float32, sequence_sharding: SequenceSharding | None = None,
                 rngs: nnx.Rngs):
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_kv_heads < 1 or num_heads % num_kv_heads:
            raise ValueError(f"num_heads={num_heads} must be a multiple of num_kv_heads={num_kv_heads} "
                             "(each group of query heads shares one K/V head)")
        if head_dim is None:
            if d_model % num_heads:
                raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}; "
                                 "pass head_dim explicitly")
            head_dim = d_model // num_heads
        if use_rope and head_dim % 2:
            raise ValueError(f"RoPE rotates pairs of features, so head_dim must be even; got "
                             f"head_dim={head_dim} (or pass use_rope=False)")
        # Look the energy up now, so a typo fails at construction with the registry's hint.
        self.energy = get_energy(energy)
        # nnx.data: array-valued params (e.g. a per-head β) are data, strings stay static.
        self.energy_params = nnx.data(dict(energy_params or {}))

        self.d_model, self.num_heads, self.num_kv_heads = d_model, num_heads, num_kv_heads
        self.head_dim = head_dim
        self.value_dim = head_dim if value_dim is None else value_dim
        self.context_dim = d_model if context_dim is None else context_dim
        self.use_rope, self.rope_base, self.dtype = use_rope, rope_base, dtype
        self.sequence_sharding = active(sequence_sharding)
        self.attention_recorder = None     # set by ea.record_attention while pictures are taken

        linear = partial(nnx.Linear, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.q_proj = linear(d_model, num_heads * head_dim)
        self.k_proj = linear(self.context_dim, num_kv_heads * head_dim)
        self.v_proj = linear(self.context_dim, num_kv_heads * self.value_dim)
        self.out_proj = linear(num_heads * self.value_dim, d_model)

    def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
        """An empty KV cache for `max_len` positions (keys are stored after RoPE)."""
        return KVCache.zeros(batch, max_len, self.num_kv_heads, self.head_dim, self.value_dim,
                             self.dtype if dtype is None else dtype)

    def __call__(self, x, *, context=None, mask: Mask | None = None, positions=None,
                 cache: KVCache | None = None, decode: bool = False):
        """x: (B, T, d_model) -> (B, T, d_model), or (out, new_cache) when `cache` is given.

        context: (B, Tc, context_dim) for cross-attention; keys/values come from it
            and no RoPE is applied (neither side has positions in a common frame).
        mask: an energy_attn Mask, passed through as is: the caller decides causality.
            With a cache, causality from the cache index is added automatically, and
            `mask` may add constraints over the whole buffer (kv_valid: (B, max_len)).
        positions: (T,) or (B, T) token positions for RoPE; default arange(T), or
            index + arange(T) with a cache. Ignored when no RoPE is applied.
        decode: asserts that this is an incremental step, i.e. that `cache` is given.
        """
        _check_width("x", x, "d_model", self.d_model)
        if decode and cache is None:
            raise ValueError("decode=True needs a cache: pass cache=layer.init_cache(batch, max_len)")
        if context is not None:
            if cache is not None:
                raise ValueError("a KV cache is for causal self-attention; cross-attention "
                                 "(context=...) recomputes its keys from the context instead")
            _check_width("context", context, "context_dim", self.context_dim)
        batch, length = x.shape[:2]
        kv_input = x if context is None else context

        fold = self.sequence_sharding is None    # a sharded T stays its own axis
        q = self._split_heads(linear_over_tokens(self.q_proj, x, fold), self.num_heads, self.head_dim)
        k = self._split_heads(linear_over_tokens(self.k_proj, kv_input, fold), self.num_kv_heads, self.head_dim)
        v = self._split_heads(linear_over_tokens(self.v_proj, kv_input, fold), self.num_kv_heads, self.value_dim)

        if self.use_rope and context is None:
            if positions is None:
                start = 0 if cache is None else cache.index
                positions = start + jnp.arange(length)
            q = apply_rope(q, positions, self.rope_base)
            k = apply_rope(k, positions, self.rope_base)

        if cache is not None:
            mask = cache.attention_mask(length) & mask   # computed before the index moves
            cache = cache.append(k, v)
            k, v = cache.k, cache.v

        if self.attention_recorder is not None:
            self.attention_recorder.add(self.energy, q, k, mask=mask, params=dict(self.energy_params),
                                        cross=context is not None)
        # Only self-attention over the whole sequence is sharded; decoding runs on one device.
        sharded = context is None and cache is None
        out = self.attend_heads(q, k, v, mask, sharded=sharded)
        out = linear_over_tokens(self.out_proj, out.reshape(batch, length, self.num_heads * self.value_dim), fold)
        return out if cache is None else (out, cache)

    def attend_heads(self, q, k, v, mask, *, sharded: bool = True):
        """(B, Tq, H, Dk), (B, Tk, H_kv, Dk), (B, Tk, H_kv, Dv) -> (B, Tq, H, Dv): ∂F/∂ζ of the energy.
        With `self.sequence_sharding` (and `sharded`) the sequence is split over devices
        and the energy is reduced across them (energy_attn.tree)."""
        if sharded and self.sequence_sharding is not None:
            return attend_sharded(self.energy, q, k, v, mask, self.sequence_sharding,
                                  dict(self.energy_params))
        return attend(self.energy, q, k, v, mask=mask, **self.energy_params)

    @staticmethod
    def _split_heads(x, num_heads: int, width: int):
        return x.reshape(*x.shape[:-1], num_heads, width)


def linear_over_tokens(linear: nnx.Linear, x, fold: bool = True):
    """linear(x) for x of shape (..., T, d_in), computed as one (N, d_in) matrix product when
    `fold`. XLA:CPU computes the weight gradient of a 3-D input through a transposed copy of
    the activations, which cost a fifth of a small model's train step; the 2-D form does not.
    Leave `fold` off when T is sharded across devices: merging it into the rows would move
    data between them."""
    if not fold or x.ndim <= 2:
        return linear(x)
    return linear(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)


def _check_width(name: str, x, width_name: str, width: int):
    if getattr(x, "ndim", None) != 3 or x.shape[-1] != width:
        raise ValueError(f"{name} must have shape (B, T, {width_name}={width}); got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
