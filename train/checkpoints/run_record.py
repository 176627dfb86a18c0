"""A run directory is the record of one experiment: the config it holds is the config its
checkpoints were trained with.

    changes = config_changes(run_dir, cfg)               # {key: (saved, now)}, {} for a new run
    check_changes(run_dir, changes, allow=False)         # raises ConfigChanged on a new experiment
    record_changes(run_dir, step, changes, how="...")    # config_history.jsonl

Changing a key that defines the experiment (train.config.defines_experiment: model, data,
optimizer, seed, batch size) is refused unless the caller allows it explicitly
(`energy-attn train --allow-config-change`); train.steps may change (to train a finished
run longer) as long as it stays at or above the step the run has reached. Every change
that goes through is appended to <run_dir>/config_history.jsonl with the step at which it
took effect, and config.yaml always holds the config now in force.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from train.config import Config, defines_experiment, flat_dict, to_dict

HISTORY = "config_history.jsonl"


class ConfigChanged(ValueError):
    """The run directory holds a run of another experiment."""


def resolved(cfg: Config) -> dict[str, Any]:
    """The config as the trainer will save it: the context grows to data.seq_len."""
    flat = flat_dict(to_dict(cfg))
    flat["model.max_seq_len"] = max(cfg.model.max_seq_len, cfg.data.seq_len)
    return flat


def saved_config(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigChanged(f"{path} cannot be read ({type(e).__name__}); the run directory's "
                            "record is damaged: train into another train.run_dir") from None
    return flat_dict(data) if isinstance(data, dict) else {}


def config_changes(run_dir: str | Path, cfg: Config) -> dict[str, tuple[Any, Any]]:
    """{key: (saved value, current value)} over the keys both configs have (a key added or
    removed by a newer energy-attn is not a change of the experiment); {} for a new run."""
    saved = saved_config(run_dir)
    if saved is None:
        return {}
    now = resolved(cfg)
    return {k: (saved[k], now[k]) for k in now
            if k in saved and k not in ("train.run_dir", "model.vocab_size") and saved[k] != now[k]}


def experiment_changes(changes: dict) -> dict:
    return {k: v for k, v in changes.items() if defines_experiment(k) and k != "train.steps"}


def _show(changes: dict, limit: int = 3) -> str:
    items = [f"{k} is {old!r} there, {new!r} here" for k, (old, new) in changes.items()]
    more = f" (and {len(items) - limit} more: {', '.join(list(changes)[limit:])})" if len(items) > limit else ""
    return "; ".join(items[:limit]) + more


def check_changes(run_dir: str | Path, changes: dict, *, allow: bool) -> None:
    """Raise ConfigChanged (one line, both fixes) if `changes` alter the experiment."""
    defining = experiment_changes(changes)
    if defining and not allow:
        raise ConfigChanged(
            f"{run_dir} holds a run with another config: {_show(defining)}. Train into a new "
            f"directory (train.run_dir=...), or continue this run with the change using "
            f"--allow-config-change (recorded in {Path(run_dir) / HISTORY})")


def record_changes(run_dir: str | Path, step: int, changes: dict, *, how: str) -> None:
    if not changes:
        return
    row = {"step": step, "time": time.strftime("%Y-%m-%d %H:%M:%S"), "how": how,
           "changes": {k: [old, new] for k, (old, new) in changes.items()}}
    with open(Path(run_dir) / HISTORY, "a") as f:
        f.write(json.dumps(row) + "\n")


def read_history(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / HISTORY
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
