"""The Zamba-like hybrid: parameter count by formula, shared weights stored once (in
nnx.state and in the checkpoint), causality, packed rows == documents alone,
cached decoding == full pass (with LoRA and ABAB blocks), every energy plugs in,
training lowers the loss, and clear config errors."""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import energy_attn as ea
from models import AttentionConfig, ModelConfig, build_model, num_params
from models.mamba import SSMConfig
from models.zamba import SharedBlockConfig, ZambaConfig
from models.layers import mlp_hidden
from models.zamba import Zamba, lora_targets, shared_sites
from tests.test_mamba import mixer_params
from train.config import load_config

VOCAB, T = 32, 12


def config(kind="mamba1", attention=None, **zamba) -> ModelConfig:
    return ZambaConfig(vocab_size=VOCAB, max_seq_len=16, d_model=16, num_layers=4,
                       num_heads=2, attention=attention or AttentionConfig(),
                       ssm=SSMConfig(kind=kind, state_dim=4, chunk_size=8, head_dim=8),
                       zamba=SharedBlockConfig(**zamba))


def tokens(seed, batch=2, length=T):
    return jnp.asarray(np.random.default_rng(seed).integers(0, VOCAB, (batch, length)), jnp.int32)


@nnx.jit
def forward(model, tokens, segment_ids=None, positions=None):
    return model(tokens, segment_ids=segment_ids, positions=positions)


@nnx.jit
def forward_cached(model, tokens, cache):
    return model(tokens, cache=cache)


# ------------------------------------------------------------------ sizes and sharing
def expected_params(cfg: ModelConfig) -> int:
    d, z, a = cfg.d_model, cfg.zamba, cfg.attention
    wide, heads = 2 * d, cfg.num_heads
    head = wide // heads
    kv = (a.num_kv_heads or heads) * head
    hidden = mlp_hidden(cfg.mlp, wide, cfg.mlp_ratio)
    attention = wide * heads * head + 2 * wide * kv + heads * head * wide        # q, k, v, o
    block = attention + (3 if cfg.mlp == "swiglu" else 2) * wide * hidden + 2 * wide   # + 2 norms
    sites = cfg.num_layers // z.shared_every
    fan_out = {"q_proj": heads * head, "k_proj": kv, "v_proj": kv, "up": hidden, "gate": hidden}
    lora = sites * z.lora_rank * sum(wide + fan_out[name] for _, name in lora_targets(cfg.mlp))
    return (cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2)
            + cfg.num_layers * (mixer_params(d, cfg.ssm) + d)    # Mamba layers + pre-norms
            + z.num_shared_blocks * block                          # shared: stored once each
            + sites * wide * d                                     # per-site Linear(2d -> d)
            + lora + d)                                            # + final norm


def test_parameter_count_matches_formula_and_shared_weights_are_stored_once():
    assert shared_sites(4, 2) == (1, 3) and shared_sites(6, 3) == (2, 5) and shared_sites(3, 1) == (0, 1, 2)
    cfgs = [config(), config("mamba2"), config(lora_rank=3, num_shared_blocks=2),
            config(shared_every=1, attention=AttentionConfig(num_kv_heads=1)),
            config().replace(mlp="gelu", tie_embeddings=False)]
    for cfg in cfgs:
        model = nnx.eval_shape(lambda: build_model(cfg, rngs=nnx.Rngs(0)))   # shapes only: no init
        assert num_params(model) == expected_params(cfg), cfg
        # two (or four) sites, but the shared block's arrays appear once per block
        paths = [p for p, _ in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))]
        shared = {p[1].key for p in paths if p[0].key == "shared"}
        assert shared == set(range(cfg.zamba.num_shared_blocks))
        assert len(model.proj) == len(shared_sites(cfg.num_layers, cfg.zamba.shared_every)) >= 2


# ------------------------------------------------------------------ forward semantics
def _randomise_lora(model):
    """LoRA's B starts at zero (a no-op); give it values so the tests can see it."""
    for i, lora in enumerate(model.lora):
        for j, b in enumerate(lora.b):
            b[...] = jnp.asarray(0.3 * np.random.default_rng(100 * i + j).normal(size=b.shape), jnp.float32)


DECODE_CONFIGS = {
    "mamba1-lora-abab": config("mamba1", lora_rank=2, num_shared_blocks=2),
    "mamba2-norope-gqa": config("mamba2", attention=AttentionConfig(rope=False, num_kv_heads=1)),
}


@pytest.mark.parametrize("name", list(DECODE_CONFIGS))
def test_causal_and_cached_decoding_equals_full_forward(name):
    cfg = DECODE_CONFIGS[name]
    model = build_model(cfg, rngs=nnx.Rngs(2))
    _randomise_lora(model)
    x = tokens(3)
    full = forward(model, x)
    assert full.shape == (2, T, VOCAB) and full.dtype == jnp.float32
    changed = forward(model, x.at[:, 7:].set((x[:, 7:] + 1) % VOCAB))     # causality
    np.testing.assert_allclose(changed[:, :7], full[:, :7], atol=1e-5)
    assert float(jnp.abs(changed[:, 7:] - full[:, 7:]).max()) > 1e-4
    if cfg.zamba.lora_rank:   # the LoRA factors are used: without them the output differs
        plain = build_model(cfg, rngs=nnx.Rngs(2))
        assert float(jnp.abs(forward(plain, x) - full).max()) > 1e-3
    logits, cache = forward_cached(model, x[:, :5], model.init_cache(2, 16))   # prefill
    out = [logits]
    for t in range(5, T):
        logits, cache = forward_cached(model, x[:, t:t + 1], cache)
        out.append(logits)
    np.testing.assert_allclose(jnp.concatenate(out, 1), full, atol=1e-4)
    assert int(cache.attn[0].index) == T and len(cache.attn) == 2 and len(cache.mamba) == 4


