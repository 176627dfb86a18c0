"""Recording what attention layers attended with, for pictures of any model.

    records = ea.record_attention(model, tokens)   # runs model(tokens) once, eagerly
    for r in records:                               # in call order
        r.name, r.weights                           # "blocks.0.attn", (B, H, Tq, Tk) = ∂F/∂s

Every module that attends (`EnergyAttention`, the Energy Transformer block) reports
its queries, keys, mask and energy to its `attention_recorder` attribute when one is
set, so a picture of a transformer, the hybrid's shared block, the BST's block
attention or the ET needs no code that knows the model. The recorder is a plain
attribute, not an `nnx.sow` intermediate, because a module copied with split/merge
(the hybrid's per-site LoRA view of the shared block) shares it: what the copy
attends is still recorded, under the original's name.

Recording runs outside jit: a record holds concrete arrays, and a traced call with a
recorder set raises instead of leaking tracers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

from .contract import attention_weights
from .masks import Mask
from .primitives import allowed_pairs

Array = Any


@dataclass(frozen=True)
class AttentionRecord:
    """One call of one attention module.

    name: the module's path in the model ("blocks.0.attn"); call: 0-based index of this
    call among the module's calls (the hybrid's shared block is called once per site).
    q: (B, Tq, H, D) and k: (B, Tk, H_kv, D) as the energy saw them (after RoPE).
    weights: (B, H, Tq, Tk) attention map ∂F/∂s. allowed: (B|1, H|1, Tq, Tk) bool, the
    pairs the mask lets interact (None: all). cross: keys come from a context, not from
    the sequence itself. energy, params: what `ea.attend` was called with.
    """
    name: str
    call: int
    q: np.ndarray
    k: np.ndarray
    weights: np.ndarray
    allowed: np.ndarray | None
    cross: bool
    energy: str | Callable
    params: dict


class AttentionTap:
    """What a module's `attention_recorder` holds while recording: its name and the list
    that records of every module of the model go to, in call order."""

    def __init__(self, name: str, sink: list):
        self.name, self.sink = name, sink

    def add(self, energy, q, k, *, mask: Mask | None, params: dict, cross: bool = False) -> None:
        if any(isinstance(a, jax.core.Tracer) for a in (q, k)):
            raise RuntimeError(f"{self.name}: attention is recorded eagerly; call the model outside "
                               "jax.jit / nnx.jit while recording")
        weights = attention_weights(energy, q, k, mask=mask, **params)
        allowed = allowed_pairs(mask, q.shape[1], k.shape[1])
        call = sum(r.name == self.name for r in self.sink)
        self.sink.append(AttentionRecord(
            name=self.name, call=call, q=np.asarray(q, np.float32), k=np.asarray(k, np.float32),
            weights=np.asarray(weights, np.float32),
            allowed=None if allowed is None else np.asarray(allowed, bool),
            cross=cross, energy=energy, params=dict(params)))


def attention_modules(model) -> list[tuple[str, Any]]:
    """(path, module) of every module in `model` that can record its attention."""
    return [(".".join(map(str, path)), m) for path, m in nnx.iter_modules(model)
            if hasattr(m, "attention_recorder")]


def record_attention(model, *args, **kwargs) -> list[AttentionRecord]:
    """Call `model(*args, **kwargs)` once with every attention module recording; return
    the records in call order. ValueError if the model has no attention module."""
    modules = attention_modules(model)
    if not modules:
        raise ValueError(f"{type(model).__name__} has no attention module (EnergyAttention or "
                         "EnergyTransformerBlock) to record")
    sink: list[AttentionRecord] = []
    for name, m in modules:
        m.attention_recorder = AttentionTap(name or type(m).__name__, sink)
    try:
        model(*args, **kwargs)
    finally:
        for _, m in modules:
            m.attention_recorder = None
    return sink
