"""Models by name, so a config can say `model.name: zamba`.

    @register_model("mine", config_errors=mine_config_errors)   # checks are optional
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
# name -> config_errors(cfg, *, seq_len, seq_pieces) -> [message, ...]: the model's own
# checks of its config section against the training shape (train.config.validate calls it).
CONFIG_ERRORS: dict[str, Callable[..., list[str]]] = {}
# Models whose config_errors also check model.attention.energy (the generic check is skipped).
OWN_ENERGY_CHECK: set[str] = set()


def register_model(name: str, *, config_errors: Callable[..., list[str]] | None = None,
                   checks_energy: bool = False):
    """Decorator: register `builder(cfg, *, rngs) -> nnx.Module` under `name`.

    config_errors(cfg, *, seq_len, seq_pieces) -> list of messages, one per bad option of
    the model's own config section (seq_len: training rows; seq_pieces: how many pieces
    each row is cut into across devices, 1 unsharded). checks_energy: it also checks
    model.attention.energy and its params, instead of the energy registry's check."""
    def add(builder):
        if name in MODELS and MODELS[name] is not builder:
            raise ValueError(f"a model named {name!r} is already registered")
        MODELS[name] = builder
        if config_errors is not None:
            CONFIG_ERRORS[name] = config_errors
        if checks_energy:
            OWN_ENERGY_CHECK.add(name)
        return builder
    return add


def model_config_errors(cfg: ModelConfig, *, seq_len: int, seq_pieces: int = 1) -> list[str]:
    """The registered model's own messages about `cfg` (none if it registered no check)."""
    check = CONFIG_ERRORS.get(cfg.name)
    return [] if check is None else list(check(cfg, seq_len=seq_len, seq_pieces=seq_pieces))


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
