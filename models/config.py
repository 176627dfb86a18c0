"""Typed model configuration. Models read these; they know nothing of training.

`ModelConfig` is the transformer's config and holds what every model of the zoo shares
(vocabulary, width, depth, heads, MLP, attention). Each other model subclasses it in its
own module and adds its own section, so a config object only has the knobs its model reads:

    ModelConfig                  models/config.py              (transformer)
    ZambaConfig(ModelConfig)     models/zamba.py               + ssm, zamba
    BSTConfig(ModelConfig)       models/bst.py                 + bst
    EnergyTransformerConfig      models/energy_transformer.py  + energy_transformer

A config checks itself: `cfg.errors(seq_len=..., seq_pieces=...)` lists one message per
bad option or combination (a subclass adds its own to its parent's). The registry maps
`name` to the model's builder and config class (models/registry.py).
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass
class AttentionConfig:
    energy: str = "softmax"                 # any registered energy name
    energy_params: dict[str, Any] = field(default_factory=dict)   # keyword arguments of the energy,
                                            # e.g. {beta: 0.5} (softmax) or {alpha: 1.5} (entmax)
    num_kv_heads: int | None = None         # grouped-query attention (default: num_heads)
    rope: bool = True                       # rotary position embeddings on q and k (self-attention)
    rope_base: float = 10000.0              # RoPE frequency base (longer contexts: larger)
    segment_mask: bool = True               # packed documents do not attend across boundaries


MLPS = ("swiglu", "gelu")
COMPUTE_DTYPES = ("float32", "bfloat16")


@dataclass
class ModelConfig:
    """The transformer's config, and the fields every model shares."""
    name: str = "transformer"               # key in models.registry; picks the config class too
    vocab_size: int = 256                   # set from the tokenizer by the trainer
    max_seq_len: int = 128                  # longest sequence (RoPE positions, KV cache size)
    d_model: int = 128                      # width of the residual stream
    num_layers: int = 4                     # blocks (zamba: Mamba layers; energy_transformer: ignored)
    num_heads: int = 4                      # attention heads (head dim d_model // num_heads)
    mlp: str = "swiglu"                     # "swiglu" or "gelu"
    mlp_ratio: float = 4.0                  # hidden = mlp_ratio * d_model (SwiGLU: 2/3 of that, rounded)
    tie_embeddings: bool = True             # the LM head reuses the token embedding matrix
    dropout: float = 0.0                    # dropout on residual branches during training
    norm_eps: float = 1e-6                  # epsilon of RMSNorm
    compute_dtype: str = "float32"          # "float32" or "bfloat16"
    attention: AttentionConfig = field(default_factory=AttentionConfig)

    # The sections this class adds to its parent's fields (documented per model).
    own_sections: ClassVar[tuple[str, ...]] = ()

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def errors(self, *, seq_len: int | None = None, seq_pieces: int = 1) -> list[str]:
        """One message per invalid option; `seq_len` (training rows, when known and valid)
        and `seq_pieces` (pieces per row across devices, 1 unsharded) let a model check
        that training shapes fit it. Subclasses extend this list."""
        a, errors = self.attention, []

        def need(ok: bool, msg: str):
            if not ok:
                errors.append(msg)

        for key in ("vocab_size", "max_seq_len", "d_model", "num_layers", "num_heads"):
            value = getattr(self, key)
            need(value >= 1, f"model.{key} must be >= 1, got {value}")
        if self.num_heads >= 1 and self.d_model >= 1:
            need(self.d_model % self.num_heads == 0,
                 f"model.d_model={self.d_model} is not divisible by model.num_heads={self.num_heads} "
                 "(each head gets d_model // num_heads features)")
            head_dim = self.d_model // self.num_heads
            need(not (a.rope and self.d_model % self.num_heads == 0 and head_dim % 2),
                 f"RoPE rotates pairs of features, so the head dim d_model/num_heads = {head_dim} "
                 "must be even (change model.d_model/model.num_heads or set model.attention.rope=false)")
        if a.num_kv_heads is not None:
            need(a.num_kv_heads >= 1, f"model.attention.num_kv_heads must be >= 1, got {a.num_kv_heads}")
            if a.num_kv_heads >= 1 and self.num_heads >= 1:
                need(self.num_heads % a.num_kv_heads == 0,
                     f"model.num_heads={self.num_heads} is not divisible by model.attention.num_kv_heads="
                     f"{a.num_kv_heads} (grouped-query attention shares each K/V head across a whole "
                     "group of query heads)")
        errors.append(one_of("model.mlp", self.mlp, MLPS))
        errors.append(one_of("model.compute_dtype", self.compute_dtype, COMPUTE_DTYPES))
        need(self.mlp_ratio > 0, f"model.mlp_ratio must be > 0, got {self.mlp_ratio}")
        need(0.0 <= self.dropout < 1.0, f"model.dropout must be in [0, 1), got {self.dropout}")
        need(self.norm_eps > 0, f"model.norm_eps must be > 0, got {self.norm_eps}")
        need(a.rope_base > 0, f"model.attention.rope_base must be > 0, got {a.rope_base}")
        errors.extend(self.energy_errors())
        if seq_len is not None:
            need(self.max_seq_len >= seq_len,
                 f"model.max_seq_len={self.max_seq_len} is shorter than data.seq_len={seq_len}; "
                 "the model could not embed the positions of a training sequence")
        return [e for e in errors if e]

    def energy_errors(self) -> list[str]:
        """model.attention.energy is registered and energy_params are its keyword arguments
        (caught here, not inside jit). A model with its own energy overrides this."""
        import energy_attn    # late: loads JAX, which reading a config does not need
        a = self.attention
        names = energy_attn.available_energies()
        if a.energy not in names:
            close = difflib.get_close_matches(a.energy, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            return [f"unknown energy model.attention.energy={a.energy!r}{hint} (registered: "
                    f"{', '.join(names)}; register your own with energy_attn.register_energy)"]
        try:
            sig = inspect.signature(energy_attn.get_energy(a.energy))
        except (TypeError, ValueError):
            return []
        if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            return []
        accepted = [n for n, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY and n != "mask"]
        return [f"model.attention.energy_params.{k}: energy {a.energy!r} has no parameter {k!r} "
                f"(its parameters: {', '.join(accepted) or 'none'})" for k in a.energy_params if k not in accepted]


def one_of(key: str, value: Any, allowed: tuple[str, ...] | list[str]) -> str | None:
    """None if `value` is allowed, else a message with a did-you-mean."""
    if value in allowed:
        return None
    close = difflib.get_close_matches(str(value), list(allowed), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{key}={value!r} is not one of {', '.join(map(repr, allowed))}{hint}"
