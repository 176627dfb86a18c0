"""Open a finished (or running) run directory: its config, tokenizer and model
restored from a checkpoint. Used by `energy-attn eval` and `energy-attn sample`."""
from __future__ import annotations

from pathlib import Path

from flax import nnx

from models import build_model
from train.checkpoints.checkpoint import Checkpointer, path_str
from train.config import Config, load_config
from train.data.tokenizer import CharTokenizer, build_tokenizer


class RunNotFound(FileNotFoundError):
    pass


def load_run(run_dir: str | Path, *, which: str = "latest"):
    """(cfg, tokenizer, model, step) for `run_dir`; which = "latest" or "best"."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise RunNotFound(f"{run_dir} is not a run directory (no config.yaml); "
                          "train one with `energy-attn train`")
    cfg: Config = load_config(str(run_dir / "config.yaml"), check=False)  # a saved run may use a custom energy
    cfg.train.run_dir = str(run_dir)
    model = build_model(cfg.model, rngs=nnx.Rngs(0))
    with Checkpointer(run_dir, keep=cfg.checkpoint.keep, keep_best=cfg.checkpoint.keep_best) as ckpt:
        target = {"model": nnx.state(model)}
        restored = ckpt.restore_latest(target, which=which, partial=True)
    if restored is None:
        raise RunNotFound(f"{run_dir} has no restorable checkpoint yet")
    step, state, meta = restored
    bad = _first_nonfinite(state["model"])
    if bad is not None:
        raise RunNotFound(f"checkpoint step {step} of {run_dir} holds non-finite parameters "
                          f"({bad}): the run had diverged when it was saved; use an earlier "
                          "checkpoint (--checkpoint best) or retrain")
    nnx.update(model, state["model"])
    tokenizer = _tokenizer(cfg, meta)
    return cfg, tokenizer, model, step


def _first_nonfinite(state) -> str | None:
    """The path of the first floating array holding NaN or inf, else None."""
    import jax
    import jax.numpy as jnp
    for path, x in jax.tree_util.tree_flatten_with_path(state)[0]:
        if jnp.issubdtype(x.dtype, jnp.floating) and not bool(jnp.isfinite(x).all()):
            return path_str(path)
    return None


def _tokenizer(cfg: Config, meta: dict):
    saved = meta.get("tokenizer")
    if cfg.data.tokenizer == "char":
        if not saved:
            raise RunNotFound("the checkpoint has no saved character vocabulary")
        return CharTokenizer.from_dict(saved)
    if cfg.data.source == "cache" and cfg.data.cache_dir:
        # The cache keeps its own tokenizer copy: eval/sample work offline, like training.
        from train.data.token_cache import TokenCache
        return TokenCache(cfg.data.cache_dir).tokenizer(cfg.data.tokenizer)
    return build_tokenizer(cfg.data.tokenizer)
