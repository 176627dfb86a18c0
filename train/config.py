"""Typed experiment configuration (Levanter-style): dataclasses, loaded from YAML,
with dotted command-line overrides such as `model.num_layers=4`.

    cfg = load_config("configs/shakespeare_char.yaml", ["model.attention.energy=sigmoid"])

`load_config` checks every value against its field's type and every option
combination (`validate`, MaxText-style: one specific message per problem).
`dump_yaml` writes the resolved config; `config_reference()` is the key table.

`model` holds the config class of the model it names (models/registry.py): a ModelConfig
for the transformer, a ZambaConfig (+ model.ssm, model.zamba), a BSTConfig (+ model.bst),
an EnergyTransformerConfig (+ model.energy_transformer). Setting model.name picks the
class; a section of another model is an error that names its model. The model config
checks itself (`ModelConfig.errors`); `validate` adds the rules of the other sections.

Why plain dataclasses and not draccus, pydantic or OmegaConf: the errors users see are
the point. This loader names the full dotted key with a did-you-mean for unknown keys,
lists every problem of a config at once (one line each, including rules across sections
such as data.seq_len vs mesh.seq), and refuses overrides that would change what a run
directory holds. pydantic reports all field-type errors with their locations, but has no
did-you-mean ("Extra inputs are not permitted") and the cross-section rules would remain
validators we write; draccus and OmegaConf stop at the first bad value. Each would add a
dependency without removing this code.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import inspect
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from models.config import AttentionConfig, ModelConfig, one_of  # noqa: F401  (AttentionConfig: re-exported)


@dataclass
class DataConfig:
    source: str = "builtin"          # "builtin" | "text" (local .txt/.jsonl/.parquet) | "hf" | "cache"
    path: str | None = None          # local file or glob, for source=text
    cache_dir: str | None = None     # directory written by `energy-attn data prepare`, for source=cache
    hf_path: str | None = None       # e.g. "Zyphra/Zyda"
    hf_name: str | None = None       # e.g. "zyda_arxiv_only"
    hf_split: str = "train"          # split of the HF dataset
    text_column: str = "text"        # document field in .jsonl/.parquet/HF rows
    tokenizer: str = "byte"          # "byte" | "char" | a Hugging Face tokenizer name
    seq_len: int = 128               # tokens per training sequence (the model's block size)
    val_fraction: float = 0.05       # held-out share of documents (deterministic by hash)
    val_max_docs: int = 1000         # cap for streamed sources
    shuffle_buffer: int = 1000       # documents, for streamed sources
    pack_documents: bool = True      # pack docs with EOS separators + segment ids


@dataclass
class OptimConfig:
    lr: float = 2e-3                 # peak learning rate (after linear warmup)
    min_lr: float = 2e-4             # cosine decay ends here at train.steps
    warmup_steps: int = 50          # linear warmup from 0 to lr (a tenth of the run if the run is shorter)
    weight_decay: float = 0.1        # AdamW decay, matrices only (not norms/biases)
    beta1: float = 0.9               # AdamW first-moment decay
    beta2: float = 0.99              # AdamW second-moment decay
    grad_clip: float = 1.0           # global-norm gradient clipping
    grad_accum: int = 1              # micro-batches per step (train.batch_size is split into these)


@dataclass
class MeshConfig:
    data: int = 1                    # data-parallel devices (the batch is split over them)
    seq: int = 1                     # sequence-sharded devices (attention reduced across them)
    seq_layout: str = "dual_chunk"   # "dual_chunk" (device i holds chunks i and 2p-1-i) or "contiguous"


@dataclass
class CheckpointConfig:
    every: int = 200                 # steps between checkpoint saves
    keep: int = 3                    # most recent checkpoints kept
    keep_best: bool = True           # also keep the best by val loss
    resume: bool = True              # continue from the run directory's latest checkpoint


@dataclass
class LoggingConfig:
    wandb: str = "auto"              # "online" | "offline" | "disabled" | "auto" (offline unless an API key is set)
    project: str = "energy-attn"     # W&B project
    log_every: int = 10              # steps between metric logs
    progress_bar: bool = True        # tqdm bar on the terminal


@dataclass
class TrainConfig:
    run_dir: str = "runs/default"    # checkpoints, config.yaml, metrics, samples
    seed: int = 0                    # parameters, dropout, data order, sampling
    steps: int = 600                 # optimizer steps
    batch_size: int = 16             # sequences per step (global, over all devices)
    eval_every: int = 200            # steps between validation evals
    eval_batches: int = 10           # batches per validation eval
    sample_every: int = 0            # steps between samples appended to samples.txt (0: only at the end)
    sample_tokens: int = 200         # tokens per generated sample
    temperature: float = 0.8         # sampling temperature
    top_k: int = 40                  # sample among the k likeliest tokens (0: all)
    on_nonfinite: str = "stop"       # "stop" | "skip" (skip the update of a step whose loss or gradient is NaN/inf)
    max_skipped_steps: int = 10      # on_nonfinite=skip: stop after this many skipped steps in a row


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


# =========================================================================== loading
# Defaults <- YAML file <- dotted overrides, each value checked against the field's
# annotation, then `validate`. Errors name the full dotted key, as MaxText does.


def load_config(path: str | None, overrides: Sequence[str] | None = (), *,
                check: bool = True) -> Config:
    """Defaults, then the YAML file at `path` (if any), then `overrides` such as
    "model.num_layers=4" or "model.attention.energy_params.alpha=1.5"; then `validate`.

    `check=False` skips `validate` (for tools that only read a config, e.g. one whose
    energy was registered by the training script and is unknown here)."""
    cfg = Config()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        with open(p) as f:
            try:
                data = yaml.safe_load(f)
            except yaml.YAMLError as e:
                raise ValueError(f"config file {path} is not valid YAML: {e}") from None
        if data is None:          # an empty file (or only comments) means "all defaults"
            data = {}
        if not isinstance(data, Mapping):
            raise ValueError(f"config file {path} must hold a mapping of sections "
                             f"(model:, data:, optim:, ...), got {type(data).__name__}")
        _merge(cfg, _moved_keys(data, path), "")
        if "run_dir" not in (data.get("train") or {}):
            cfg.train.run_dir = f"runs/{p.stem}"      # a config's runs are named after it
    before = to_dict(cfg)
    apply_overrides(cfg, overrides)
    if not _sets_run_dir(overrides, before, cfg):
        cfg.train.run_dir = derived_run_dir(cfg.train.run_dir, before, to_dict(cfg))
    if check:
        validate(cfg)
    return cfg


# =========================================================================== one run, one experiment
# A run directory holds one experiment. These keys define it: a run continued with any of
# them changed would mix two experiments (train/checkpoints/run_record.py refuses that). The others
# (where and how often to log, evaluate, checkpoint; the device mesh; micro-batching, which
# computes the same step) can change between sessions of one run.

EXPERIMENT_SECTIONS = ("model.", "data.", "optim.")
EXPERIMENT_KEYS = ("train.seed", "train.batch_size", "train.steps")
NOT_EXPERIMENT = ("model.vocab_size",      # set from the tokenizer by the trainer
                  "optim.grad_accum")      # same step, split into micro-batches


def defines_experiment(key: str) -> bool:
    """Whether dotted `key` (or a key inside a dict-valued one, e.g.
    model.attention.energy_params.beta) is part of what the experiment is."""
    if key in NOT_EXPERIMENT:
        return False
    return key.startswith(EXPERIMENT_SECTIONS) or key in EXPERIMENT_KEYS


def flat_dict(d: Mapping, prefix: str = "") -> dict[str, Any]:
    """{"model": {"d_model": 128}} -> {"model.d_model": 128}; dict values are flattened too."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(flat_dict(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def run_name(keys: Sequence[str], values: Sequence[Any]) -> str:
    """A filesystem-safe name from key/value pairs: `energy-softmax__seed-0`. A key is
    named by its last part unless two keys share it; long names end in a short hash."""
    leaves = [k.rsplit(".", 1)[-1] for k in keys]
    labels = [leaf if leaves.count(leaf) == 1 else k for leaf, k in zip(leaves, keys)]
    name = "__".join(f"{_slug(lab)}-{_slug(str(v))}" for lab, v in zip(labels, values))
    if len(name) > 120:
        raw = "\n".join(f"{k}={v}" for k, v in zip(keys, values))
        name = f"{name[:100]}__{hashlib.blake2b(raw.encode(), digest_size=3).hexdigest()}"
    return name


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_")[:60] or "_"


