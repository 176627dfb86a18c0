"""Model zoo (transformer, Zamba-like hybrid, Block-State Transformer).

Every model plugs in `energy_attn.EnergyAttention`. Importing this package
registers every model, so `build_model(cfg)` finds it by `cfg.name`.
"""
from .config import AttentionConfig, ModelConfig
from .registry import MODELS, build_model, register_model
from .sampling import generate
from .transformer import Transformer, num_params   # registers "transformer"
from . import energy_transformer  # noqa: F401  (registers "energy_transformer")
from . import bst  # noqa: F401  (registers "bst")
from . import zamba  # noqa: F401  (registers "zamba")

__all__ = ["AttentionConfig", "ModelConfig", "MODELS", "build_model", "register_model",
           "generate", "Transformer", "num_params"]
