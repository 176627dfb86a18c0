"""Models by name, so a config can say `model.name: zamba`.

    @register_model("mine")
    def build_mine(cfg: ModelConfig, *, rngs: nnx.Rngs) -> nnx.Module: ...

    model = build_model(cfg, rngs=nnx.Rngs(0))       # looks up cfg.name
"""
from __future__ import annotations

import difflib
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


def build_model(cfg: ModelConfig, *, rngs: nnx.Rngs) -> nnx.Module:
    """The model registered under `cfg.name`, built from `cfg`."""
    if cfg.name not in MODELS:
        close = difflib.get_close_matches(cfg.name, list(MODELS), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown model {cfg.name!r}.{hint} Registered models: {sorted(MODELS)}")
    return MODELS[cfg.name](cfg, rngs=rngs)
