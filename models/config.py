"""Typed model configuration. Models read these; they know nothing of training."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class AttentionConfig:
    energy: str = "softmax"                 # any registered energy name
    energy_params: dict[str, Any] = field(default_factory=dict)   # e.g. {beta: 0.5} or {alpha: 1.5}
    num_kv_heads: int | None = None         # grouped-query attention (default: num_heads)
    rope: bool = True                       # rotary position embeddings on q and k (self-attention)
    rope_base: float = 10000.0              # RoPE frequency base (longer contexts: larger)
    segment_mask: bool = True               # packed documents do not attend across boundaries


@dataclass
class SSMConfig:
    """Mamba layers (the Zamba-like hybrid's backbone). Owned by models/mamba.py."""
    kind: str = "mamba1"                    # "mamba1" (selective scan) or "mamba2" (SSD, chunked)
    state_dim: int = 16                     # N: SSM state size per channel
    expand: int = 2                         # D_inner = expand * d_model
    conv_width: int = 4                     # depthwise causal conv kernel
    chunk_size: int = 64                    # scan chunk length (memory vs parallelism)
    head_dim: int = 32                      # mamba2 only: P, channels per SSD head (must divide D_inner)
    remat: bool = True                      # recompute the mixer's activations in the backward pass (as
                                            # Mamba's own kernels do): a layer keeps its input, not ~20
                                            # D_inner-wide tensors; costs about one more forward


@dataclass
class ZambaConfig:
    """The hybrid's shared attention block(s). Owned by models/zamba.py."""
    shared_every: int = 2                   # apply the shared block before every k-th Mamba layer
    num_shared_blocks: int = 1              # 1, or 2 alternating ABAB (Zamba2)
    lora_rank: int = 0                      # per-application LoRA on the shared q/k/v/MLP inputs; 0 = off


@dataclass
class BSTConfig:
    """Block-State Transformer. Owned by models/bst.py."""
    variant: str = "mh"                     # "sh" single-head, "mh" multi-head, "mf" multi-filter
    block_len: int = 64                     # W: tokens per attention block
    state_dim: int = 16                     # N: S4D state size per channel (N/2 complex modes; even)
    num_context_states: int = 4             # S: states each block cross-attends to (mh, mf; sh uses W)
    num_filters: int = 2                    # mf only: SSM filters, each gives the last S/num_filters outputs
    bst_every: int = 1                      # every k-th layer is a BST layer; the rest attend in-block only
    dt_min: float = 1e-3                    # S4D step size Δ, log-uniform in [dt_min, dt_max] at init
    dt_max: float = 1e-1                    # upper end of the Δ initialisation range
    conv: str = "chunked"                   # SSM convolution: "chunked" (the recurrence one block at a
                                            # time, linear in T) or "fft" (the paper's, O(T log T)); same result


@dataclass
class EnergyTransformerConfig:
    """The Energy Transformer's descent. Owned by models/energy_transformer.py."""
    steps: int = 12                         # descent steps x <- x - alpha dE/dg of the one weight-tied block
    alpha: float = 0.1                      # step size of the descent (Hoover et al.: 0.1)
    num_memories: int = 0                   # Hopfield memories xi (they replace the MLP); 0: mlp_ratio * d_model


@dataclass
class ModelConfig:
    name: str = "transformer"               # key in models.registry
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
    ssm: SSMConfig = field(default_factory=SSMConfig)          # zamba
    zamba: ZambaConfig = field(default_factory=ZambaConfig)    # zamba
    bst: BSTConfig = field(default_factory=BSTConfig)          # bst
    energy_transformer: EnergyTransformerConfig = field(default_factory=EnergyTransformerConfig)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)
