"""Building blocks shared by every model in the zoo: RMSNorm, MLP, and the
pre-norm residual Block (attention + MLP).

    block = Block(cfg, rngs=nnx.Rngs(0))
    x = block(x, mask=ea.causal())                 # (B, T, d_model) -> (B, T, d_model)
    x, cache = block(x, cache=cache)               # incremental decoding

The attention is always an `energy_attn.EnergyAttention`: the models shape
inputs, the energy defines the attention.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from energy_attn import EnergyAttention, KVCache
from energy_attn.masks import Mask

from .config import ModelConfig

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(cfg: ModelConfig):
    """The activation dtype named by `cfg.compute_dtype` (parameters stay float32)."""
    if cfg.compute_dtype not in _DTYPES:
        raise ValueError(f"model.compute_dtype={cfg.compute_dtype!r} is not supported; "
                         f"use one of {sorted(_DTYPES)}")
    return _DTYPES[cfg.compute_dtype]


def mlp_hidden(kind: str, d_model: int, mlp_ratio: float) -> int:
    """Hidden width: ratio * d_model; SwiGLU has three matrices instead of two, so
    it takes 2/3 of that (same parameter count), rounded up to a multiple of 8."""
    if kind == "gelu":
        return int(mlp_ratio * d_model)
    if kind == "swiglu":
        return 8 * math.ceil(round(2 / 3 * mlp_ratio * d_model) / 8)
    raise ValueError(f"model.mlp={kind!r} is not supported; use 'swiglu' or 'gelu'")


class RMSNorm(nnx.Module):
    """x / rms(x) * scale, computed in float32 (bf16 squares lose too many digits),
    returned in the input dtype."""

    def __init__(self, dim: int, *, eps: float = 1e-6):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...]).astype(x.dtype)


class MLP(nnx.Module):
    """SwiGLU (down(silu(gate x) * up x)) or GELU (down(gelu(up x))), no biases.

    `fold_tokens`: multiply (B, T, d) inputs as one (B·T, d) matrix, as
    energy_attn.layer.linear_over_tokens does (the MLP's fold took the shakespeare
    recipe's step from 44 to 35 ms on CPU). Off when T is sharded across devices."""

    def __init__(self, d_model: int, *, kind: str = "swiglu", mlp_ratio: float = 4.0,
                 dtype=jnp.float32, fold_tokens: bool = True, rngs: nnx.Rngs):
        self.kind, self.fold_tokens = kind, fold_tokens
        hidden = mlp_hidden(kind, d_model, mlp_ratio)
        linear = lambda i, o: nnx.Linear(i, o, use_bias=False, dtype=dtype, rngs=rngs)  # noqa: E731
        self.up = linear(d_model, hidden)
        self.gate = linear(d_model, hidden) if kind == "swiglu" else None
        self.down = linear(hidden, d_model)

    def __call__(self, x):
        shape = x.shape
        if self.fold_tokens:
            x = x.reshape(-1, shape[-1])
        h = self.up(x)
        h = jax.nn.silu(self.gate(x)) * h if self.kind == "swiglu" else jax.nn.gelu(h)
        return self.down(h).reshape(shape)


def attention_from_config(cfg: ModelConfig, *, rngs: nnx.Rngs, **overrides) -> EnergyAttention:
    """An EnergyAttention with the config's energy, GQA and RoPE settings.
    `overrides` go straight to EnergyAttention (e.g. context_dim, use_rope=False)."""
    a = cfg.attention
    kwargs = dict(num_kv_heads=a.num_kv_heads, energy=a.energy, energy_params=a.energy_params,
                  use_rope=a.rope, rope_base=a.rope_base, dtype=compute_dtype(cfg))
    kwargs.update(overrides)
    return EnergyAttention(cfg.d_model, cfg.num_heads, rngs=rngs, **kwargs)


class Block(nnx.Module):
    """Pre-norm residual block:  x + drop(attn(norm(x)));  x + drop(mlp(norm(x)))."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, **attention_overrides):
        dtype = compute_dtype(cfg)
        self.attn_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = attention_from_config(cfg, rngs=rngs, **attention_overrides)
        self.mlp_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = MLP(cfg.d_model, kind=cfg.mlp, mlp_ratio=cfg.mlp_ratio, dtype=dtype, rngs=rngs,
                       fold_tokens=attention_overrides.get("sequence_sharding") is None)
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

    def __call__(self, x, *, context=None, mask: Mask | None = None, positions=None,
                 cache: KVCache | None = None, deterministic: bool = True):
        """x: (B, T, d_model) -> same, or (out, new_cache) when `cache` is given.
        context/mask/positions/cache are passed to the attention as they are."""
        h = self.attn(self.attn_norm(x), context=context, mask=mask, positions=positions, cache=cache)
        if cache is not None:
            h, cache = h
        x = x + self.dropout(h, deterministic=deterministic)
        x = x + self.dropout(self.mlp(self.mlp_norm(x)), deterministic=deterministic)
        return x if cache is None else (x, cache)
