"""Mamba layers, the Zamba hybrid's backbone: Mamba-1 (selective scan) and
Mamba-2 (SSD, chunked): the mixers and the residual block.

    mixer = Mamba1(d_model=128, rngs=nnx.Rngs(0))          # or Mamba2(..., head_dim=32)
    y = mixer(x)                                            # (B, T, d) -> (B, T, d)
    y = mixer(x, segment_ids=ids)                           # packed rows: state resets per document
    cache = mixer.init_cache(batch)
    y, cache = mixer(prompt, cache=cache)                   # prefill (chunked scan from the cached state)
    y, cache = mixer(next_token, cache=cache)               # one recurrent step

    block = MambaBlock(cfg, rngs=nnx.Rngs(0))               # x + mixer(norm(x)); cfg: a ZambaConfig
                                                            # (mixer from cfg.ssm, an SSMConfig)

The scans (Mamba-1's selective scan, Mamba-2's SSD, one-token steps) and the causal
conv are pure functions in models/ssm_scan.py, all in float32 whatever the compute
dtype. Short chunks are fastest for Mamba-2 on CPU: a train step of
configs/zamba_small.yaml takes ~0.85x the time at chunk_size 16 that it takes at 64
(T = 2k, batch 1).

Built with a `SequenceSharding` (the trainer's mesh.seq > 1), the conv and the scan
run sharded, with a carry exchange between devices (models/mamba_sharding.py).

Packed documents: given `segment_ids`, the SSM state and the conv window reset
at every document start, so a packed row gives exactly what the documents give
one at a time (Mamba-1: the decay is zeroed at a start; Mamba-2: the decay mask
also requires "no start between s and t"; conv: taps reaching back across a
start are dropped). Without segment_ids the state crosses documents.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from energy_attn.layer import linear_over_tokens
from energy_attn.sequence_sharding import SequenceSharding, active

from . import mamba_sharding
from .config import ModelConfig, one_of
from .layers import RMSNorm, compute_dtype
from .remat import recompute_in_backward
from .ssm_scan import (causal_conv, segment_starts, selective_scan, selective_step, ssd_scan,
                       ssd_step)

Array = Any
SSM_KINDS = ("mamba1", "mamba2")


@dataclass
class SSMConfig:
    """Mamba layers (the Zamba-like hybrid's backbone): `model.ssm` in a config."""
    kind: str = "mamba1"                    # "mamba1" (selective scan) or "mamba2" (SSD, chunked)
    state_dim: int = 16                     # N: SSM state size per channel
    expand: int = 2                         # D_inner = expand * d_model
    conv_width: int = 4                     # depthwise causal conv kernel
    chunk_size: int = 64                    # scan chunk length (memory vs parallelism)
    head_dim: int = 32                      # mamba2 only: P, channels per SSD head (must divide D_inner)
    remat: bool = True                      # recompute the mixer's activations in the backward pass, as
                                            # Mamba's own kernels do: a layer keeps its input, not ~20
                                            # D_inner-wide tensors; costs about one more forward

    def errors(self, d_model: int) -> list[str]:
        """One message per invalid option, for layers of width `d_model`."""
        errors = [one_of("model.ssm.kind", self.kind, SSM_KINDS)]
        for key in ("state_dim", "expand", "conv_width", "chunk_size", "head_dim"):
            if getattr(self, key) < 1:
                errors.append(f"model.ssm.{key} must be >= 1, got {getattr(self, key)}")
        if self.kind == "mamba2" and self.head_dim >= 1 and (self.expand * d_model) % self.head_dim:
            errors.append(f"model.ssm.head_dim={self.head_dim} must divide D_inner = model.ssm.expand * "
                          f"model.d_model = {self.expand * d_model} (Mamba-2 splits D_inner into heads)")
        return [e for e in errors if e]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MambaCache:
    """Decoding state of one Mamba layer."""
    conv: Array   # (B, conv_width - 1, channels): the last conv inputs
    ssm: Array    # (B, D_inner, N) for Mamba-1, (B, H, P, N) for Mamba-2; float32


def _dt_bias(key, shape, dt_min=1e-3, dt_max=0.1, floor=1e-4):
    """Mamba's Δ bias: Δ log-uniform in [dt_min, dt_max], stored as softplus⁻¹(Δ)."""
    u = jax.random.uniform(key, shape)
    dt = jnp.maximum(jnp.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)), floor)
    return dt + jnp.log(-jnp.expm1(-dt))


