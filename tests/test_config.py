"""Typed configs: YAML + dotted overrides -> Config, type checks, validation, round trip."""
import dataclasses
import re
from pathlib import Path

import pytest

from train.config import (Config, config_reference, dump_yaml, from_dict, load_config, to_dict,
                          validate)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


# ------------------------------------------------------------------ loading


def test_defaults_load_and_validate():
    cfg = load_config(None)
    assert cfg == Config()
    assert validate(cfg) is cfg


def test_the_three_configs_exist():
    assert {p.name for p in CONFIGS} >= {"default.yaml", "shakespeare_char.yaml", "zyda_small.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_each_config_file_loads(path):
    cfg = load_config(str(path))
    assert cfg.train.run_dir == f"runs/{path.stem}"


def test_config_files_say_what_they_should():
    sh = load_config(str(REPO / "configs/shakespeare_char.yaml"))
    assert (sh.model.num_layers, sh.model.num_heads, sh.model.d_model, sh.data.seq_len,
            sh.train.batch_size, sh.train.steps) == (4, 4, 128, 64, 12, 2000)
    assert (sh.data.source, sh.data.tokenizer, sh.model.mlp) == ("text", "char", "gelu")
    assert sh.data.path == "../shared/data/tinyshakespeare.txt"
    assert (sh.optim.lr, sh.optim.min_lr, sh.optim.beta2) == (1e-3, 1e-4, 0.99)
    z = load_config(str(REPO / "configs/zyda_small.yaml"))
    assert (z.data.source, z.data.hf_path, z.data.hf_name) == ("hf", "Zyphra/Zyda", "zyda_arxiv_only")
    assert z.data.tokenizer == "EleutherAI/gpt-neox-20b" and z.data.seq_len == 512
    d = load_config(str(REPO / "configs/default.yaml"))
    assert (d.data.source, d.data.tokenizer, d.optim.lr) == ("builtin", "byte", 2e-3)
    assert isinstance(d.optim.lr, float)


def test_yaml_merges_over_defaults(tmp_path):
    cfg = load_config(write(tmp_path, "model:\n  num_layers: 2\n  attention:\n    energy: sigmoid\n"))
    assert cfg.model.num_layers == 2 and cfg.model.attention.energy == "sigmoid"
    assert cfg.model.d_model == Config().model.d_model          # untouched keys keep defaults
    assert cfg.model.attention.rope is True


def test_empty_yaml_means_defaults(tmp_path):
    path = write(tmp_path, "# nothing\n")
    cfg = load_config(path)
    assert cfg.train.run_dir == f"runs/{Path(path).stem}"      # its runs are named after it
    cfg.train.run_dir = Config().train.run_dir
    assert cfg == Config()


def test_pyyaml_exponent_floats_are_accepted(tmp_path):
    # PyYAML reads `2e-3` (no dot) as a string; the float field still gets 0.002.
    cfg = load_config(write(tmp_path, "optim:\n  lr: 2e-3\n  min_lr: 1e-5\n"))
    assert cfg.optim.lr == 2e-3 and isinstance(cfg.optim.lr, float)


@pytest.mark.parametrize("override, get, expected", [
    ("model.num_layers=2", lambda c: c.model.num_layers, 2),                        # int
    ("model.num_layers='2'", lambda c: c.model.num_layers, 2),                      # "4" for an int
    ("train.steps=1e3", lambda c: c.train.steps, 1000),
    ("optim.lr=3e-4", lambda c: c.optim.lr, 3e-4),                                  # float
    ("model.dropout=0", lambda c: c.model.dropout, 0.0),                            # int for float
    ("model.tie_embeddings=false", lambda c: c.model.tie_embeddings, False),        # bool
    ("logging.progress_bar=no", lambda c: c.logging.progress_bar, False),
    ("train.run_dir=runs/x", lambda c: c.train.run_dir, "runs/x"),                  # str
    ("data.hf_name=2023", lambda c: c.data.hf_name, "2023"),                        # str, keeps text
    ("logging.project=1.10", lambda c: c.logging.project, "1.10"),
    ("data.path=null", lambda c: c.data.path, None),                                # None
    ("model.attention.num_kv_heads=2", lambda c: c.model.attention.num_kv_heads, 2),  # int | None
    ("model.attention.num_kv_heads=null", lambda c: c.model.attention.num_kv_heads, None),
    ("model.attention.energy=sigmoid", lambda c: c.model.attention.energy, "sigmoid"),  # nested
    ("model.attention.energy_params.beta=0.5",                                      # dict entry
     lambda c: c.model.attention.energy_params, {"beta": 0.5}),
    ("model.attention.energy_params={beta: 0.25}",                                  # whole dict
     lambda c: c.model.attention.energy_params, {"beta": 0.25}),
    ("model={num_layers: 3}", lambda c: (c.model.num_layers, c.model.d_model), (3, 128)),  # section
    ("--mesh.data=2", lambda c: c.mesh.data, 2),
])
def test_override_types(override, get, expected):
    value = get(load_config(None, [override]))
    assert value == expected and type(value) is type(expected)


def test_overrides_apply_after_yaml_in_order(tmp_path):
    path = write(tmp_path, "model:\n  attention:\n    energy: entmax\n    energy_params: {alpha: 2.0}\n")
    cfg = load_config(path, ["model.attention.energy_params.alpha=1.5", "model.num_layers=1",
                             "model.num_layers=3"])
    assert cfg.model.attention.energy_params == {"alpha": 1.5}
    assert cfg.model.num_layers == 3


def test_overrides_may_be_none_or_one_string():
    assert load_config(None, None) == Config()
    assert load_config(None, "model.num_layers=2").model.num_layers == 2


def test_overrides_do_not_leak_between_loads():
    load_config(None, ["model.attention.energy_params.beta=0.5"])
    assert load_config(None).model.attention.energy_params == {}


# ------------------------------------------------------------------ loading errors


@pytest.mark.parametrize("override, pattern", [
    ("model.num_layers=abc", r"'model\.num_layers' expects int, got 'abc'"),
    ("model.num_layers=2.5", r"'model\.num_layers' expects int, got 2\.5"),
    ("model.num_layers=true", r"'model\.num_layers' expects int, got True"),
    ("model.num_layers=null", r"'model\.num_layers' expects int, got None"),
    ("optim.lr=fast", r"'optim\.lr' expects float, got 'fast'"),
    ("model.attention.rope=1", r"'model\.attention\.rope' expects bool, got 1"),
    ("model.attention.rope=maybe", r"'model\.attention\.rope' expects bool, got 'maybe'"),
    ("model.attention.num_kv_heads=x", r"'model\.attention\.num_kv_heads' expects int \| None"),
    ("model.attention.energy_params=3", r"'model\.attention\.energy_params' expects dict"),
    ("model=3", r"'model' is a section"),
    ("model.num_layers.x=3", r"'model\.num_layers' holds a value \(int\), not a section"),
])
def test_override_type_errors(override, pattern):
    with pytest.raises(ValueError, match=pattern):
        load_config(None, [override])


def test_yaml_type_error_names_key(tmp_path):
    with pytest.raises(ValueError, match=r"'train\.batch_size' expects int, got 'many'"):
        load_config(write(tmp_path, "train:\n  batch_size: many\n"))
    with pytest.raises(ValueError, match=r"'model\.attention' is a section"):
        load_config(write(tmp_path, "model:\n  attention: softmax\n"))
    with pytest.raises(ValueError, match=r"'data\.tokenizer' expects str, got True"):
        load_config(write(tmp_path, "data:\n  tokenizer: yes\n"))


@pytest.mark.parametrize("override, pattern", [
    ("model.num_layer=4", r"unknown config key 'model\.num_layer'; did you mean 'model\.num_layers'\?"),
    ("model.attention.enrgy=sigmoid",
     r"unknown config key 'model\.attention\.enrgy'; did you mean 'model\.attention\.energy'\?"),
    ("train.lr=1e-3", r"unknown config key 'train\.lr'; did you mean 'optim\.lr'\?"),
    ("num_layers=2", r"unknown config key 'num_layers'; did you mean 'model\.num_layers'\?"),
    ("modle.num_layers=2", r"unknown config key 'modle\.num_layers' \(there is no section 'modle'\); "
                           r"did you mean 'model\.num_layers'\?"),
    ("model.attention.energy_param.beta=1",
     r"did you mean 'model\.attention\.energy_params\.beta'\?"),
    ("modl={num_layers: 2}", r"unknown config key 'modl'; did you mean 'model'\?"),
    ("optim.zzz=1", r"unknown config key 'optim\.zzz'; valid keys under 'optim': lr, min_lr"),
])
def test_unknown_override_key_suggests(override, pattern):
    with pytest.raises(ValueError, match=pattern):
        load_config(None, [override])


def test_unknown_yaml_key_suggests(tmp_path):
    path = write(tmp_path, "model:\n  attention:\n    energy_param: {beta: 1.0}\n")
    with pytest.raises(ValueError, match=r"unknown config key 'model\.attention\.energy_param'; "
                                         r"did you mean 'model\.attention\.energy_params'\?"):
        load_config(path)
    with pytest.raises(ValueError, match=r"unknown config key 'optimizer'; did you mean 'optim'\?"):
        load_config(write(tmp_path, "optimizer:\n  lr: 1.0\n"))


def test_override_without_equals():
    with pytest.raises(ValueError, match=r"'model\.num_layers' is not KEY=VALUE"):
        load_config(None, ["model.num_layers"])
    with pytest.raises(ValueError, match="not KEY=VALUE"):
        load_config(None, ["=4"])


def test_missing_file_names_path(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_config(str(missing))


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_yaml_not_a_mapping(tmp_path, text):
    with pytest.raises(ValueError, match="must hold a mapping of sections"):
        load_config(write(tmp_path, text))


def test_invalid_yaml_syntax(tmp_path):
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(write(tmp_path, "model: [unclosed\n"))


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize("overrides, pattern", [
    (["model.d_model=130"], r"model\.d_model=130 is not divisible by model\.num_heads=4"),
    (["model.num_heads=0"], r"model\.num_heads must be >= 1"),
    (["model.attention.num_kv_heads=3"],
     r"model\.num_heads=4 is not divisible by model\.attention\.num_kv_heads=3"),
    (["model.d_model=36", "model.num_heads=4"], r"head dim .* = 9 must be even"),
    (["model.attention.energy=softmx"],
     r"unknown energy model\.attention\.energy='softmx'; did you mean 'softmax'\?"),
    (["model.attention.energy_params.alpha=1.5"], r"energy 'softmax' has no parameter 'alpha'"),
    (["data.source=web"], r"data\.source='web' is not one of 'builtin', 'text', 'hf'"),
    (["data.source=text"], r"data\.source=text needs data\.path"),
    (["data.source=hf"], r"data\.source=hf needs data\.hf_path"),
    (["model.mlp=relu"], r"model\.mlp='relu' is not one of 'swiglu', 'gelu'"),
    (["model.compute_dtype=float16"], r"model\.compute_dtype='float16' is not one of 'float32', 'bfloat16'"),
    (["train.on_nonfinite=ignore"], r"train\.on_nonfinite='ignore' is not one of 'stop', 'skip'"),
    (["logging.wandb=offlin"], r"logging\.wandb='offlin' is not one of .*; did you mean 'offline'\?"),
    (["model.max_seq_len=128", "data.seq_len=256"],
     r"model\.max_seq_len=128 is shorter than data\.seq_len=256"),
    (["optim.grad_accum=0"], r"optim\.grad_accum must be >= 1"),
    (["optim.grad_accum=3"], r"train\.batch_size=16 is not divisible by optim\.grad_accum=3"),
    (["mesh.data=0"], r"mesh\.data must be >= 1"),
    (["mesh.seq=0"], r"mesh\.seq must be >= 1"),
    (["mesh.seq=3"], r"data\.seq_len=128 is not divisible by 6, the number of sequence chunks"),
    (["mesh.seq_layout=ring"], r"mesh\.seq_layout='ring' is not one of"),
    (["mesh.data=3"], r"train\.batch_size=16 is not divisible by mesh\.data=3"),
    (["mesh.data=4", "optim.grad_accum=8"], r"not divisible by mesh\.data=4 \(per micro-batch"),
    (["optim.lr=0"], r"optim\.lr must be > 0"),
    (["optim.lr=-1e-3"], r"optim\.lr must be > 0"),
    (["optim.min_lr=0.1"], r"optim\.min_lr=0\.1 must be in \[0, optim\.lr"),
    (["data.val_fraction=0"], r"data\.val_fraction must be in \(0, 1\)"),
    (["data.val_fraction=1"], r"data\.val_fraction must be in \(0, 1\)"),
    (["model.dropout=1.0"], r"model\.dropout must be in \[0, 1\)"),
    (["optim.beta2=1.0"], r"optim\.beta2 must be in \[0, 1\)"),
    (["train.steps=0"], r"train\.steps must be >= 1"),
    (["train.eval_every=0"], r"train\.eval_every must be >= 1"),
    (["checkpoint.every=0"], r"checkpoint\.every must be >= 1"),
    (["logging.log_every=0"], r"logging\.log_every must be >= 1"),
    (["train.temperature=0"], r"train\.temperature must be > 0"),
    (["optim.grad_clip=0"], r"optim\.grad_clip must be > 0"),
])
def test_validate_rules(overrides, pattern):
    with pytest.raises(ValueError, match=pattern):
        load_config(None, overrides)
    # The same config is fine to build without checks: the error comes from `validate`.
    cfg = load_config(None, overrides, check=False)
    with pytest.raises(ValueError, match=pattern):
        validate(cfg)


def test_valid_combinations_pass():
    load_config(None, ["data.source=text", "data.path=x.txt", "mesh.data=8",
                       "optim.grad_accum=2", "model.attention.num_kv_heads=2",
                       "model.attention.energy=entmax", "model.attention.energy_params.alpha=1.5",
                       "model.attention.energy=linear",
                       "model.attention.energy_params={feature_map: relu}"])
    load_config(None, ["model.attention.energy=distance",       # **kwargs energies: not checked
                       "model.attention.energy_params.anything=1"])
    load_config(None, ["model.d_model=36", "model.attention.rope=false"])   # odd head dim w/o RoPE


def test_validate_lists_every_problem():
    with pytest.raises(ValueError) as e:
        load_config(None, ["model.mlp=relu", "optim.lr=0", "mesh.seq=3"])
    msg = str(e.value)
    assert msg.count("\n  - ") == 3
    assert "model.mlp" in msg and "optim.lr" in msg and "mesh.seq" in msg


def test_user_registered_energy_is_valid(monkeypatch):
    import energy_attn.registry as reg
    name = "test_config_energy"      # registered for this test only: other tests list energies
    monkeypatch.setitem(reg._ENERGIES, name, lambda q, k, v, zeta, *, mask=None, gamma=1.0: 0.0)
    cfg = load_config(None, [f"model.attention.energy={name}",
                             "model.attention.energy_params.gamma=2"])
    assert cfg.model.attention.energy_params == {"gamma": 2}
    with pytest.raises(ValueError, match=f"energy '{name}' has no parameter 'beta'"):
        load_config(None, [f"model.attention.energy={name}", "model.attention.energy_params.beta=1"])


def test_unknown_model_name():
    assert type(load_config(None, ["model.name=zamba"]).model).__name__ == "ZambaConfig"
    with pytest.raises(ValueError, match=r"unknown model\.name='zambaa'; did you mean 'zamba'\?"):
        load_config(None, ["model.name=zambaa"])


def test_model_name_picks_the_config_class_and_its_sections():
    from models import BSTConfig, ModelConfig, ZambaConfig
    assert type(load_config(None).model) is ModelConfig
    # model.name is applied first, whatever the order of the overrides
    cfg = load_config(None, ["model.ssm.kind=mamba2", "model.name=zamba", "model.d_model=64"])
    assert isinstance(cfg.model, ZambaConfig) and cfg.model.ssm.kind == "mamba2" and cfg.model.d_model == 64
    # switching model keeps the shared fields and drops the old model's sections
    cfg = load_config("configs/zamba_small.yaml", ["model.name=bst", "data.seq_len=128"])
    assert isinstance(cfg.model, BSTConfig) and not hasattr(cfg.model, "ssm")
    assert cfg.model.d_model == load_config("configs/zamba_small.yaml").model.d_model
    # another model's section names its model
    with pytest.raises(ValueError, match=r"'model.ssm' is a setting of model.name='zamba', and this "
                                         r"config's model is 'transformer'; set model.name=zamba"):
        load_config(None, ["model.ssm.kind=mamba2"])
    with pytest.raises(ValueError, match=r"'model.bst' is a setting of model.name='bst'"):
        from_dict({"model": {"name": "zamba", "bst": {"block_len": 32}}})
    # a whole section given at once picks the class too
    assert isinstance(load_config(None, ["model={name: bst, bst: {block_len: 16}}"]).model, BSTConfig)
    # a Python-built config of the wrong class is refused by name
    with pytest.raises(ValueError, match=r"model.name='zamba' is configured by a ZambaConfig"):
        validate(Config(model=ModelConfig(name="zamba")))


def test_configs_written_with_every_models_sections_still_load():
    """Before each model had its config class, config.yaml held every model's sections at
    their defaults; such files load, and a non-default foreign section is still an error."""
    old = to_dict(load_config(None))
    old["model"]["ssm"] = {"kind": "mamba1", "state_dim": 16, "remat": True}
    old["model"]["bst"] = {"variant": "mh", "block_len": 64}
    old["model"]["energy_transformer"] = {"steps": 12}
    assert from_dict(old) == load_config(None)
    old["model"]["bst"]["block_len"] = 32
    with pytest.raises(ValueError, match="'model.bst' is a setting of model.name='bst'"):
        from_dict(old)


# ------------------------------------------------------------------ output


@pytest.mark.parametrize("source", [None, *CONFIGS], ids=lambda p: getattr(p, "name", "defaults"))
def test_dump_load_round_trip(tmp_path, source):
    energy = (["model.attention.energy_params.beta=0.3", "model.energy_transformer.alpha=0.05"]
              if source is not None and source.name == "energy_transformer.yaml" else   # its own energy
              ["model.attention.energy=entmax", "model.attention.energy_params={}",
               "model.attention.energy_params.alpha=1.25"])
    cfg = load_config(None if source is None else str(source),
                      [*energy, "optim.lr=3e-4", "data.hf_name=2023", "model.attention.num_kv_heads=2",
                       "model.norm_eps=1e-7"])
    path = tmp_path / "out" / "config.yaml"
    dump_yaml(cfg, path)
    again = load_config(str(path))
    assert again == cfg
    assert to_dict(again) == to_dict(cfg)
    for f in dataclasses.fields(cfg.optim):               # types survive, not just values
        assert type(getattr(again.optim, f.name)) is type(getattr(cfg.optim, f.name))


def test_to_dict_is_plain_and_from_dict_inverts_it():
    cfg = load_config(None, ["model.attention.energy_params={beta: [1, 2]}"])
    d = to_dict(cfg)
    assert d["model"]["attention"]["energy_params"] == {"beta": [1, 2]}
    assert isinstance(d["optim"], dict)
    assert from_dict(d) == cfg


def test_config_reference_lists_every_key():
    ref = config_reference()
    lines = ref.splitlines()
    assert lines[0].startswith("| key | type | default |")
    row = next(l for l in lines if l.startswith("| `model.attention.energy` "))
    assert "`str`" in row and "`softmax`" in row and "registered energy" in row
    assert any(l.startswith("| `data.path` | `str \\| None` | `null` |") for l in lines)
    assert any(l.startswith("| `optim.lr` | `float` | `0.002` |") for l in lines)
    keys = [l.split("`")[1] for l in lines[2:]]
    assert keys == list(_leaf_keys())
    # every key described, and comments that continue on the next lines kept whole
    assert all(l.rstrip().rstrip("|").strip() and not l.endswith("|  |") for l in lines[2:]), \
        [l for l in lines[2:] if l.endswith("|  |")]
    remat = next(l for l in lines if l.startswith("| `model.ssm.remat` "))
    assert "costs about one more forward" in remat


def _leaf_keys(cls=Config, prefix=""):
    """Every key: the shared model fields, then each registered model's own sections."""
    from models.registry import CONFIG_CLASSES
    for f in dataclasses.fields(cls):
        sub = getattr(cls(), f.name)
        if dataclasses.is_dataclass(sub):
            yield from _leaf_keys(type(sub), prefix + f.name + ".")
            if f.name == "model":
                for model_cls in CONFIG_CLASSES.values():
                    for section in model_cls.own_sections:
                        yield from _leaf_keys(type(getattr(model_cls(), section)), f"model.{section}.")
        else:
            yield prefix + f.name


def test_defaults_are_the_default_yaml():
    """`energy-attn train` with no arguments and with configs/default.yaml train the same run."""
    from pathlib import Path
    from train.config import load_config, to_dict
    path = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"
    assert to_dict(load_config(None)) == to_dict(load_config(str(path)))
