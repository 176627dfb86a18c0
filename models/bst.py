"""Block-State Transformer (Fathi et al. 2023, arXiv 2306.09539): an SSM sublayer
gives context states for the whole sequence at once (a long convolution); a block
transformer sublayer splits the sequence into blocks of W tokens that attend
causally within the block and cross-attend to the context states. All blocks
run in parallel: there is no recurrence between blocks.

    cfg = BSTConfig(d_model=128, num_layers=4, num_heads=4,
                    bst=BSTLayerConfig(variant="mh", block_len=64))
    model = build_model(cfg, rngs=nnx.Rngs(0))
    logits = model(tokens)                         # (B, T) int -> (B, T, vocab) fp32, any T
    cache = model.init_cache(batch, max_len)       # recurrent: its size does not depend on max_len
    logits, cache = model(prompt, cache=cache)     # then one token at a time (models.generate)

BST layer (pre-norm residuals; x is (B, T, d), blocks are x reshaped to (B·T/W, W, d)):
    c = context_states(ssm(norm(x)))            # (B, T/W, S, d), block k sees positions < kW only
    x = x + self_attn(norm(x), causal within each block)      # RoPE, any registered energy
    x = x + cross_attn(norm(x), context=norm(c))              # no RoPE; all S states visible
    x = x + mlp(norm(x))

SSM: S4D (Gu et al. 2022) per channel, diagonal complex A = -exp(a_re) + i·a_im with
S4D-Lin init (-1/2 + iπn), B = 1, learned C, step Δ log-uniform in [dt_min, dt_max],
zero-order hold, plus a skip D·u and a GELU. Its kernel K[l] = 2·Re Σ_n C̄_n Ā_n^l is
a Vandermonde product. Two ways to apply it (`bst.conv`), the same function:
    chunked (default)  the recurrence, one block at a time: a Toeplitz matmul with the
                       kernel's first W taps inside the block, the N/2 complex modes
                       carried across blocks. The layer reads the SSM only at the end
                       of each block (mh: 1 position, mf: S/F, sh: all W), so only those
                       outputs are formed: O(T·(N + read)) per channel, linear in T.
    fft                the paper's way: the whole kernel (Vandermonde as an outer product
                       over l = q·R + r, memory O(√T) per mode), a causal FFT convolution
                       in float32 padded to 2T, O(T log T), every output formed.
`ssm_conv_reference` is the direct O(T²) convolution both are tested against.

Context states per variant (the paper's §3.2; S = bst.num_context_states). In every
variant block k's states are computed from SSM outputs at positions < kW (the
states are shifted one block forward), and block 0 gets S learned initial states,
so the model is causal. Learned context IDs (one d-vector per state slot) are
added, since cross-attention has no notion of order.
    sh  single-head: one SSM filter; block k attends to the W SSM outputs of block
        k-1 (S = W).
    mh  multi-head: S SSM filters (S kernels per channel); block k attends to the
        last output of block k-1 of each filter: S states from the one position kW-1.
    mf  multi-filter: F = bst.num_filters filters; block k attends to the last S/F
        outputs of block k-1 of each filter, concatenated (S states). F = S gives mh's
        states, F = 1 and S = W gives sh's; the paper's figure describes MF as "the last
        entries from the previous window concatenated into a set of S context states".

Layers: the paper interleaves BST layers with ordinary layers; here every
`bst.bst_every`-th layer (1 = all, the default) is a BST layer and the others are
block transformer layers without the SSM (in-block causal attention + MLP), so the
cost stays O(T·W) in attention and linear (chunked) or O(T log T) (fft) in the SSM:
no layer is O(T²).

Packed documents: segment_ids restrict the in-block self-attention to the document;
the SSM (an LTI convolution) and the context states run across document
boundaries, which the EOS token marks. RoPE positions are block-local (relative
positions inside a block are all RoPE sees), so `positions` is accepted and ignored.

Lengths that are not a multiple of W are padded at the end internally (causality
makes the padding invisible to real positions).

Sequence sharding (the trainer's mesh.seq > 1): attention never leaves a block, so
the block transformer runs locally on each device's whole blocks; the S4D state is
carried across devices (models/bst_sharding.py). Each device must hold whole blocks.

Decoding (`BSTCache`, one `BSTLayerCache` per layer + the position): a BST layer keeps
the S4D state (B, F, d, N/2), the current block's SSM outputs after GELU at the
positions the next context reads, the cross-attention keys/values of the current
block's context states, and a W-slot KV cache for the in-block self-attention whose
index restarts at every block; other layers keep only the W-slot KV cache. One token
costs O((W + S)·d + F·N·d + d²) per layer at any position, plus projecting the S new
context states once per block (O(S·d²), (S/W)·d² per token on average). The cache is
O(W + S + F·N) per channel, independent of max_len. A prompt of T tokens runs the
one-token step T times under `lax.scan`, so decoding equals the parallel forward pass
(to float rounding); dropout is off while decoding.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

import energy_attn as ea
from energy_attn.sequence_sharding import SequenceSharding, active

from . import bst_sharding
from .lm_inputs import check_cache_length, check_lm_inputs
from .config import ModelConfig, one_of
from .layers import MLP, RMSNorm, attention_from_config, compute_dtype
from .registry import register_model
from .s4d import chunked_ssm_outputs, fft_causal_conv, ssm_block_ends

Array = Any
VARIANTS = ("sh", "mh", "mf")
CONVS = ("chunked", "fft")
FULL_CHUNK = 64          # chunk length when the SSM output is wanted at every position


@dataclass
class BSTLayerConfig:
    """The BST layers: `model.bst` in a config."""
    variant: str = "mh"                     # "sh" single-head, "mh" multi-head, "mf" multi-filter
    block_len: int = 64                     # W: tokens per attention block
    state_dim: int = 16                     # N: S4D state size per channel (N/2 complex modes; even)
    num_context_states: int = 4             # S: states each block cross-attends to (mh, mf; sh uses W)
    num_filters: int = 2                    # mf only: SSM filters, each gives the last S/num_filters outputs
    bst_every: int = 1                      # every k-th layer is a BST layer; the rest attend in-block only
    dt_min: float = 1e-3                    # S4D step size Δ, log-uniform in [dt_min, dt_max] at init
    dt_max: float = 1e-1                    # upper end of the Δ initialisation range
    conv: str = "chunked"                   # SSM convolution: "chunked" (the recurrence, one block at a
                                            # time, linear in T) or "fft" (the paper's, O(T log T));
                                            # both give the same result

    def errors(self) -> list[str]:
        """One message per invalid option (and per bad combination)."""
        errors = [one_of("model.bst.variant", self.variant, VARIANTS),
                  one_of("model.bst.conv", self.conv, CONVS)]
        for key in ("block_len", "num_context_states", "num_filters", "bst_every", "state_dim"):
            if getattr(self, key) < 1:
                errors.append(f"model.bst.{key} must be >= 1, got {getattr(self, key)}")
        if self.state_dim % 2:
            errors.append(f"model.bst.state_dim={self.state_dim} must be even (S4D keeps N/2 complex "
                          "modes and their conjugates)")
        if not 0 < self.dt_min <= self.dt_max:
            errors.append(f"model.bst.dt_min={self.dt_min} and dt_max={self.dt_max} must satisfy "
                          "0 < dt_min <= dt_max")
        if self.variant == "mf" and self.num_filters >= 1 and self.num_context_states >= 1:
            if self.num_context_states % self.num_filters:
                errors.append(f"model.bst.num_context_states={self.num_context_states} must be divisible by "
                              f"model.bst.num_filters={self.num_filters} (each filter gives S/F states)")
            elif self.num_context_states // self.num_filters > self.block_len:
                errors.append(f"model.bst.num_context_states/num_filters = "
                              f"{self.num_context_states // self.num_filters} exceeds model.bst.block_len="
                              f"{self.block_len}: a filter can only give the outputs of one block")
        return [e for e in errors if e]


@dataclass
class BSTConfig(ModelConfig):
    """The Block-State Transformer: the shared fields and its layers' own section."""
    name: str = "bst"
    bst: BSTLayerConfig = field(default_factory=BSTLayerConfig)

    own_sections: ClassVar[tuple[str, ...]] = ("bst",)

    def errors(self, *, seq_len: int | None = None, seq_pieces: int = 1) -> list[str]:
        """The shared checks, model.bst, and whether training rows (and their pieces on each
        device, when sequence-sharded) hold whole blocks."""
        errors = super().errors(seq_len=seq_len, seq_pieces=seq_pieces)
        own = self.bst.errors()
        errors += own
        b = self.bst
        if own or seq_len is None:
            return errors
        if seq_len % b.block_len:
            errors.append(f"data.seq_len={seq_len} must be divisible by model.bst.block_len={b.block_len} "
                          "(training rows are split into whole blocks)")
        if seq_pieces > 1:    # sequence-sharded BST (models/bst_sharding.py)
            if b.conv != "chunked":
                errors.append(f"model.bst.conv={b.conv!r} cannot be sequence-sharded; use "
                              "model.bst.conv=chunked (the default) with mesh.seq > 1")
            if (seq_len // seq_pieces) % b.block_len:
                errors.append(f"data.seq_len={seq_len} over the mesh's sequence axis gives pieces of "
                              f"{seq_len // seq_pieces} tokens, not a multiple of model.bst.block_len="
                              f"{b.block_len} (every device must hold whole blocks)")
        return errors


def num_filters(b: BSTLayerConfig) -> int:
    return {"sh": 1, "mh": b.num_context_states, "mf": b.num_filters}[b.variant]


def num_states(b: BSTLayerConfig) -> int:
    return b.block_len if b.variant == "sh" else b.num_context_states


# --------------------------------------------------------------------------- SSM


class DiagonalSSM(nnx.Module):
    """S4D with `filters` independent kernels per channel: (B, T, C) -> (B, T, F, C) fp32.
    conv="chunked" (default) runs the recurrence chunk by chunk, linear in T;
    conv="fft" builds the whole kernel and convolves by FFT, as in the paper. Both
    compute the same function (tests/test_bst.py checks them against each other)."""

    def __init__(self, channels: int, *, state_dim: int, filters: int, dt_min: float,
                 dt_max: float, conv: str = "chunked", rngs: nnx.Rngs):
        modes = state_dim // 2
        shape = (filters, channels, modes)
        self.conv = conv
        u = jax.random.uniform(rngs.params(), (filters, channels, 1))
        self.log_dt = nnx.Param(math.log(dt_min) + u * (math.log(dt_max) - math.log(dt_min)))
        self.log_neg_re_a = nnx.Param(jnp.full(shape, math.log(0.5), jnp.float32))   # S4D-Lin: -1/2
        self.im_a = nnx.Param(jnp.broadcast_to(math.pi * jnp.arange(modes, dtype=jnp.float32), shape))
        # C ~ CN(0, 1): variance 1/2 per real and imaginary part, as in S4D.
        self.c = nnx.Param(jax.random.normal(rngs.params(), (*shape, 2)) * math.sqrt(0.5))
        self.skip = nnx.Param(jax.random.normal(rngs.params(), (filters, channels)))

    def modes(self):
        """(ΔA, w), each (F, C, N/2) complex: the discrete modes λ = e^{ΔA} and the
        output weights w = C·(e^{ΔA} - 1)/A of the zero-order hold with B = 1."""
        a = -jnp.exp(self.log_neg_re_a[...]) + 1j * self.im_a[...]
        dta = jnp.exp(self.log_dt[...]) * a
        return dta, (self.c[..., 0] + 1j * self.c[..., 1]) * (jnp.exp(dta) - 1.0) / a

    def kernel(self, length: int):
        """(F, C, length) float32: K[l] = 2·Re Σ_n w_n e^{ΔA_n l}."""
        dta, c = self.modes()
        # Vandermonde e^{ΔA l} with l = q·R + r as an outer product over (q, r): the
        # (F, C, N/2, T) power table is never materialised.
        r_len = max(1, math.ceil(math.sqrt(length)))
        q_len = math.ceil(length / r_len)
        outer = (c[..., None] * jnp.exp(dta[..., None] * (r_len * jnp.arange(q_len))))   # (F,C,N/2,Q)
        inner = jnp.exp(dta[..., None] * jnp.arange(r_len))                              # (F,C,N/2,R)
        k = 2.0 * jnp.einsum("fcnq,fcnr->fcqr", outer, inner).real
        return k.reshape(*k.shape[:2], q_len * r_len)[..., :length].astype(jnp.float32)

    def __call__(self, u):
        """(B, T, C) -> (B, T, F, C): the output at every position."""
        length = u.shape[1]
        if self.conv == "fft":
            y = fft_causal_conv(u, self.kernel(length))
        else:
            pad = -length % FULL_CHUNK
            y = chunked_ssm_outputs(jnp.pad(u, ((0, 0), (0, pad), (0, 0))), *self.modes(),
                                    chunk=FULL_CHUNK, last=FULL_CHUNK)
            y = y.reshape(y.shape[0], -1, *y.shape[3:])[:, :length]
        return y + u.astype(jnp.float32)[:, :, None, :] * self.skip[...]

    def block_ends(self, u, *, block_len: int, last: int):
        """(B, T, C) -> (B, T/W, last, F, C): the outputs at the last `last` positions of
        each block of W = block_len (T a multiple of W); all the BST layer reads."""
        batch, length, channels = u.shape
        if self.conv == "fft":
            y = self(u).reshape(batch, length // block_len, block_len, *self.skip.shape)
            return y[:, :, block_len - last:]
        return ssm_block_ends(u, *self.modes(), self.skip[...], block_len=block_len, last=last)

    def init_state(self, batch: int):
        """The recurrent state for decoding: (B, F, C, N/2) complex64 zeros."""
        return jnp.zeros((batch, *self.log_neg_re_a.shape), jnp.complex64)

    def step(self, u, state):
        """One position: u (B, C), state (B, F, C, N/2) -> y (B, F, C) fp32, new state."""
        dta, c = self.modes()
        u = u.astype(jnp.float32)
        state = jnp.exp(dta) * state + u[:, None, :, None]
        y = 2.0 * jnp.einsum("fcn,bfcn->bfc", c, state).real
        return y + u[:, None, :] * self.skip[...], state


# --------------------------------------------------------------------------- layer


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BSTLayerCache:
    """One layer's decoding state; its size does not depend on the sequence length.
    The SSM fields are None in layers without the SSM."""
    kv: ea.KVCache                # W slots of the in-block self-attention (index = position % W)
    ssm: Array = None             # (B, F, d, N/2) complex64: the S4D state
    outputs: Array = None         # (B, ends_read, F, d) fp32: this block's read SSM outputs after GELU
    cross_k: Array = None         # (B, S, H_kv, Dk): cross-attention keys of this block's context
    cross_v: Array = None         # (B, S, H_kv, Dv)


class BSTLayer(nnx.Module):
    """One layer: SSM context states + block transformer (or, with `with_ssm=False`,
    the block transformer alone)."""

    def __init__(self, cfg: BSTConfig, *, with_ssm: bool, rngs: nnx.Rngs,
                 sequence_sharding: SequenceSharding | None = None):
        b, d = cfg.bst, cfg.d_model
        self.block_len, self.variant, self.with_ssm = b.block_len, b.variant, with_ssm
        # Only the SSM crosses blocks, so only it is sharded: attention stays inside a block,
        # which is whole on its device (its attention layers are built without the spec).
        self.sequence_sharding = active(sequence_sharding)
        self.num_states, self.num_filters = num_states(b), num_filters(b)
        self.attn_norm = RMSNorm(d, eps=cfg.norm_eps)
        self.attn = attention_from_config(cfg, rngs=rngs)
        if with_ssm:
            init = nnx.initializers.normal(0.02)
            self.ssm_norm = RMSNorm(d, eps=cfg.norm_eps)
            self.ssm = DiagonalSSM(d, state_dim=b.state_dim, filters=self.num_filters,
                                   dt_min=b.dt_min, dt_max=b.dt_max, conv=b.conv, rngs=rngs)
            self.context_init = nnx.Param(init(rngs.params(), (self.num_states, d)))   # block 0's states
            self.context_ids = nnx.Param(init(rngs.params(), (self.num_states, d)))
            self.context_norm = RMSNorm(d, eps=cfg.norm_eps)
            self.cross_norm = RMSNorm(d, eps=cfg.norm_eps)
            self.cross = attention_from_config(cfg, rngs=rngs, use_rope=False)
        self.mlp_norm = RMSNorm(d, eps=cfg.norm_eps)
        self.mlp = MLP(d, kind=cfg.mlp, mlp_ratio=cfg.mlp_ratio, dtype=compute_dtype(cfg),
                       fold_tokens=self.sequence_sharding is None, rngs=rngs)
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

    def ends_read(self) -> int:
        """How many final positions of each block the context states read:
        sh all W, mh the last one, mf the last S/F (of each filter)."""
        return {"sh": self.block_len, "mh": 1, "mf": self.num_states // self.num_filters}[self.variant]

    def states_from_ends(self, ends):
        """(B, nb, ends_read, F, d) SSM outputs -> (B, nb, S, d) states of those blocks."""
        batch, nb = ends.shape[:2]
        return ends.reshape(batch, nb, self.num_states, ends.shape[-1])   # (read, F) -> S in order

    def context_states(self, x):
        """(B, T, d) -> (B, T/W, S, d): the states block k cross-attends to."""
        batch = x.shape[0]
        spec = self.sequence_sharding
        if spec is not None:       # the SSM carries its state across devices (models/bst_sharding.py)
            if self.ssm.conv != "chunked":
                raise ValueError(f"model.bst.conv={self.ssm.conv!r} cannot be sequence-sharded; "
                                 "use model.bst.conv=chunked (the default) with mesh.seq > 1")
            states = bst_sharding.sharded_context_states(self.ssm_norm(x), *self.ssm.modes(), self.ssm.skip[...],
                                            self.context_init[...], block_len=self.block_len,
                                            last=self.ends_read(), spec=spec)
            return (states + self.context_ids[...]).astype(x.dtype)
        ends = self.ssm.block_ends(self.ssm_norm(x), block_len=self.block_len, last=self.ends_read())
        states = self.states_from_ends(jax.nn.gelu(ends))                   # fp32
        # Shift one block forward: block k sees block k-1's states, block 0 learned ones.
        init = jnp.broadcast_to(self.context_init[...], (batch, 1, *self.context_init.shape))
        states = jnp.concatenate([init, states[:, :-1]], axis=1)
        return (states + self.context_ids[...]).astype(x.dtype)

    def __call__(self, x, *, segment_ids=None, deterministic: bool = True):
        """x: (B, T, d) with T a multiple of block_len -> (B, T, d)."""
        batch, length, d = x.shape
        w = self.block_len
        nb = length // w
        drop = lambda h: self.dropout(h, deterministic=deterministic)  # noqa: E731
        context = self.context_states(x) if self.with_ssm else None

        # Blocks are a batch of nb·B short sequences, block-major: on a sequence-sharded
        # mesh the block axis is the sharded one, so merging it first keeps every device's
        # blocks its own (B-major would make XLA reshuffle the activations).
        def to_blocks(a):          # (B, nb·L, ...) -> (nb·B, L, ...)
            a = a.reshape(batch, nb, a.shape[1] // nb, *a.shape[2:])
            return jnp.swapaxes(a, 0, 1).reshape(nb * batch, *a.shape[2:])

        blocks = to_blocks(x)
        mask = ea.causal()
        if segment_ids is not None:
            mask = mask & ea.segments(to_blocks(segment_ids))
        # Attention stays inside a block, so even on a sequence-sharded mesh it is local:
        # blocks are whole on their device (XLA splits the block axis).
        blocks = blocks + drop(self.attn(self.attn_norm(blocks), mask=mask, positions=jnp.arange(w)))
        if self.with_ssm:
            ctx = self.context_norm(to_blocks(context.reshape(batch, nb * self.num_states, d)))
            blocks = blocks + drop(self.cross(self.cross_norm(blocks), context=ctx))
        blocks = blocks + drop(self.mlp(self.mlp_norm(blocks)))
        return jnp.swapaxes(blocks.reshape(nb, batch, w, d), 0, 1).reshape(batch, length, d)

    # ----------------------------------------------------------------- decoding

    def init_cache(self, batch: int) -> BSTLayerCache:
        kv = self.attn.init_cache(batch, self.block_len)
        if not self.with_ssm:
            return BSTLayerCache(kv=kv)
        a, d = self.cross, self.context_ids.shape[-1]
        return BSTLayerCache(
            kv=kv, ssm=self.ssm.init_state(batch),
            outputs=jnp.zeros((batch, self.ends_read(), self.num_filters, d), jnp.float32),
            cross_k=jnp.zeros((batch, self.num_states, a.num_kv_heads, a.head_dim), a.dtype),
            cross_v=jnp.zeros((batch, self.num_states, a.num_kv_heads, a.value_dim), a.dtype))

    def block_context(self, outputs, first):
        """(B, S, d) fp32: the context states of the block starting now, from the finished
        block's read outputs (B, ends_read, F, d) after GELU, or context_init if `first`."""
        states = self.states_from_ends(outputs[:, None])[:, 0]
        return jnp.where(first, self.context_init[...], states) + self.context_ids[...]

    def decode(self, x, cache: BSTLayerCache, index):
        """One token x (B, 1, d) at position `index` (traced int32) -> (B, 1, d), new cache:
        __call__'s output at that position, dropout off."""
        batch, w = x.shape[0], self.block_len
        pos = index % w                         # RoPE positions and the KV cache are block-local
        ssm, outputs, cross_k, cross_v = cache.ssm, cache.outputs, cache.cross_k, cache.cross_v
        if self.with_ssm:
            def new_context():                  # block start: project the new states once per block
                ctx = self.context_norm(self.block_context(outputs, index == 0).astype(x.dtype))
                return (self.cross.k_proj(ctx).reshape(cross_k.shape),
                        self.cross.v_proj(ctx).reshape(cross_v.shape))
            cross_k, cross_v = jax.lax.cond(pos == 0, new_context, lambda: (cross_k, cross_v))
            y, ssm = self.ssm.step(self.ssm_norm(x)[:, 0], ssm)
            # Only the last ends_read positions are kept: earlier ones land on slot 0, which
            # position W - ends_read overwrites before the block ends.
            slot = jnp.maximum(pos - (w - self.ends_read()), 0)
            outputs = jax.lax.dynamic_update_slice(outputs, jax.nn.gelu(y)[:, None], (0, slot, 0, 0))

        kv = dataclasses.replace(cache.kv, index=pos)     # slots >= pos are stale: masked
        h, kv = self.attn(self.attn_norm(x), positions=pos[None], cache=kv)
        x = x + h
        if self.with_ssm:
            a = self.cross
            q = a.q_proj(self.cross_norm(x)).reshape(batch, 1, a.num_heads, a.head_dim)
            h = a.attend_heads(q, cross_k, cross_v, None)
            x = x + a.out_proj(h.reshape(batch, 1, a.num_heads * a.value_dim))
        x = x + self.mlp(self.mlp_norm(x))
        return x, BSTLayerCache(kv=kv, ssm=ssm, outputs=outputs, cross_k=cross_k, cross_v=cross_v)


# --------------------------------------------------------------------------- model


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BSTCache:
    """Decoding state: one BSTLayerCache per layer and the number of tokens seen."""
    layers: list[BSTLayerCache]
    index: Array      # () int32: the next token's position


class BlockStateTransformer(nnx.Module):
    def __init__(self, cfg: BSTConfig, *, rngs: nnx.Rngs, sequence_sharding: SequenceSharding | None = None):
        errors = cfg.bst.errors()
        if errors:
            raise ValueError("; ".join(errors))
        dtype = compute_dtype(cfg)
        self.vocab_size, self.max_seq_len = cfg.vocab_size, cfg.max_seq_len
        self.block_len, self.segment_mask = cfg.bst.block_len, cfg.attention.segment_mask
        init = nnx.initializers.normal(0.02)
        self.embed = nnx.Embed(cfg.vocab_size, cfg.d_model, dtype=dtype, embedding_init=init, rngs=rngs)
        every = cfg.bst.bst_every
        self.layers = nnx.List([BSTLayer(cfg, with_ssm=(i + 1) % every == 0, rngs=rngs,
                                         sequence_sharding=sequence_sharding)
                                for i in range(cfg.num_layers)])
        self.sequence_sharding = active(sequence_sharding)
        self.norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nnx.Linear(
            cfg.d_model, cfg.vocab_size, use_bias=False, dtype=dtype, kernel_init=init, rngs=rngs)

    def init_cache(self, batch: int, max_len: int) -> BSTCache:
        check_cache_length(max_len, self.max_seq_len)
        return BSTCache(layers=[layer.init_cache(batch) for layer in self.layers],
                        index=jnp.zeros((), jnp.int32))

    def __call__(self, tokens, *, segment_ids=None, positions=None, cache: BSTCache | None = None,
                 deterministic: bool = True):
        """tokens (B, T) int -> logits (B, T, vocab) fp32, or (logits, new_cache).
        positions: ignored (RoPE is block-local; see the module docstring).
        With a cache, dropout is off whatever `deterministic` says."""
        check_lm_inputs(tokens, segment_ids=segment_ids, cache=cache)   # any length: no position table
        if cache is None:
            return self.forward(tokens, segment_ids=segment_ids, deterministic=deterministic)
        if not isinstance(cache, BSTCache) or len(cache.layers) != len(self.layers):
            raise ValueError("cache does not match this model; use model.init_cache(batch, max_len)")

        def step(carry, token):                 # one token through every layer; a prompt is a scan
            layers, index = carry
            x, new = self.embed(token[:, None]), []
            for layer, c in zip(self.layers, layers):
                x, c = layer.decode(x, c, index)
                new.append(c)
            return (new, index + 1), self.head(x)[:, 0]

        (layers, index), logits = jax.lax.scan(step, (cache.layers, cache.index), tokens.T)
        return jnp.moveaxis(logits, 0, 1), BSTCache(layers=layers, index=index)

    def forward(self, tokens, *, segment_ids=None, deterministic: bool = True):
        length = tokens.shape[1]
        spec = self.sequence_sharding
        if spec is not None:       # no padding then: every device must hold whole blocks
            bst_sharding.check_sharded_length(length, self.block_len, spec)
        pad = -length % self.block_len          # padding at the end is invisible to earlier tokens
        tokens = jnp.pad(tokens, ((0, 0), (0, pad)))
        if segment_ids is not None and self.segment_mask:
            segment_ids = jnp.pad(segment_ids, ((0, 0), (0, pad)), constant_values=-1)
        else:
            segment_ids = None
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x, segment_ids=segment_ids, deterministic=deterministic)
        return self.head(x)[:, :length]

    def head(self, x):
        """(B, T, d) -> (B, T, vocab) fp32 logits."""
        x = self.norm(x)
        logits = self.embed.attend(x) if self.lm_head is None else self.lm_head(x)
        return logits.astype(jnp.float32)


@register_model("bst", config=BSTConfig)
def _build_bst(cfg: BSTConfig, *, rngs: nnx.Rngs,
               sequence_sharding: SequenceSharding | None = None) -> BlockStateTransformer:
    return BlockStateTransformer(cfg, rngs=rngs, sequence_sharding=sequence_sharding)
