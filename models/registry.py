"""Models by name, so a config can say `model.name: zamba`.

    @register_model("mine")
    def build_mine(cfg: ModelConfig, *, rngs: nnx.Rngs) -> nnx.Module: ...

    model = build_model(cfg, rngs=nnx.Rngs(0))       # looks up cfg.name
    model = build_model(cfg, rngs=nnx.Rngs(0), sequence_sharding=spec)   # mesh.seq > 1

A builder that can run sequence-sharded takes a `sequence_sharding` keyword
(energy_attn.sequence_sharding.SequenceSharding) and hands it to its layers.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Callable

from flax import nnx

from .config import ModelConfig

MODELS: dict[str, Callable[..., nnx.Module]] = {}


def register_model(name: str):
    """Decorator: register `builder(cfg, *, rngs) -> nnx.Module` under `name`."""
    def add(builder):
        if name in MODELS and MODELS[name] is not builder:
            raise ValueError(f"a model named {name!r} is already registered")
        MODELS[name] = builder
        return builder
    return add


def can_shard(name: str) -> bool:
    """Whether the model registered under `name` takes a `sequence_sharding` (mesh.seq > 1)."""
    return "sequence_sharding" in inspect.signature(MODELS[name]).parameters


def build_model(cfg: ModelConfig, *, rngs: nnx.Rngs, sequence_sharding=None) -> nnx.Module:
    """The model registered under `cfg.name`, built from `cfg`; with `sequence_sharding`
    (a SequenceSharding over more than one device) its layers split the sequence."""
    if cfg.name not in MODELS:
        close = difflib.get_close_matches(cfg.name, list(MODELS), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown model {cfg.name!r}.{hint} Registered models: {sorted(MODELS)}")
    builder = MODELS[cfg.name]
    if sequence_sharding is None or sequence_sharding.num_shards == 1:
        return builder(cfg, rngs=rngs)
    if not can_shard(cfg.name):
        raise ValueError(f"model {cfg.name!r} cannot run sequence-sharded (its builder takes no "
                         "sequence_sharding); use mesh.seq=1")
    return builder(cfg, rngs=rngs, sequence_sharding=sequence_sharding)