def derived_run_dir(base: str, before: Mapping, after: Mapping) -> str:
    """`base` plus the experiment keys the overrides changed: `energy-attn train
    model.attention.energy=sigmoid` trains into runs/default__energy-sigmoid, never into
    runs/default. Overrides that change nothing, or only how the run is logged or
    checkpointed, keep `base`."""
    old, new = flat_dict(before), flat_dict(after)
    # A key that only exists since model.name picked another model's config class counts
    # as changed if it differs from that class's default.
    old = {**flat_dict({"model": to_dict(model_config_class(new.get("model.name", ""))())}), **old}
    changed = [k for k in new if defines_experiment(k) and old.get(k, _MISSING) != new[k]]
    if not changed:
        return base
    return f"{base.rstrip('/')}__{run_name(changed, [new[k] for k in changed])}"


_MISSING = object()


def _sets_run_dir(overrides: Sequence[str] | str | None, before: Mapping, cfg: "Config") -> bool:
    if cfg.train.run_dir != before["train"]["run_dir"]:
        return True
    if isinstance(overrides, str):
        overrides = [overrides]
    keys = {item.partition("=")[0].strip().removeprefix("--") for item in overrides or ()}
    return bool(keys & {"train.run_dir", "train"})


# Keys that moved, as (old dotted key, new dotted key): configs and run directories written
# before the move still load, with a warning naming the new key.
MOVED_KEYS = [(f"model.attention.energy_params.{k}", f"model.energy_transformer.{k}")
              for k in ("steps", "alpha", "num_memories")]