def _uniform(key, shape, bound):
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


class _Mixer(nnx.Module):
    """What Mamba-1 and Mamba-2 share: in_proj, the depthwise conv, out_proj."""

    def _common(self, d_model, inner, in_width, conv_channels, conv_width, chunk_size, dtype, rngs,
                sequence_sharding):
        self.d_model, self.inner, self.conv_width, self.chunk_size = d_model, inner, conv_width, chunk_size
        self.dtype = dtype
        self.sequence_sharding = active(sequence_sharding)
        linear = lambda i, o: nnx.Linear(i, o, use_bias=False, dtype=dtype, rngs=rngs)  # noqa: E731
        self.in_proj = linear(d_model, in_width)
        bound = 1 / math.sqrt(conv_width)        # PyTorch's default for a depthwise Conv1d
        self.conv_w = nnx.Param(_uniform(rngs.params(), (conv_width, conv_channels), bound))
        self.conv_b = nnx.Param(_uniform(rngs.params(), (conv_channels,), bound))
        self.out_proj = linear(inner, d_model)

    def _linear(self, linear, x):
        # (B·T, d) matrices: faster weight gradients on CPU (energy_attn.layer.linear_over_tokens)
        return linear_over_tokens(linear, x, fold=self.sequence_sharding is None)

    def _conv(self, u, cache, starts, spec):
        if spec is not None:
            y, history = mamba_sharding.sharded_causal_conv(u, self.conv_w[...], self.conv_b[...], starts, spec), None
        else:
            y, history = causal_conv(u, self.conv_w[...], self.conv_b[...],
                                     history=None if cache is None else cache.conv, starts=starts)
        return jax.nn.silu(y), history

    def _scan(self, scan, x, dt, A, B, C, *, cache, starts, spec):
        if spec is not None:
            return mamba_sharding.sharded_scan(scan, x, dt, A, B, C, self.D[...], starts=starts, spec=spec,
                                chunk_size=self.chunk_size), None
        return scan(x, dt, A, B, C, self.D[...], h0=None if cache is None else cache.ssm,
                    starts=starts, chunk_size=self.chunk_size)

    def _check(self, x, segment_ids, cache):
        """Validate; return (document starts or None, the sequence sharding or None)."""
        if x.ndim != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must have shape (B, T, d_model={self.d_model}); got {x.shape}")
        if cache is not None and segment_ids is not None:
            raise ValueError("segment_ids are for packed training rows; decode one document per "
                             "row with the cache instead")
        spec = None if cache is not None else self.sequence_sharding   # decoding: one device
        if spec is None:
            return (None if segment_ids is None else segment_starts(segment_ids)), None
        mamba_sharding.check_sharded_length(x.shape[1], self.conv_width, spec)
        return (None if segment_ids is None else mamba_sharding.sharded_segment_starts(segment_ids, spec)), spec


