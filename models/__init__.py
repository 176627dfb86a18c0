"""Model zoo (transformer, Zamba-like hybrid, Block-State Transformer, Energy Transformer).

Every model plugs in `energy_attn.EnergyAttention`. Importing this package
registers every model with its config class, so `build_model(cfg)` finds it by
`cfg.name` and `config_class(name)` gives the class of its config.
"""
from .config import AttentionConfig, ModelConfig
from .registry import MODELS, build_model, config_class, register_model
from .sampling import generate
from .transformer import Transformer, num_params   # registers "transformer" (ModelConfig)
from .mamba import SSMConfig
from .zamba import SharedBlockConfig, ZambaConfig   # registers "zamba"
from .bst import BSTConfig, BSTLayerConfig   # registers "bst"
from .energy_transformer import DescentConfig, EnergyTransformerConfig   # registers "energy_transformer"

__all__ = ["AttentionConfig", "ModelConfig", "ZambaConfig", "SSMConfig", "SharedBlockConfig",
           "BSTConfig", "BSTLayerConfig", "EnergyTransformerConfig", "DescentConfig",
           "MODELS", "build_model", "config_class", "register_model",
           "generate", "Transformer", "num_params"]