def _moved_keys(data: Mapping[str, Any], where) -> Mapping[str, Any]:
    """`data` with every MOVED_KEYS old key (of an energy_transformer model) at its new place."""
    import copy
    import warnings
    model = data.get("model") if isinstance(data, Mapping) else None
    if not isinstance(model, Mapping) or model.get("name") != "energy_transformer":
        return data
    data = copy.deepcopy(dict(data))
    for old, new in MOVED_KEYS:
        *old_path, old_leaf = old.split(".")
        *new_path, new_leaf = new.split(".")
        parent = data
        for part in old_path:
            parent = parent.get(part) if isinstance(parent, Mapping) else None
        if not isinstance(parent, dict) or old_leaf not in parent:
            continue
        value = parent.pop(old_leaf)
        target = data
        for part in new_path:
            target = target.setdefault(part, {})
        target.setdefault(new_leaf, value)
        warnings.warn(f"{where}: {old} is now {new}; read as such (rewrite the file to silence this)",
                      stacklevel=3)
    return data


def from_dict(data: Mapping[str, Any], overrides: Sequence[str] = (), *, check: bool = True) -> Config:
    """Like `load_config`, from an already-parsed nested mapping (e.g. `to_dict` output)."""
    cfg = Config()
    _merge(cfg, _moved_keys(data, "the config"), "")
    apply_overrides(cfg, overrides)
    if check:
        validate(cfg)
    return cfg


