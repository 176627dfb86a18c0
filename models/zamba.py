"""Zamba-like hybrid (Glorioso et al. 2024, arXiv 2405.16712; wiring as in Hugging Face's
ZambaForCausalLM): a Mamba backbone plus ONE shared attention+MLP block applied at
several depths.

    cfg = ZambaConfig(d_model=128, num_layers=6, num_heads=4,
                      ssm=SSMConfig(kind="mamba1"), zamba=SharedBlockConfig(shared_every=2))
    model = build_model(cfg, rngs=nnx.Rngs(0))
    logits = model(tokens, segment_ids=ids, positions=pos)    # (B, T) -> (B, T, vocab) fp32
    cache = model.init_cache(batch, max_len)
    logits, cache = model(prompt, cache=cache)               # then one token at a time

Forward pass:
    x0 = embed(tokens);  x = x0
    for Mamba layer i = 0 .. num_layers-1:
        if (i + 1) % shared_every == 0:                      # sites: layers k-1, 2k-1, ...
            s = shared[site % num_shared_blocks](concat(x, x0))   # width 2·d_model
            extra = proj[site](s)                            # per-site Linear(2d -> d), not shared
        x = x + mamba_i(norm(x + extra))                     # extra only feeds the layer's input
    logits = head(norm(x))                                   # tied to embed per tie_embeddings

The shared block is norm -> energy attention -> norm -> MLP on the 2d-wide
concat, with no residuals inside (as in Zamba). Its weights exist once; each
site has its own output projection and, with `zamba.lora_rank > 0`, its own
LoRA factors (Zamba2-style) on the q/k/v and MLP input projections, merged as
W + A·B into a per-site copy at trace time (B starts at zero). With
`num_shared_blocks: 2` the sites alternate between two blocks (ABAB, Zamba2).

Attention: any registered energy (model.attention.energy), GQA and RoPE per
model.attention (Zamba itself used no positional encoding: set rope=false;
its softmax scale 1/sqrt(head_dim/2) is `energy_params: {beta: ...}` away).
Heads: model.num_heads over the 2d width, so head_dim = 2·d_model / num_heads.

Packed documents: with segment_ids (and model.attention.segment_mask, the
default) attention stays inside a document AND the Mamba state and conv
window reset at each document start (models/mamba.py), so documents never see
each other. Decoding: one KV cache per site + the SSM state and conv buffer of
every Mamba layer (`ZambaCache`).

Sequence sharding (the trainer's mesh.seq > 1): the shared attention runs tree-reduced
like any EnergyAttention, the Mamba layers carry their conv window and scan state
across devices (models/mamba_sharding.py); the model code is the same.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

import energy_attn as ea
from energy_attn.sequence_sharding import SequenceSharding

from .lm_inputs import check_cache_length, check_lm_inputs, lm_mask
from .config import ModelConfig
from .layers import MLP, RMSNorm, attention_from_config, compute_dtype
from .mamba import MambaBlock, MambaCache, SSMConfig
from .registry import register_model

Array = Any


@dataclass
class SharedBlockConfig:
    """The hybrid's shared attention block(s): `model.zamba` in a config."""
    shared_every: int = 2                   # apply the shared block before every k-th Mamba layer
    num_shared_blocks: int = 1              # 1, or 2 alternating ABAB (Zamba2)
    lora_rank: int = 0                      # per-application LoRA on the shared q/k/v/MLP inputs; 0 = off


