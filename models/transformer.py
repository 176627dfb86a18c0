"""Decoder-only transformer LM: embed -> N pre-norm Blocks -> RMSNorm -> LM head.

    model = Transformer(ModelConfig(vocab_size=256, d_model=128), rngs=nnx.Rngs(0))
    logits = model(tokens)                                   # (B, T) int32 -> (B, T, vocab) fp32
    logits = model(tokens, segment_ids=ids, positions=pos)  # packed documents
    caches = model.init_cache(batch, max_len)
    logits, caches = model(prompt, cache=caches)            # prefill, then one token at a time
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

import energy_attn as ea
from energy_attn.sequence_sharding import SequenceSharding

from .lm_inputs import check_cache_length, check_lm_inputs, lm_mask
from .config import ModelConfig
from .layers import Block, RMSNorm, compute_dtype
from .registry import register_model


class Transformer(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, sequence_sharding: SequenceSharding | None = None):
        dtype = compute_dtype(cfg)
        # Hashable copies of what the forward pass needs (a ModelConfig holds a dict,
        # so keeping it on the module would make the graph definition unhashable).
        self.vocab_size, self.max_seq_len = cfg.vocab_size, cfg.max_seq_len
        self.segment_mask, self.tie_embeddings = cfg.attention.segment_mask, cfg.tie_embeddings
        self.dtype = dtype
        # nanoGPT's N(0, 0.02): with a tied head the logits start small, so the initial
        # loss is close to log(vocab) instead of exploding with unit-variance embeddings.
        init = nnx.initializers.normal(0.02)
        self.embed = nnx.Embed(cfg.vocab_size, cfg.d_model, dtype=dtype, embedding_init=init, rngs=rngs)
        self.blocks = nnx.List([Block(cfg, rngs=rngs, sequence_sharding=sequence_sharding)
                                for _ in range(cfg.num_layers)])
        self.norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nnx.Linear(
            cfg.d_model, cfg.vocab_size, use_bias=False, dtype=dtype, kernel_init=init, rngs=rngs)

    def init_cache(self, batch: int, max_len: int) -> list[ea.KVCache]:
        """One empty KV cache per layer, in the compute dtype."""
        check_cache_length(max_len, self.max_seq_len)
        return [block.attn.init_cache(batch, max_len) for block in self.blocks]

    def __call__(self, tokens, *, segment_ids=None, positions=None, cache=None,
                 deterministic: bool = True):
        """tokens: (B, T) int -> logits (B, T, vocab) float32, or (logits, new_caches).

        segment_ids: (B, T) document ids of packed rows; tokens attend within their
            document only (when config.attention.segment_mask).
        positions: (T,) or (B, T) RoPE positions; default arange(T), or the cache
            index onwards when decoding. Packed rows pass per-document positions.
        cache: the list from `init_cache`; causality is then implied by the cache.
        """
        check_lm_inputs(tokens, max_seq_len=self.max_seq_len, segment_ids=segment_ids, cache=cache)
        if cache is not None and len(cache) != len(self.blocks):
            raise ValueError(f"got {len(cache)} caches for {len(self.blocks)} layers; "
                             "use model.init_cache(batch, max_len)")
        mask = lm_mask(segment_ids, self.segment_mask, cache)

        x = self.embed(tokens)
        new_caches = []
        for i, block in enumerate(self.blocks):
            if cache is None:
                x = block(x, mask=mask, positions=positions, deterministic=deterministic)
            else:
                x, c = block(x, mask=mask, positions=positions, cache=cache[i],
                             deterministic=deterministic)
                new_caches.append(c)
        x = self.norm(x)
        logits = self.embed.attend(x) if self.lm_head is None else self.lm_head(x)
        logits = logits.astype(jnp.float32)
        return logits if cache is None else (logits, new_caches)


def num_params(model: nnx.Module) -> int:
    """Number of trainable parameters (every nnx.Param array, summed)."""
    return sum(int(p.size) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


@register_model("transformer")
def _build_transformer(cfg: ModelConfig, *, rngs: nnx.Rngs,
                       sequence_sharding: SequenceSharding | None = None) -> Transformer:
    return Transformer(cfg, rngs=rngs, sequence_sharding=sequence_sharding)
