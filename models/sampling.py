"""Autoregressive sampling with the KV cache: prefill the prompt once, then one
jitted step per new token (the step compiles once: the cache has a fixed size
and its write index is traced)."""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx


def generate(model, prompt_tokens, max_new_tokens: int, *, rng, temperature: float = 1.0,
             top_k: int | None = None):
    """prompt_tokens (B, T0) int -> (B, T0 + max_new_tokens) int32.

    temperature 0 is greedy (argmax); top_k keeps only the k most likely tokens.
    `model(tokens, cache=caches) -> (logits, caches)` and `model.init_cache` are
    all it needs, so every model in the zoo samples through this function.
    """
    prompt = jnp.asarray(prompt_tokens, jnp.int32)
    if prompt.ndim != 2 or prompt.shape[1] < 1:
        raise ValueError(f"prompt_tokens must have shape (B, T0) with T0 >= 1; got {prompt.shape}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0; got {max_new_tokens}")
    batch, prompt_len = prompt.shape
    total = prompt_len + max_new_tokens
    max_len = getattr(model, "max_seq_len", None)
    if max_len is not None and total > max_len:
        raise ValueError(f"prompt of {prompt_len} tokens + {max_new_tokens} new tokens = {total} "
                         f"exceeds the model's max_seq_len={max_len}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 is greedy); got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None; got {top_k}")
    if max_new_tokens == 0:
        return prompt

    greedy = temperature == 0
    caches = model.init_cache(batch, total)
    # The prompt and the fresh cache go where the parameters are, as every later step's
    # token and cache will: otherwise the first step compiles a second program.
    prompt, caches = _like_parameters(model, (prompt, caches))
    keys = jax.random.split(rng, max_new_tokens)
    temp = jnp.float32(1.0 if greedy else temperature)
    token, caches = _step(model, prompt, caches, keys[0], temp, greedy=greedy, top_k=top_k)
    out = [prompt, token]
    for i in range(1, max_new_tokens):
        token, caches = _step(model, token, caches, keys[i], temp, greedy=greedy, top_k=top_k)
        out.append(token)
    return jnp.concatenate(out, axis=1)


def _like_parameters(model, tree):
    """`tree` replicated over the mesh the model's parameters live on (as it is, if none)."""
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    sharding = getattr(params[0], "sharding", None) if params else None
    if not isinstance(sharding, jax.sharding.NamedSharding):
        return tree
    return jax.device_put(tree, jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec()))


def sample_logits(logits, key, temperature, *, greedy: bool, top_k: int | None):
    """(B, vocab) float -> (B, 1) int32."""
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)[:, None]
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)[:, None]


@partial(nnx.jit, static_argnames=("greedy", "top_k"))
def _step(model, tokens, caches, key, temperature, *, greedy, top_k):
    """Feed `tokens` (the prompt, or the last sampled token) and sample the next one.
    Compiles once for the prompt length and once for single tokens."""
    logits, caches = model(tokens, cache=caches)
    return sample_logits(logits[:, -1], key, temperature, greedy=greedy, top_k=top_k), caches