def apply_overrides(cfg: Config, overrides: Sequence[str] | None) -> Config:
    """Apply "dotted.key=value" strings to `cfg` in place (no validation) and return it.
    Values are YAML ("4", "1.5", "true", "null", "{beta: 0.5}", "[1, 2]")."""
    if overrides is None:
        overrides = ()
    elif isinstance(overrides, str):  # a lone string would be iterated character by character
        overrides = [overrides]
    # model.name first: it picks the config class that the model's other keys belong to.
    overrides = sorted(overrides, key=lambda item: item.partition("=")[0].strip().removeprefix("--")
                       != "model.name")
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if key.startswith("--"):      # tolerate Levanter/argparse spelling --model.num_layers=4
            key = key[2:]
        if not sep or not key:
            raise ValueError(f"override {item!r} is not KEY=VALUE; write e.g. model.num_layers=4 "
                             "(dotted key, '=', YAML value; null for None)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw               # not YAML: take the text literally (checked against the type below)
        _set_dotted(cfg, key, value, raw.strip())
    return cfg


def _hints(cls) -> dict[str, Any]:
    # Annotations are strings (`from __future__ import annotations`); resolve them once.
    cached = _HINTS.get(cls)
    if cached is None:
        cached = _HINTS[cls] = typing.get_type_hints(cls)
    return cached


_HINTS: dict[type, dict[str, Any]] = {}


def _merge(obj, data: Mapping, prefix: str) -> None:
    """Merge a nested mapping into dataclass `obj` in place, field by field."""
    if isinstance(obj, Config) and isinstance(data.get("model"), Mapping) and "name" in data["model"]:
        _set_model_name(obj, data["model"]["name"])        # first: the name picks the model's class
    for k, v in data.items():
        key = f"{prefix}{k}"
        names = {f.name for f in dataclasses.fields(obj)}
        if not isinstance(k, str) or k not in names:
            if isinstance(obj, ModelConfig) and _old_default_section(obj, k, v):
                continue
            raise ValueError(_unknown_key_message(key, prefix, model=obj if isinstance(obj, ModelConfig)
                                                  else None))
        tp = _hints(type(obj))[k]
        if dataclasses.is_dataclass(tp):
            if not isinstance(v, Mapping):
                raise ValueError(f"config key {key!r} is a section ({tp.__name__}); expected a mapping, "
                                 f"got {v!r}")
            _merge(getattr(obj, k), v, key + ".")
        else:                 # scalars and dicts (energy_params) are replaced, not merged
            setattr(obj, k, _coerce(v, tp, key))


def _set_model_name(cfg: Config, value: Any, raw: str | None = None) -> None:
    """Set model.name and give cfg.model its model's config class, keeping the shared fields
    (and the sections both classes have); the old model's own sections are dropped."""
    name = _coerce(value, str, "model.name", raw=raw)
    cls = model_config_class(name)
    old = cfg.model
    if type(old) is not cls:
        kept = {f.name: getattr(old, f.name) for f in dataclasses.fields(cls)
                if f.name != "name" and hasattr(old, f.name)}
        cfg.model = cls(**kept)
    cfg.model.name = name


def model_config_class(name: str) -> type[ModelConfig]:
    """The config class of model `name` (ModelConfig for an unknown name: validate says why)."""
    import models    # noqa: F401  (late: registers the zoo, which loads JAX; --help does not need it)
    from models.registry import config_class
    return config_class(name)


def _model_classes() -> list[type[ModelConfig]]:
    """ModelConfig and every registered model's config class."""
    import models    # noqa: F401
    from models.registry import CONFIG_CLASSES
    return list(dict.fromkeys([ModelConfig, *CONFIG_CLASSES.values()]))


def _section_owners(section: str) -> list[str]:
    """Registered models whose config class adds `section` (model.ssm -> ['zamba'])."""
    from models.registry import CONFIG_CLASSES
    return sorted(n for n, cls in CONFIG_CLASSES.items() if section in cls.own_sections)


def _old_default_section(model: ModelConfig, section: Any, value: Any) -> bool:
    """Whether `section` is another model's section at its defaults. Configs written before
    each model had its own config class hold every model's sections; those load as before."""
    for cls in _model_classes():
        if section in cls.own_sections and isinstance(value, Mapping):
            defaults = flat_dict(to_dict(getattr(cls(), section)))
            given = flat_dict(value)
            return all(k in defaults and defaults[k] == v for k, v in given.items())
    return False


def _set_dotted(cfg: Config, key: str, value: Any, raw: str) -> None:
    parts = key.split(".")
    if key == "model.name":
        _set_model_name(cfg, value, raw)
        return
    obj, prefix = cfg, ""
    for i, name in enumerate(parts):
        full = prefix + name
        names = {f.name for f in dataclasses.fields(obj)}
        if name not in names:
            raise ValueError(_unknown_key_message(full, prefix, parts[i + 1:],
                                                  model=obj if isinstance(obj, ModelConfig) else None))
        tp = _hints(type(obj))[name]
        rest = parts[i + 1:]
        if dataclasses.is_dataclass(tp):
            if not rest:              # `model={num_layers: 2}`: merge a whole section
                if not isinstance(value, Mapping):
                    raise ValueError(f"config key {full!r} is a section ({tp.__name__}); expected a "
                                     f"mapping such as {{key: value}}, got {raw!r}")
                if obj is cfg:
                    _merge(cfg, {name: value}, "")       # `model={name: zamba, ...}` picks the class
                else:
                    _merge(getattr(obj, name), value, full + ".")
                return
            obj, prefix = getattr(obj, name), full + "."
            continue
        if not rest:
            setattr(obj, name, _coerce(value, tp, full, raw=raw))
            return
        if typing.get_origin(tp) is dict:   # free-form mapping: `energy_params.alpha=1.5`
            d = dict(getattr(obj, name))
            node = d
            for sub in rest[:-1]:
                child = node.get(sub)
                node[sub] = child = dict(child) if isinstance(child, Mapping) else {}
                node = child
            node[rest[-1]] = value
            setattr(obj, name, _coerce(d, tp, full))
            return
        raise ValueError(f"config key {full!r} holds a value ({_type_name(tp)}), not a section; "
                         f"cannot set {key!r}")


def _unknown_key_message(key: str, prefix: str, rest: Sequence[str] = (),
                         model: ModelConfig | None = None) -> str:
    """`unknown config key 'model.num_layer'; did you mean 'model.num_layers'?`

    `key` is the path up to the unknown name, `prefix` its parent path (with the dot),
    `rest` the override's remaining parts ("modle.num_layers": key "modle", rest ["num_layers"]);
    `model` the model config the key was looked up in."""
    leaf = key.rsplit(".", 1)[-1]
    owners = _section_owners(leaf) if model is not None and prefix == "model." else []
    if owners:
        return (f"config key {key!r} is a setting of model.name={' or '.join(map(repr, owners))}, "
                f"and this config's model is {model.name!r}; set model.name={owners[0]} (or drop {key})")
    keys = all_keys()
    by_leaf: dict[str, list[str]] = {}
    for k in keys:
        by_leaf.setdefault(k.rsplit(".", 1)[-1], []).append(k)
    siblings = [k for k in keys if k.startswith(prefix) and "." not in k[len(prefix):]]
    # 1. The right name in the wrong section (train.lr -> optim.lr, num_layers -> model.num_layers).
    guess = [k for k in by_leaf.get(leaf, []) if k != key]
    # 2. A typo inside the right section (compare names, not paths: the shared prefix would
    #    make every sibling look close).
    if not guess:
        close = difflib.get_close_matches(leaf, [k[len(prefix):] for k in siblings], n=1, cutoff=0.6)
        guess = [prefix + c for c in close]
    # 3. A typo in the wrong section.
    if not guess:
        close = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.8)
        guess = by_leaf[close[0]][:1] if close else []
    tail = ".".join(rest)
    msg = f"unknown config key {key + '.' + tail if tail else key!r}"
    if tail:
        msg += f" (there is no section {key!r})"
    if guess:
        full = f"{guess[0]}.{tail}" if tail else guess[0]
        free = [k for k in keys if typing.get_origin(_field_type(k)) is dict]   # energy_params.*
        ok = not tail or full in keys or any(full.startswith(k + ".") for k in free)
        return msg + f"; did you mean {full if ok else guess[0]!r}?"
    valid = ", ".join(k[len(prefix):] for k in siblings)
    return msg + (f"; valid keys under {prefix[:-1]!r}: {valid}" if prefix
                  else f"; valid sections: {valid}")


