"""Typed experiment configuration (Levanter-style): dataclasses, loaded from YAML,
with dotted command-line overrides such as `model.num_layers=4`."""
from __future__ import annotations

from dataclasses import dataclass, field

from models.config import AttentionConfig, ModelConfig  # noqa: F401  (re-exported)


@dataclass
class DataConfig:
    source: str = "builtin"          # "builtin" | "text" (local .txt/.jsonl/.parquet) | "hf"
    path: str | None = None          # local file or glob, for source=text
    hf_path: str | None = None       # e.g. "Zyphra/Zyda"
    hf_name: str | None = None       # e.g. "zyda_arxiv_only"
    hf_split: str = "train"
    text_column: str = "text"
    tokenizer: str = "byte"          # "byte" | "char" | a Hugging Face tokenizer name
    seq_len: int = 256               # tokens per training sequence (the model's block size)
    val_fraction: float = 0.05       # held-out share of documents (deterministic by hash)
    val_max_docs: int = 1000         # cap for streamed sources
    shuffle_buffer: int = 1000       # documents, for streamed sources
    pack_documents: bool = True      # pack docs with EOS separators + segment ids


@dataclass
class OptimConfig:
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    grad_accum: int = 1


@dataclass
class MeshConfig:
    data: int = 1
    seq: int = 1                     # sequence sharding: the tree-attention issue


@dataclass
class CheckpointConfig:
    every: int = 250                 # steps between saves (and evals)
    keep: int = 3
    keep_best: bool = True           # also keep the best by val loss
    resume: bool = True              # continue from the run directory's latest checkpoint


@dataclass
class LoggingConfig:
    wandb: str = "auto"              # "online" | "offline" | "disabled" | "auto" (offline unless an API key is set)
    project: str = "energy-attn"
    log_every: int = 10
    progress_bar: bool = True


@dataclass
class TrainConfig:
    run_dir: str = "runs/default"
    seed: int = 0
    steps: int = 500
    batch_size: int = 16
    eval_every: int = 250
    eval_batches: int = 10
    sample_every: int = 0            # 0: only at the end
    sample_tokens: int = 200
    temperature: float = 0.8
    top_k: int = 40
    on_nonfinite: str = "stop"       # "stop" | "skip"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