@dataclass
class ZambaConfig(ModelConfig):
    """The Zamba-like hybrid: the shared fields (num_layers counts Mamba layers, num_heads
    the shared block's heads over its 2·d_model width), the Mamba layers and the shared block."""
    name: str = "zamba"
    ssm: SSMConfig = field(default_factory=SSMConfig)
    zamba: SharedBlockConfig = field(default_factory=SharedBlockConfig)

    own_sections: ClassVar[tuple[str, ...]] = ("ssm", "zamba")

    def errors(self, *, seq_len: int | None = None, seq_pieces: int = 1) -> list[str]:
        """The shared checks, model.ssm and model.zamba, and, when sequence-sharded, whether
        each device's piece covers the Mamba conv's reach (it borrows that many tokens from
        the piece before)."""
        errors = super().errors(seq_len=seq_len, seq_pieces=seq_pieces) + self.ssm.errors(self.d_model)
        z = self.zamba
        if not 1 <= z.shared_every <= self.num_layers:
            errors.append(f"model.zamba.shared_every={z.shared_every} must be in [1, model.num_layers="
                          f"{self.num_layers}] (the shared block feeds every k-th Mamba layer)")
        if z.num_shared_blocks not in (1, 2):
            errors.append(f"model.zamba.num_shared_blocks={z.num_shared_blocks} must be 1 or 2 (ABAB)")
        if z.lora_rank < 0:
            errors.append(f"model.zamba.lora_rank={z.lora_rank} must be >= 0 (0 = no LoRA)")
        if seq_len is not None and seq_pieces > 1 and seq_len // seq_pieces < self.ssm.conv_width - 1:
            errors.append(f"data.seq_len={seq_len} over the mesh's sequence axis gives pieces of "
                          f"{seq_len // seq_pieces} tokens, shorter than the Mamba conv's reach "
                          f"model.ssm.conv_width - 1 = {self.ssm.conv_width - 1}")
        return errors


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ZambaCache:
    mamba: list[MambaCache]    # one per Mamba layer
    attn: list[ea.KVCache]     # one per application site of the shared block