def all_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every dotted key, sections included: ['model', 'model.name', ..., 'logging.progress_bar'].
    Under `model`: the keys of every registered model's config class."""
    out = []
    for f in dataclasses.fields(cls):
        tp = _hints(cls)[f.name]
        out.append(prefix + f.name)
        if tp is ModelConfig:
            model_keys = [all_keys(c, prefix + f.name + ".") for c in _model_classes()]
            out.extend(dict.fromkeys(k for keys in model_keys for k in keys))
        elif dataclasses.is_dataclass(tp):
            out.extend(all_keys(tp, prefix + f.name + "."))
    return out


def _field_type(key: str) -> Any:
    """The annotation of dotted `key` (a valid key from `all_keys`)."""
    if "." not in key:
        return _hints(Config)[key]
    section, *path, name = key.split(".")
    for cls in (_model_classes() if section == "model" else [_hints(Config)[section]]):
        try:
            for part in path:
                cls = _hints(cls)[part]
            return _hints(cls)[name]
        except KeyError:
            continue
    raise KeyError(key)


def _type_name(tp) -> str:
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, raw: str | None = None) -> Any:
    """Check `value` against annotation `tp`; convert where unambiguous ("4" -> 4, 1 -> 1.0,
    "2e-3" -> 0.002: PyYAML reads 2e-3 without a dot as a string)."""
    def bad(extra: str = ""):
        return ValueError(f"config key {key!r} expects {_type_name(tp)}, got {value!r} "
                          f"({type(value).__name__}){extra}")

    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise bad()
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, raw)
            except ValueError:
                pass
        raise bad()
    if value is None:
        raise bad(" (null is not allowed here)")
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise bad()
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):   # energy params become keyword arguments
                raise ValueError(f"config key {key!r}: keys must be strings, got {k!r}")
            out[k] = _plain(v)
        return out
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOLS:
            return _BOOLS[value.strip().lower()]
        raise bad()
    if tp is int:
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip().replace("_", ""))
            except ValueError:
                try:
                    f = float(value)
                except ValueError:
                    raise bad() from None
                if f.is_integer():       # "1e3"
                    return int(f)
        raise bad()
    if tp is float:
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise bad() from None
        raise bad()
    if tp is str:
        if isinstance(value, str):
            return value
        if raw is not None and raw:    # an override: keep the user's text (`hf_name=2023`, not 2023)
            return raw
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad(" (quote it in YAML if you mean the text)")
    if tp is Any:
        return _plain(value)
    raise TypeError(f"config key {key!r}: unsupported annotation {tp!r}")