class Mamba1(_Mixer):
    """Mamba-1 mixer (Gu & Dao 2023): in_proj -> (x, z); x -> causal conv -> SiLU ->
    selective SSM (input-dependent Δ, B, C; diagonal A = -exp(A_log), S4D-real init
    A_n = n + 1; D skip) -> y * SiLU(z) -> out_proj."""

    def __init__(self, d_model: int, *, state_dim: int = 16, expand: int = 2, conv_width: int = 4,
                 chunk_size: int = 64, dt_rank: int | None = None, dtype=jnp.float32,
                 sequence_sharding: SequenceSharding | None = None, rngs: nnx.Rngs):
        inner = expand * d_model
        self.state_dim = state_dim
        self.dt_rank = math.ceil(d_model / 16) if dt_rank is None else dt_rank
        self._common(d_model, inner, 2 * inner, inner, conv_width, chunk_size, dtype, rngs,
                     sequence_sharding)
        self.x_proj = nnx.Linear(inner, self.dt_rank + 2 * state_dim, use_bias=False, dtype=dtype,
                                 rngs=rngs)
        self.dt_proj = nnx.Linear(
            self.dt_rank, inner, dtype=dtype, rngs=rngs,
            kernel_init=lambda k, s, d=jnp.float32: _uniform(k, s, self.dt_rank ** -0.5),
            bias_init=lambda k, s, d=jnp.float32: _dt_bias(k, s))
        self.A_log = nnx.Param(jnp.log(jnp.broadcast_to(jnp.arange(1, state_dim + 1, dtype=jnp.float32),
                                                        (inner, state_dim))))
        self.D = nnx.Param(jnp.ones((inner,), jnp.float32))

    def init_cache(self, batch: int) -> MambaCache:
        return MambaCache(conv=jnp.zeros((batch, self.conv_width - 1, self.inner), self.dtype),
                          ssm=jnp.zeros((batch, self.inner, self.state_dim), jnp.float32))

    def __call__(self, x, *, segment_ids=None, cache: MambaCache | None = None):
        """x (B, T, d) -> (B, T, d), or (y, new cache) when `cache` is given."""
        starts, spec = self._check(x, segment_ids, cache)
        u, z = jnp.split(self._linear(self.in_proj, x), 2, axis=-1)
        u, history = self._conv(u, cache, starts, spec)
        dt, B, C = jnp.split(self._linear(self.x_proj, u), [self.dt_rank, self.dt_rank + self.state_dim], axis=-1)
        f32 = lambda t: t.astype(jnp.float32)                  # noqa: E731  (scan in float32)
        dt = jax.nn.softplus(f32(self._linear(self.dt_proj, dt)))
        A = -jnp.exp(self.A_log[...])
        if cache is not None and x.shape[1] == 1:
            y, h = selective_step(cache.ssm, f32(u[:, 0]), dt[:, 0], A, f32(B[:, 0]), f32(C[:, 0]),
                                  self.D[...])
            y = y[:, None]
        else:
            y, h = self._scan(selective_scan, f32(u), dt, A, f32(B), f32(C), cache=cache,
                              starts=starts, spec=spec)
        out = self._linear(self.out_proj, y.astype(self.dtype) * jax.nn.silu(z))
        return out if cache is None else (out, MambaCache(conv=history, ssm=h))


class Mamba2(_Mixer):
    """Mamba-2 mixer (Dao & Gu 2024): in_proj -> (z, xBC, Δ); xBC -> causal conv -> SiLU;
    SSD with A = a_h·I per head of width head_dim (one B/C group); y + D x; gated
    RMSNorm(y * SiLU(z)) -> out_proj."""

    def __init__(self, d_model: int, *, state_dim: int = 16, expand: int = 2, conv_width: int = 4,
                 chunk_size: int = 64, head_dim: int = 32, dtype=jnp.float32,
                 sequence_sharding: SequenceSharding | None = None, rngs: nnx.Rngs):
        inner = expand * d_model
        if inner % head_dim:
            raise ValueError(f"model.ssm.head_dim={head_dim} must divide D_inner = expand * d_model "
                             f"= {inner} (Mamba-2 splits D_inner into heads)")
        self.state_dim, self.head_dim, self.heads = state_dim, head_dim, inner // head_dim
        conv_channels = inner + 2 * state_dim
        self._common(d_model, inner, inner + conv_channels + self.heads, conv_channels, conv_width,
                     chunk_size, dtype, rngs, sequence_sharding)
        self.dt_bias = nnx.Param(_dt_bias(rngs.params(), (self.heads,)))
        self.A_log = nnx.Param(jnp.log(jax.random.uniform(rngs.params(), (self.heads,), jnp.float32, 1, 16)))
        self.D = nnx.Param(jnp.ones((self.heads,), jnp.float32))
        self.norm = RMSNorm(inner, eps=1e-5)

    def init_cache(self, batch: int) -> MambaCache:
        return MambaCache(conv=jnp.zeros((batch, self.conv_width - 1, self.inner + 2 * self.state_dim),
                                         self.dtype),
                          ssm=jnp.zeros((batch, self.heads, self.head_dim, self.state_dim), jnp.float32))

    def __call__(self, x, *, segment_ids=None, cache: MambaCache | None = None):
        """x (B, T, d) -> (B, T, d), or (y, new cache) when `cache` is given."""
        starts, spec = self._check(x, segment_ids, cache)
        batch, length = x.shape[:2]
        z, xbc, dt = jnp.split(self._linear(self.in_proj, x), [self.inner, 2 * self.inner + 2 * self.state_dim],
                               axis=-1)
        xbc, history = self._conv(xbc, cache, starts, spec)
        u, B, C = jnp.split(xbc.astype(jnp.float32), [self.inner, self.inner + self.state_dim], axis=-1)
        u = u.reshape(batch, length, self.heads, self.head_dim)
        dt = jax.nn.softplus(dt.astype(jnp.float32) + self.dt_bias[...])
        a = -jnp.exp(self.A_log[...])
        if cache is not None and length == 1:
            y, h = ssd_step(cache.ssm, u[:, 0], dt[:, 0], a, B[:, 0], C[:, 0], self.D[...])
            y = y[:, None]
        else:
            y, h = self._scan(ssd_scan, u, dt, a, B, C, cache=cache, starts=starts, spec=spec)
        y = self.norm(y.reshape(batch, length, self.inner).astype(self.dtype) * jax.nn.silu(z))
        out = self._linear(self.out_proj, y)
        return out if cache is None else (out, MambaCache(conv=history, ssm=h))


