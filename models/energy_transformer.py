"""Energy Transformer LM (Hoover et al. 2023): embed -> ONE weight-tied causal ET block
run for `steps` steps of energy descent -> RMSNorm -> LM head.

    cfg = EnergyTransformerConfig(d_model=64, num_heads=4,
                                  attention=AttentionConfig(energy="energy_transformer"),
                                  energy_transformer=DescentConfig(steps=6, alpha=0.1))
    model = build_model(cfg, rngs=nnx.Rngs(0))
    logits = model(tokens)                                   # (B, T) int -> (B, T, vocab) fp32
    cache = model.init_cache(batch, max_len)
    logits, cache = model(prompt, cache=cache)               # then one token at a time

What it reads from its EnergyTransformerConfig: vocab_size, max_seq_len (learned positions),
d_model, num_heads (head dim d_model // num_heads), mlp_ratio (default memory
count), tie_embeddings, norm_eps, attention.segment_mask, and its own section
`model.energy_transformer` (DescentConfig):
    steps        (12)                        descent steps of the shared block
    alpha        (0.1)                       step size of x ← x − α ∂E/∂g
    num_memories (0: mlp_ratio · d_model)    Hopfield memories ξ (the MLP width they replace)
From `attention.energy_params`, the attention energy's only option:
    beta         (1/sqrt(head_dim))          attention inverse temperature, scalar or per head
Ignored: num_layers (depth is `steps` of one block), mlp, dropout, rope and
rope_base (positions are a learned embedding), num_kv_heads, compute_dtype (the
dynamics run in float32). attention.energy must be "energy_transformer" (or the
default "softmax", meaning "not chosen"): the ET defines its own attention energy.

Causality: the block uses the causal update (energy_attn/energy_transformer.py):
keys B < C and the gradient taken through the queries only, so token C's update
depends on tokens ≤ C. The dynamics are then not exact descent of one global energy.

Decoding has no KV cache: the cache holds the tokens so far (a fixed-size buffer
and a traced index), and every call reruns the full forward over the buffer and
returns the logits of the new positions. Causality makes the unfilled tail
irrelevant, and the buffer's fixed size means one compile for the prompt and one
for single tokens. (A real cache is possible, since past trajectories never change:
keep every step's keys, (steps, B, T, H, Y). Not done here.)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

import energy_attn as ea
from energy_attn.energy_transformer import EnergyTransformerBlock

from .lm_inputs import check_cache_length, check_lm_inputs, lm_mask
from .config import ModelConfig
from .layers import RMSNorm
from .registry import register_model

Array = Any

ENERGY_PARAM_KEYS = ("beta",)          # of the attention energy; the descent's own knobs: model.energy_transformer


@dataclass
class DescentConfig:
    """The Energy Transformer's descent: `model.energy_transformer` in a config."""
    steps: int = 12                         # descent steps x <- x - alpha dE/dg of the one weight-tied block
    alpha: float = 0.1                      # step size of the descent (Hoover et al.: 0.1)
    num_memories: int = 0                   # Hopfield memories xi (they replace the MLP); 0: mlp_ratio * d_model


@dataclass
class EnergyTransformerConfig(ModelConfig):
    """The Energy Transformer LM: the shared fields (see the module docstring for those
    it ignores) and its descent. It defines its own attention energy."""
    name: str = "energy_transformer"
    energy_transformer: DescentConfig = field(default_factory=DescentConfig)

    own_sections: ClassVar[tuple[str, ...]] = ("energy_transformer",)

    def errors(self, *, seq_len: int | None = None, seq_pieces: int = 1) -> list[str]:
        errors = super().errors(seq_len=seq_len, seq_pieces=seq_pieces)
        e = self.energy_transformer
        if e.steps < 0:
            errors.append(f"model.energy_transformer.steps must be >= 0, got {e.steps}")
        if not e.alpha > 0:
            errors.append(f"model.energy_transformer.alpha (the step size) must be > 0, got {e.alpha}")
        if e.num_memories < 0:
            errors.append(f"model.energy_transformer.num_memories must be >= 0 (0: mlp_ratio * d_model), "
                          f"got {e.num_memories}")
        return errors

    def energy_errors(self) -> list[str]:
        """Its attention energy is its own: only `beta` may be set."""
        a, errors = self.attention, []
        if a.energy not in ("energy_transformer", "softmax"):
            errors.append(f"model.attention.energy={a.energy!r}: the Energy Transformer defines its own "
                          "attention energy; set model.attention.energy=energy_transformer")
        for key in sorted(set(a.energy_params or {}) - set(ENERGY_PARAM_KEYS)):
            hint = (f"; the descent's options are model.energy_transformer.{key} now"
                    if key in ("steps", "alpha", "num_memories") else "")
            errors.append(f"model.attention.energy_params.{key}: the Energy Transformer's attention energy "
                          f"takes only {', '.join(ENERGY_PARAM_KEYS)}{hint}")
        return errors


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TokenCache:
    """The decode "cache" of a model without a KV cache: the tokens seen so far."""
    tokens: Array   # (B, max_len) int32; positions [index, max_len) are unfilled (zeros)
    index: Array    # int32 scalar: how many positions are filled

    @property
    def max_len(self) -> int:
        return self.tokens.shape[1]


