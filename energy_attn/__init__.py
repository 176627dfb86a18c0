"""energy-attn: attention defined only through a scalar energy.

    out = ea.attend("softmax", q, k, v, mask=ea.causal())   # = ∂F/∂ζ at ζ = 0
"""
from . import energies  # noqa: F401  (registers the built-in energies)
from . import energy_transformer, hopfield  # noqa: F401  (the ET energy registers itself)
from .contract import attend, attend_with_energy, attention_weights, posterior_covariance
from .masks import (Mask, alibi, alibi_slopes, bias, causal, explicit, lengths, padding,
                    segments, sliding_window)
from .primitives import allowed_pairs, dot_scores, logsumexp, scores, source
from .registry import available_energies, get_energy, register_energy

__all__ = [
    "attend", "attend_with_energy", "attention_weights", "posterior_covariance",
    "Mask", "alibi", "alibi_slopes", "bias", "causal", "explicit", "lengths", "padding",
    "segments", "sliding_window",
    "allowed_pairs", "dot_scores", "logsumexp", "scores", "source",
    "available_energies", "get_energy", "register_energy",
]
from .kv_cache import KVCache  # noqa: E402
from .layer import EnergyAttention  # noqa: E402
from .rope import apply_rope  # noqa: E402
__all__ += ["EnergyAttention", "KVCache", "apply_rope"]
