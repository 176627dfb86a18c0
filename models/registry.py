"""Models by name, so a config can say `model.name: zamba`.

    @register_model("mine", config=MineConfig)   # MineConfig(ModelConfig); default ModelConfig
    def build_mine(cfg: MineConfig, *, rngs: nnx.Rngs) -> nnx.Module: ...

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
# name -> the config class its builder takes (ModelConfig or a subclass with the model's
# own sections); the config loader picks it from `model.name`.
CONFIG_CLASSES: dict[str, type[ModelConfig]] = {}


def register_model(name: str, *, config: type[ModelConfig] = ModelConfig):
    """Decorator: register `builder(cfg, *, rngs) -> nnx.Module` under `name`, taking a
    `config` (ModelConfig, or the model's subclass of it, whose `errors()` checks it)."""
    if not (isinstance(config, type) and issubclass(config, ModelConfig)):
        raise TypeError(f"register_model({name!r}): config must be ModelConfig or a subclass, got {config!r}")

    def add(builder):
        if name in MODELS and MODELS[name] is not builder:
            raise ValueError(f"a model named {name!r} is already registered")
        MODELS[name] = builder
        CONFIG_CLASSES[name] = config
        return builder
    return add


def config_class(name: str) -> type[ModelConfig]:
    """The config class of the model registered under `name` (ModelConfig if unknown)."""
    return CONFIG_CLASSES.get(name, ModelConfig)


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
    expected = config_class(cfg.name)
    if not isinstance(cfg, expected):
        raise TypeError(f"model {cfg.name!r} is built from a {expected.__name__} "
                        f"({expected.__module__}.{expected.__name__}), got a {type(cfg).__name__}")
    if sequence_sharding is None or sequence_sharding.num_shards == 1:
        return builder(cfg, rngs=rngs)
    if not can_shard(cfg.name):
        raise ValueError(f"model {cfg.name!r} cannot run sequence-sharded (its builder takes no "
                         "sequence_sharding); use mesh.seq=1")
    return builder(cfg, rngs=rngs, sequence_sharding=sequence_sharding)