class EnergyTransformerLM(nnx.Module):
    def __init__(self, cfg: EnergyTransformerConfig, *, rngs: nnx.Rngs):
        a = cfg.attention
        errors = cfg.errors()
        if errors:
            raise ValueError("; ".join(errors))
        e = cfg.energy_transformer
        self.vocab_size, self.max_seq_len = cfg.vocab_size, cfg.max_seq_len
        self.segment_mask, self.tie_embeddings = a.segment_mask, cfg.tie_embeddings
        self.steps, self.alpha = int(e.steps), float(e.alpha)
        self.num_memories = int(e.num_memories or round(cfg.mlp_ratio * cfg.d_model))
        # GPT's N(0, 0.02) everywhere: tied-head logits start near uniform, and the
        # first descent steps move tokens by a fraction of their size (not past it).
        init = nnx.initializers.normal(0.02)
        self.embed = nnx.Embed(cfg.vocab_size, cfg.d_model, embedding_init=init, rngs=rngs)
        self.pos_embed = nnx.Param(init(rngs.params(), (cfg.max_seq_len, cfg.d_model)))
        self.block = EnergyTransformerBlock(
            cfg.d_model, cfg.num_heads, cfg.d_model // cfg.num_heads, self.num_memories,
            steps=self.steps, alpha=self.alpha, causal=True, beta=a.energy_params.get("beta"),
            init_std=0.02, rngs=rngs)
        self.norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nnx.Linear(
            cfg.d_model, cfg.vocab_size, use_bias=False, kernel_init=init, rngs=rngs)

    def init_cache(self, batch: int, max_len: int) -> TokenCache:
        """An empty token buffer of `max_len` positions (no KV cache; see the module doc)."""
        check_cache_length(max_len, self.max_seq_len)
        return TokenCache(tokens=jnp.zeros((batch, max_len), jnp.int32), index=jnp.zeros((), jnp.int32))

    def _forward(self, tokens, *, segment_ids=None, positions=None, return_trajectory=False):
        length = tokens.shape[1]
        positions = jnp.arange(length) if positions is None else positions
        x = self.embed(tokens) + self.pos_embed[...][positions]
        mask = lm_mask(segment_ids, self.segment_mask, causal=False)   # the ET block adds causality
        out = self.block(x, mask=mask, return_trajectory=return_trajectory)
        x, traj = out if return_trajectory else (out, None)
        x = self.norm(x)
        logits = self.embed.attend(x) if self.lm_head is None else self.lm_head(x)
        logits = logits.astype(jnp.float32)
        return (logits, traj) if return_trajectory else logits

    def energy_trajectory(self, tokens, *, segment_ids=None, positions=None) -> dict:
        """Per-step energies of the token dynamics, {'attention', 'hopfield', 'total'}:
        (steps + 1, B) each, for plots."""
        return self._forward(tokens, segment_ids=segment_ids, positions=positions,
                             return_trajectory=True)[1]

    def __call__(self, tokens, *, segment_ids=None, positions=None, cache: TokenCache | None = None,
                 deterministic: bool = True):
        """tokens: (B, T) int -> logits (B, T, vocab) float32, or (logits, new cache).

        segment_ids: (B, T) packed documents (tokens interact within their document).
        positions: (T,) or (B, T) indices into the learned position embedding
            (default arange(T)). deterministic: accepted for the trainer (no dropout).
        cache: from `init_cache`: the new tokens are appended to the buffer and the
            full forward reruns over it.
        """
        del deterministic
        check_lm_inputs(tokens, max_seq_len=self.max_seq_len)
        length = tokens.shape[1]
        if cache is None:
            return self._forward(tokens, segment_ids=segment_ids, positions=positions)
        if segment_ids is not None or positions is not None:
            raise ValueError("with a cache, decode one document per row from position 0 "
                             "(segment_ids/positions are for full training rows)")
        ea.KVCache.check_room(cache.index, length, cache.max_len)
        buf = jax.lax.dynamic_update_slice(cache.tokens, tokens.astype(jnp.int32), (0, cache.index))
        # Causal: the zeros after index + length cannot reach the positions we read.
        logits = jax.lax.dynamic_slice_in_dim(self._forward(buf), cache.index, length, axis=1)
        return logits, TokenCache(tokens=buf, index=cache.index + length)


@register_model("energy_transformer", config=EnergyTransformerConfig)
def _build_energy_transformer(cfg: EnergyTransformerConfig, *, rngs: nnx.Rngs) -> EnergyTransformerLM:
    return EnergyTransformerLM(cfg, rngs=rngs)