def mamba_from_config(cfg: ModelConfig, *, rngs: nnx.Rngs,
                      sequence_sharding: SequenceSharding | None = None) -> Mamba1 | Mamba2:
    """The mixer named by cfg.ssm.kind, sized by cfg.d_model and cfg.ssm (cfg: a config
    with an `ssm` section, i.e. a models.zamba.ZambaConfig)."""
    s, dtype = cfg.ssm, compute_dtype(cfg)
    common = dict(state_dim=s.state_dim, expand=s.expand, conv_width=s.conv_width,
                  chunk_size=s.chunk_size, dtype=dtype, sequence_sharding=sequence_sharding, rngs=rngs)
    if s.kind == "mamba1":
        return Mamba1(cfg.d_model, **common)
    if s.kind == "mamba2":
        return Mamba2(cfg.d_model, head_dim=s.head_dim, **common)
    raise ValueError(f"model.ssm.kind={s.kind!r} is not supported; use one of {', '.join(SSM_KINDS)}")


class MambaBlock(nnx.Module):
    """Pre-norm residual Mamba layer: x + drop(mixer(norm(x + extra))). With
    cfg.ssm.remat (the default) training recomputes the mixer in the backward pass
    (models/remat.py), so a layer stores its input rather than its activations.
    `extra` is what the Zamba hybrid adds to this layer's input (the projected
    shared-block output); the residual stream itself does not receive it."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, sequence_sharding: SequenceSharding | None = None):
        self.norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mixer = mamba_from_config(cfg, rngs=rngs, sequence_sharding=sequence_sharding)
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)
        self.remat = cfg.ssm.remat

    def init_cache(self, batch: int) -> MambaCache:
        return self.mixer.init_cache(batch)

    def __call__(self, x, *, extra=None, segment_ids=None, cache: MambaCache | None = None,
                 deterministic: bool = True):
        h = self.norm(x if extra is None else x + extra)
        if self.remat and cache is None:
            # Training: keep only the mixer's input and weights; the backward re-runs it.
            graphdef, params = nnx.split(self.mixer)
            h = recompute_in_backward(lambda p, h, ids: nnx.merge(graphdef, p)(h, segment_ids=ids))(
                params, h, segment_ids)
        else:
            h = self.mixer(h, segment_ids=segment_ids, cache=cache)
        if cache is not None:
            h, cache = h
        x = x + self.dropout(h, deterministic=deterministic)
        return x if cache is None else (x, cache)