_BOOLS = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False}


def _plain(v: Any) -> Any:
    """Free-form values as plain YAML types (tuples -> lists), so dump_yaml round-trips."""
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


# =========================================================================== validation

DATA_SOURCES = ("builtin", "text", "hf", "cache")
ON_NONFINITE = ("stop", "skip")
WANDB_MODES = ("online", "offline", "disabled", "auto")


def validate(cfg: Config) -> Config:
    """Raise one ValueError listing every invalid option or combination; return `cfg` if none.
    Each message names the keys involved and what would fix it."""
    m, d, o, t = cfg.model, cfg.data, cfg.optim, cfg.train
    errors: list[str] = []

    def need(ok: bool, msg: str):
        if not ok:
            errors.append(msg)

    def positive(key: str, value, minimum=1):
        need(value >= minimum, f"{key} must be >= {minimum}, got {value}")

    # --- model: its config class checks itself (models/config.py and the model's module)
    errors.append(_check_model_name(m.name, m))
    errors.append(_check_shardable(m.name, cfg.mesh.seq))
    shape_known = d.seq_len >= 1 and cfg.mesh.seq >= 1
    pieces = cfg.mesh.seq * (2 if cfg.mesh.seq_layout == "dual_chunk" and cfg.mesh.seq > 1 else 1)
    errors.extend(m.errors(seq_len=d.seq_len if shape_known else None, seq_pieces=pieces if shape_known else 1))

    # --- data
    errors.append(one_of("data.source", d.source, DATA_SOURCES))
    need(not (d.source == "text" and not d.path),
         "data.source=text needs data.path (a local .txt/.jsonl/.parquet file or glob)")
    need(not (d.source == "hf" and not d.hf_path),
         "data.source=hf needs data.hf_path (a Hugging Face dataset, e.g. Zyphra/Zyda)")
    need(not (d.source == "cache" and not d.cache_dir),
         "data.source=cache needs data.cache_dir (a directory written by `energy-attn data prepare`)")
    need(bool(d.tokenizer), "data.tokenizer is empty (byte, char, or a Hugging Face tokenizer name)")
    positive("data.seq_len", d.seq_len)
    need(0.0 < d.val_fraction < 1.0,
         f"data.val_fraction must be in (0, 1), got {d.val_fraction} (a validation split is required)")
    positive("data.val_max_docs", d.val_max_docs)
    positive("data.shuffle_buffer", d.shuffle_buffer)

    # --- optimizer and schedule
    need(o.lr > 0, f"optim.lr must be > 0, got {o.lr}")
    need(o.lr <= 0 or 0 <= o.min_lr <= o.lr,
         f"optim.min_lr={o.min_lr} must be in [0, optim.lr={o.lr}] (the cosine schedule decays "
         "from lr to min_lr)")
    need(o.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {o.warmup_steps}")
    need(o.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {o.weight_decay}")
    for key in ("beta1", "beta2"):
        val = getattr(o, key)
        need(0.0 <= val < 1.0, f"optim.{key} must be in [0, 1), got {val}")
    need(o.grad_clip > 0, f"optim.grad_clip must be > 0, got {o.grad_clip} "
         "(use a large value to effectively disable clipping)")
    positive("optim.grad_accum", o.grad_accum)

    # --- train
    for key in ("steps", "batch_size", "eval_every", "eval_batches", "max_skipped_steps"):
        positive(f"train.{key}", getattr(t, key))
    for key in ("sample_every", "sample_tokens", "top_k"):
        positive(f"train.{key}", getattr(t, key), minimum=0)
    need(t.temperature > 0, f"train.temperature must be > 0, got {t.temperature}")
    errors.append(one_of("train.on_nonfinite", t.on_nonfinite, ON_NONFINITE))
    if o.grad_accum >= 1:
        need(t.batch_size % o.grad_accum == 0,
             f"train.batch_size={t.batch_size} is not divisible by optim.grad_accum={o.grad_accum} "
             "(each step accumulates grad_accum equal micro-batches)")

    # --- mesh
    positive("mesh.data", cfg.mesh.data)
    positive("mesh.seq", cfg.mesh.seq)
    errors.append(one_of("mesh.seq_layout", cfg.mesh.seq_layout, ("dual_chunk", "contiguous")))
    if cfg.mesh.seq > 1 and d.seq_len >= 1:
        chunks = cfg.mesh.seq * (2 if cfg.mesh.seq_layout == "dual_chunk" else 1)
        need(d.seq_len % chunks == 0,
             f"data.seq_len={d.seq_len} is not divisible by {chunks}, the number of sequence chunks "
             f"that mesh.seq={cfg.mesh.seq} with mesh.seq_layout={cfg.mesh.seq_layout} needs"
             + (" (2 per device)" if cfg.mesh.seq_layout == "dual_chunk" else ""))
    if cfg.mesh.data >= 1 and o.grad_accum >= 1 and t.batch_size % o.grad_accum == 0:
        micro = t.batch_size // o.grad_accum
        need(micro % cfg.mesh.data == 0,
             f"train.batch_size={t.batch_size} is not divisible by mesh.data={cfg.mesh.data}"
             + (f" (per micro-batch: batch_size / grad_accum = {micro})" if o.grad_accum > 1 else "")
             + "; each data-parallel device needs an equal share")

    # --- checkpoint and logging
    positive("checkpoint.every", cfg.checkpoint.every)
    positive("checkpoint.keep", cfg.checkpoint.keep)
    errors.append(one_of("logging.wandb", cfg.logging.wandb, WANDB_MODES))
    positive("logging.log_every", cfg.logging.log_every)

    errors = [e for e in errors if e]
    if errors:
        if len(errors) == 1:
            raise ValueError(f"invalid config: {errors[0]}")
        raise ValueError("invalid config:\n  - " + "\n  - ".join(errors))
    return cfg


def _check_shardable(name: str, seq: int) -> str | None:
    """mesh.seq > 1 needs a model whose builder takes `sequence_sharding` (models/registry.py)."""
    if seq <= 1:
        return None
    from models.registry import MODELS, can_shard
    if name not in MODELS or can_shard(name):
        return None
    return f"model.name={name!r} cannot be sequence-sharded (mesh.seq={seq}); use mesh.seq=1"


def _check_model_name(name: str, model: ModelConfig | None = None) -> str | None:
    from models.registry import MODELS as models    # late: the zoo loads JAX, which --help does not need
    if name in models:
        cls = model_config_class(name)
        if model is not None and not isinstance(model, cls):     # built in Python, not loaded
            return (f"model.name={name!r} is configured by a {cls.__name__} ({cls.__module__}), "
                    f"got a {type(model).__name__}")
        return None
    close = difflib.get_close_matches(name, list(models), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown model.name={name!r}{hint} (registered models: {', '.join(sorted(models))})"


# =========================================================================== output


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain nested dicts/lists/scalars (YAML/JSON/W&B friendly)."""
    return _plain(dataclasses.asdict(cfg))


def dump_yaml(cfg: Config, path: str | Path) -> None:
    """Write the resolved config; `load_config(path)` gives back an equal Config."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)
    tmp = p.with_suffix(".yaml.tmp")
    tmp.write_text("# resolved energy-attn config: reload with train.config.load_config\n" + text)
    tmp.replace(p)          # never a half-written config.yaml


def _field_comments(cls: type) -> dict[str, str]:
    """Trailing `# ...` comments of a dataclass's fields, read from its source."""
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out, last = {}, None
    for line in src.splitlines():
        field_match = re.match(r"^\s+(\w+)\s*:[^#]*?(?:#\s*(.*?))?\s*$", line)
        comment_only = re.match(r"^\s+#\s*(.*?)\s*$", line)
        if comment_only and last is not None:      # a comment continued on the next lines
            out[last] = f"{out[last]} {comment_only.group(1)}".strip()
        elif field_match and not line.strip().startswith(("def ", "@", "return", '"""')):
            last = field_match.group(1)
            out[last] = field_match.group(2) or ""
            if not out[last]:
                del out[last]
                last = None
        else:
            last = None
    return out


def config_reference() -> str:
    """A markdown table of every config key: type, default, and the field's comment."""
    def cell(s: str) -> str:
        return s.replace("|", "\\|")

    rows = ["| key | type | default | description |", "|---|---|---|---|"]

    def walk(cls: type, obj: Any, prefix: str, owner: str = ""):
        comments = _field_comments(cls)
        hints = _hints(cls)
        for f in dataclasses.fields(cls):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], value, prefix + f.name + ".", owner)
                if hints[f.name] is ModelConfig:      # then each model's own sections
                    for model_cls in _model_classes():
                        default = model_cls()
                        for section in model_cls.own_sections:
                            walk(_hints(model_cls)[section], getattr(default, section),
                                 f"{prefix}{f.name}.{section}.", f"({default.name} only) ")
                continue
            type_str = f.type if isinstance(f.type, str) else _type_name(f.type)
            default = yaml.safe_dump(_plain(value), default_flow_style=True).strip()
            default = default.removesuffix("\n...").removesuffix("...").strip()
            rows.append(f"| `{prefix}{f.name}` | `{cell(type_str)}` | `{cell(default)}` | "
                        f"{cell(owner + comments.get(f.name, ''))} |")

    walk(Config, Config(), "")
    return "\n".join(rows) + "\n"