def test_packed_documents_do_not_see_each_other():
    """Attention mask and Mamba state resets together: a packed row == its documents alone."""
    model = build_model(DECODE_CONFIGS["mamba1-lora-abab"], rngs=nnx.Rngs(1))
    _randomise_lora(model)
    x = tokens(0)
    ids = jnp.asarray(np.repeat([[0] * 6 + [1] * 6], 2, 0))
    positions = jnp.asarray(np.repeat([list(range(6)) * 2], 2, 0))     # per-document RoPE positions
    packed = forward(model, x, ids, positions)
    doc1 = forward(model, x)[:, :6]                                      # causal: the rest is unseen
    doc2 = forward(model, jnp.concatenate([x[:, 6:], x[:, :6]], 1))[:, :6]   # same shape: T = 12
    np.testing.assert_allclose(packed[:, :6], doc1, atol=1e-5)
    np.testing.assert_allclose(packed[:, 6:], doc2, atol=1e-5)


@pytest.mark.parametrize("energy", ea.available_energies())   # none needs special params
def test_every_registered_energy_plugs_in(energy):
    cfg = config(attention=AttentionConfig(energy=energy), shared_every=1).replace(num_layers=1)
    model = build_model(cfg, rngs=nnx.Rngs(0))
    x = tokens(4)
    x = x.at[1].set(x[0].at[5:].set((x[0, 5:] + 3) % VOCAB))      # row 1 differs from row 0 after 5
    logits = forward(model, x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], x[:, 1:]).mean()
    assert np.isfinite(float(loss)) and abs(float(loss) - math.log(VOCAB)) < 1.0   # near-uniform start
    np.testing.assert_allclose(logits[1, :5], logits[0, :5], atol=1e-5)          # causal
    assert float(jnp.abs(logits[1, 5:] - logits[0, 5:]).max()) > 1e-5


# ------------------------------------------------------------------ training and config
def test_training_lowers_the_loss_and_checkpoint_stores_shared_weights_once(tmp_path):
    from train.loop.trainer import train
    from train.checkpoints.run import load_run
    run = tmp_path / "run"
    # one Mamba-2 layer fed by the shared block: the smallest zamba (Mamba-1's scan compiles slower)
    overrides = ["model.name=zamba", "model.num_layers=1", "model.zamba.shared_every=1",
                 "model.ssm.kind=mamba2", "model.d_model=16", "model.num_heads=2", "model.ssm.head_dim=8",
                 "model.max_seq_len=32", "model.ssm.chunk_size=8", "model.ssm.state_dim=4",
                 "data.seq_len=32", "train.batch_size=4", "train.eval_batches=1", "train.steps=16",
                 "train.eval_every=16", "checkpoint.every=16", "optim.lr=1e-2", "optim.warmup_steps=2",
                 "logging.log_every=1", "logging.progress_bar=false", "logging.wandb=disabled",
                 "train.sample_tokens=6", f"train.run_dir={run}"]   # sampling runs generate() with the cache
    cfg = load_config(None, overrides)
    result = train(cfg, log=lambda *_: None)
    losses = [json.loads(l)["loss"] for l in (run / "metrics.jsonl").read_text().splitlines()
              if json.loads(l).get("split", "train") == "train"]
    assert losses[-1] < losses[0] - 0.5 and np.isfinite(result.val_loss)
    assert (run / "samples.txt").read_text().strip()

    import orbax.checkpoint as ocp
    saved = ocp.StandardCheckpointer().metadata((run / "checkpoints" / "16" / "state").absolute())
    saved = saved.item_metadata["model"]
    assert set(saved["shared"]) == {"0"}                        # one shared block on disk
    sizes = [math.prod(leaf.shape) for path, leaf in jax.tree_util.tree_leaves_with_path(saved)
             if "rngs" not in jax.tree_util.keystr(path)]
    assert sum(sizes) == expected_params(cfg.model) == result.params
    _, _, model, step = load_run(run)                            # and it restores into the model
    assert step == 16 and isinstance(model, Zamba) and num_params(model) == result.params


@pytest.mark.parametrize("override, message", [
    ("mesh.seq=8 data.seq_len=32", "pieces of 2 tokens, shorter than the Mamba conv's reach"),
    ("model.zamba.shared_every=0", "model.zamba.shared_every=0 must be in"),
    ("model.zamba.num_shared_blocks=3", "model.zamba.num_shared_blocks=3 must be 1 or 2"),
    ("model.ssm.kind=mamba3", "model.ssm.kind='mamba3' is not one of"),
    ("model.ssm.head_dim=48", "model.ssm.head_dim=48 must divide"),
])
def test_bad_zamba_options_give_clear_errors(override, message):
    extra = ["model.ssm.kind=mamba2"] if "head_dim" in override else []
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        load_config(None, ["model.name=zamba", *extra, *override.split()])


def test_the_model_refuses_bad_options_without_the_trainer():
    with pytest.raises(ValueError, match="model.zamba.shared_every=5 must be in \\[1, model.num_layers=4\\]"):
        Zamba(config(shared_every=5), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="model.zamba.lora_rank=-1 must be >= 0"):
        Zamba(config(lora_rank=-1), rngs=nnx.Rngs(0))