class SharedBlock(nnx.Module):
    """norm -> attention -> norm -> MLP on concat(x, x0), width 2·d_model, no residuals."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, sequence_sharding: SequenceSharding | None = None):
        wide = cfg.replace(d_model=2 * cfg.d_model)
        self.attn_norm = RMSNorm(wide.d_model, eps=cfg.norm_eps)
        self.attn = attention_from_config(wide, rngs=rngs, sequence_sharding=sequence_sharding)
        self.mlp_norm = RMSNorm(wide.d_model, eps=cfg.norm_eps)
        self.mlp = MLP(wide.d_model, kind=cfg.mlp, mlp_ratio=cfg.mlp_ratio, dtype=compute_dtype(cfg),
                       fold_tokens=sequence_sharding is None, rngs=rngs)

    def __call__(self, x, *, mask=None, positions=None, cache: ea.KVCache | None = None):
        h = self.attn(self.attn_norm(x), mask=mask, positions=positions, cache=cache)
        if cache is not None:
            h, cache = h
        h = self.mlp(self.mlp_norm(h))
        return h if cache is None else (h, cache)


def lora_targets(mlp_kind: str) -> tuple[tuple[str, str], ...]:
    """(submodule, linear) pairs of the shared block that get a LoRA update."""
    mlp = ("up", "gate") if mlp_kind == "swiglu" else ("up",)
    return (("attn", "q_proj"), ("attn", "k_proj"), ("attn", "v_proj")) + tuple(("mlp", m) for m in mlp)


class LoRA(nnx.Module):
    """One site's low-rank updates W + A·B of the shared block's input projections."""

    def __init__(self, block: SharedBlock, rank: int, mlp_kind: str, *, rngs: nnx.Rngs):
        self.targets = lora_targets(mlp_kind)
        self.a, self.b = nnx.List(), nnx.List()
        for mod, name in self.targets:
            fan_in, fan_out = getattr(getattr(block, mod), name).kernel.shape
            self.a.append(nnx.Param(jax.random.normal(rngs.params(), (fan_in, rank)) / fan_in ** 0.5))
            self.b.append(nnx.Param(jnp.zeros((rank, fan_out))))   # zero: starts as the shared block

    def apply(self, block: SharedBlock) -> SharedBlock:
        """A functional copy of `block` with the updated kernels (gradients reach both)."""
        graphdef, state = nnx.split(block)
        weights = nnx.to_pure_dict(state)
        for (mod, name), a, b in zip(self.targets, self.a, self.b):
            weights[mod][name]["kernel"] = weights[mod][name]["kernel"] + a[...] @ b[...]
        nnx.replace_by_pure_dict(state, weights)
        return nnx.merge(graphdef, state)


def shared_sites(num_layers: int, shared_every: int) -> tuple[int, ...]:
    """Mamba layers whose input receives a shared-block output: k-1, 2k-1, ..."""
    return tuple(i for i in range(num_layers) if (i + 1) % shared_every == 0)


class Zamba(nnx.Module):
    def __init__(self, cfg: ZambaConfig, *, rngs: nnx.Rngs, sequence_sharding: SequenceSharding | None = None):
        errors = cfg.errors()
        if errors:
            raise ValueError("; ".join(errors))
        z = cfg.zamba
        dtype = compute_dtype(cfg)
        self.vocab_size, self.max_seq_len, self.dtype = cfg.vocab_size, cfg.max_seq_len, dtype
        self.segment_mask = cfg.attention.segment_mask
        self.sites = shared_sites(cfg.num_layers, z.shared_every)
        d = cfg.d_model
        init = nnx.initializers.normal(0.02)
        self.embed = nnx.Embed(cfg.vocab_size, d, dtype=dtype, embedding_init=init, rngs=rngs)
        spec = dict(rngs=rngs, sequence_sharding=sequence_sharding)
        self.layers = nnx.List([MambaBlock(cfg, **spec) for _ in range(cfg.num_layers)])
        self.shared = nnx.List([SharedBlock(cfg, **spec) for _ in range(z.num_shared_blocks)])
        self.proj = nnx.List([nnx.Linear(2 * d, d, use_bias=False, dtype=dtype, rngs=rngs)
                              for _ in self.sites])
        self.lora = nnx.List([LoRA(self.shared[j % z.num_shared_blocks], z.lora_rank, cfg.mlp, rngs=rngs)
                              for j in range(len(self.sites))] if z.lora_rank else [])
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)
        self.norm = RMSNorm(d, eps=cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nnx.Linear(
            d, cfg.vocab_size, use_bias=False, dtype=dtype, kernel_init=init, rngs=rngs)

    def init_cache(self, batch: int, max_len: int) -> ZambaCache:
        """Empty decoding state: SSM state + conv buffer per layer, a KV cache per site."""
        check_cache_length(max_len, self.max_seq_len)
        return ZambaCache(mamba=[layer.init_cache(batch) for layer in self.layers],
                          attn=[self._block(j).attn.init_cache(batch, max_len)
                                for j in range(len(self.sites))])

    def _block(self, site: int) -> SharedBlock:
        block = self.shared[site % len(self.shared)]
        return self.lora[site].apply(block) if len(self.lora) else block

    def __call__(self, tokens, *, segment_ids=None, positions=None, cache: ZambaCache | None = None,
                 deterministic: bool = True):
        """tokens (B, T) int -> logits (B, T, vocab) float32, or (logits, new cache).
        segment_ids / positions: packed rows (see the module docstring); cache: from init_cache."""
        check_lm_inputs(tokens, max_seq_len=self.max_seq_len, segment_ids=segment_ids, cache=cache)
        if cache is not None and (not isinstance(cache, ZambaCache) or len(cache.mamba) != len(self.layers)):
            raise ValueError("cache does not match this model; use model.init_cache(batch, max_len)")
        mask = lm_mask(segment_ids, self.segment_mask, cache)
        documents = segment_ids if self.segment_mask else None

        x0 = self.embed(tokens)
        x = x0
        new_mamba, new_attn = [], []
        for i, layer in enumerate(self.layers):
            extra = None
            if i in self.sites:
                j = self.sites.index(i)
                h = self._block(j)(jnp.concatenate([x, x0], axis=-1), mask=mask, positions=positions,
                                   cache=None if cache is None else cache.attn[j])
                if cache is not None:
                    h, c = h
                    new_attn.append(c)
                extra = self.proj[j](self.dropout(h, deterministic=deterministic))
            if cache is None:
                x = layer(x, extra=extra, segment_ids=documents, deterministic=deterministic)
            else:
                x, c = layer(x, extra=extra, cache=cache.mamba[i], deterministic=deterministic)
                new_mamba.append(c)
        x = self.norm(x)
        logits = (self.embed.attend(x) if self.lm_head is None else self.lm_head(x)).astype(jnp.float32)
        return logits if cache is None else (logits, ZambaCache(mamba=new_mamba, attn=new_attn))


@register_model("zamba", config=ZambaConfig)
def _build_zamba(cfg: ZambaConfig, *, rngs: nnx.Rngs,
                 sequence_sharding: SequenceSharding | None = None) -> Zamba:
    return Zamba(cfg, rngs=rngs, sequence_sharding=sequence_sharding)
