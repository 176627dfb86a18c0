"""Energy Transformer (Hoover et al. 2023): the energies against their formulas, energy
descent, causality of the causal LM, training, sampling and the config."""
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import energy_attn as ea
from energy_attn import energy_transformer as et
from models import AttentionConfig, build_model, generate
from models.energy_transformer import DescentConfig, EnergyTransformerConfig
from models.energy_transformer import EnergyTransformerLM   # registers "energy_transformer"

REPO = Path(__file__).resolve().parents[1]


def tiny_cfg(energy_params=None, **descent):
    return EnergyTransformerConfig(vocab_size=11, max_seq_len=12, d_model=16,
                       num_heads=2, attention=AttentionConfig(energy="energy_transformer",
                                                              energy_params=energy_params or {}),
                       energy_transformer=DescentConfig(**{"steps": 3, "num_memories": 24,
                                                                     **descent}))


def random_params(key, d=6, h=2, y=3, m=5, scale=0.7):
    k = jax.random.split(key, 4)
    return et.ETParams(wq=scale * jax.random.normal(k[0], (h, y, d)),
                       wk=scale * jax.random.normal(k[1], (h, y, d)),
                       xi=scale * jax.random.normal(k[2], (m, d)),
                       gamma=jnp.float32(1.3), delta=0.1 * jax.random.normal(k[3], (d,)))


# ------------------------------------------------------------------ energies


def test_lagrangian_gradient_is_layernorm():
    x = 3.0 * jax.random.normal(jax.random.key(0), (2, 5, 8)) + 1.0
    gamma, delta = 1.7, jnp.linspace(-1, 1, 8)
    g = et.activations(x, gamma, delta, eps=1e-5)
    ln = nnx.LayerNorm(8, epsilon=1e-5, rngs=nnx.Rngs(0))   # per-feature scale = γ, bias = δ
    ln.scale[...] = jnp.full((8,), gamma)
    ln.bias[...] = delta
    np.testing.assert_allclose(g, ln(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_energy_matches_the_double_loop(causal):
    p = random_params(jax.random.key(1))
    g = jax.random.normal(jax.random.key(2), (2, 5, 6))
    beta = np.array([0.4, 0.9])
    got = et.attention_energy(g, p.wq, p.wk, beta=beta, mask=ea.causal() if causal else None)

    gn, wq, wk = (np.asarray(a, np.float64) for a in (g, p.wq, p.wk))
    want = np.zeros(2)
    for b in range(2):
        for h in range(2):
            K, Q = gn[b] @ wk[h].T, gn[b] @ wq[h].T           # (T, Y)
            for c in range(5):
                keys = [j for j in range(5) if j != c and (j < c or not causal)]
                if keys:   # the first causal token has no key: contributes 0
                    want[b] -= np.log(sum(np.exp(beta[h] * K[j] @ Q[c]) for j in keys)) / beta[h]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_hopfield_energy_matches_the_formula():
    p = random_params(jax.random.key(3))
    g = jax.random.normal(jax.random.key(4), (2, 5, 6))
    proj = np.einsum("btd,md->btm", np.asarray(g), np.asarray(p.xi))
    want = -0.5 * (np.maximum(proj, 0) ** 2).sum(axis=(1, 2))
    np.testing.assert_allclose(et.hopfield_energy(g, p.xi), want, rtol=1e-5)


def test_energy_decreases_monotonically_along_the_dynamics():
    block = et.EnergyTransformerBlock(8, 2, 4, 16, steps=25, alpha=0.02, causal=False,
                                      init_std=0.5, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(5), (3, 7, 8))
    y, traj = block(x, return_trajectory=True)
    e = np.asarray(traj["total"])                               # (steps + 1, B)
    assert e.shape == (26, 3)
    assert np.all(np.diff(e, axis=0) < 0), e
    assert np.all(e[0] - e[-1] > 1.0)                           # it actually moved
    np.testing.assert_allclose(e[0], block.energy(x), rtol=1e-5)
    np.testing.assert_allclose(e[-1], block.energy(y), rtol=1e-5)
    np.testing.assert_allclose(traj["attention"] + traj["hopfield"], traj["total"], rtol=1e-5)


def test_plain_gradient_leaks_the_future_and_the_causal_update_does_not():
    """Why the causal update holds the keys fixed: ∂E_ATT/∂g_C has a term from later
    queries D > C attending to C."""
    p = random_params(jax.random.key(6))
    x = jax.random.normal(jax.random.key(7), (1, 5, 6))
    x2 = x.at[:, -1].add(1.0)                                   # change only the last token
    plain = lambda x: jax.grad(lambda g: et.attention_energy(g, p.wq, p.wk, mask=ea.causal()).sum())(x)
    assert not np.allclose(plain(x)[:, :-1], plain(x2)[:, :-1])
    upd = lambda x: et.energy_and_update(x, p, mask=ea.causal(), causal=True)[1]
    np.testing.assert_array_equal(upd(x)[:, :-1], upd(x2)[:, :-1])


def test_contract_energy_is_softmax_attention_without_the_diagonal():
    q, k, v = (jax.random.normal(jax.random.key(i), (1, 4, 2, 3)) for i in range(3))
    out = ea.attend("energy_transformer", q, k, v)
    s = ea.dot_scores(q, k)                                     # (B, H, T, T)
    w = jax.nn.softmax(jnp.where(jnp.eye(4, dtype=bool), -jnp.inf, s), axis=-1)
    np.testing.assert_allclose(out, jnp.einsum("bhqk,bkhd->bqhd", w, v), atol=1e-5)
    # Decoding (fewer queries than keys): the excluded diagonal follows the query offset.
    full = ea.attend("energy_transformer", q, k, v, mask=ea.causal())
    last = ea.attend("energy_transformer", q[:, -2:], k, v, mask=ea.causal())
    np.testing.assert_allclose(last, full[:, -2:], atol=1e-6)
    np.testing.assert_array_equal(full[:, 0], 0.0)              # the first token sees no key


# ------------------------------------------------------------------ the LM


@nnx.jit
def forward(model, tokens, segment_ids=None, positions=None):
    return model(tokens, segment_ids=segment_ids, positions=positions)


def test_lm_is_causal_and_segments_stay_apart():
    model = build_model(tiny_cfg(), rngs=nnx.Rngs(0))
    assert isinstance(model, EnergyTransformerLM)
    toks = jax.random.randint(jax.random.key(8), (2, 10), 0, 11)
    logits = forward(model, toks)
    assert logits.shape == (2, 10, 11) and logits.dtype == jnp.float32
    changed = forward(model, toks.at[:, 6:].set((toks[:, 6:] + 1) % 11))
    np.testing.assert_array_equal(logits[:, :6], changed[:, :6])
    assert not np.allclose(logits[:, 6:], changed[:, 6:])
    # A packed second document equals that document alone (per-document positions).
    seg = jnp.array([[0] * 4 + [1] * 6] * 2)
    pos = jnp.concatenate([jnp.arange(4), jnp.arange(6)])
    packed = forward(model, toks, seg, pos)
    alone = forward(model, jnp.concatenate([toks[:, 4:], toks[:, :4]], axis=1))   # same shape: one compile
    np.testing.assert_allclose(packed[:, 4:], alone[:, :6], atol=1e-5)


def test_lm_energy_trajectory_and_options_from_its_config_section():
    model = build_model(tiny_cfg(steps=4, alpha=0.05), rngs=nnx.Rngs(0))
    assert (model.block.steps, model.block.alpha, model.block.xi.shape) == (4, 0.05, (24, 16))
    traj = model.energy_trajectory(jnp.zeros((2, 5), jnp.int32))
    assert set(traj) == {"attention", "hopfield", "total"} and traj["total"].shape == (5, 2)
    with pytest.raises(ValueError, match="takes only beta"):
        build_model(tiny_cfg({"stepz": 3}), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="model.energy_transformer.steps now"):
        build_model(tiny_cfg({"steps": 3}), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="alpha .* must be > 0"):
        build_model(tiny_cfg(alpha=0.0), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="energy_transformer"):
        build_model(tiny_cfg().replace(attention=AttentionConfig(energy="sigmoid")), rngs=nnx.Rngs(0))


def test_lm_trains_on_a_fixed_batch():
    model = build_model(tiny_cfg(), rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adamw(1e-2), wrt=nnx.Param)
    toks = jax.random.randint(jax.random.key(9), (4, 11), 0, 11)

    @nnx.jit
    def step(model, opt, toks):
        def loss_fn(model):
            logits = model(toks[:, :-1], deterministic=False)
            return optax.softmax_cross_entropy_with_integer_labels(logits, toks[:, 1:]).mean()
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss, grads

    first, grads = step(model, opt, toks)
    assert float(jnp.abs(grads["block"]["wq"][...]).max()) > 0    # gradients reach the energy
    losses = [float(step(model, opt, toks)[0]) for _ in range(15)]
    assert losses[-1] < float(first) - 0.5, (float(first), losses)


def test_generate_matches_the_full_forward():
    model = build_model(tiny_cfg(), rngs=nnx.Rngs(1))
    prompt = jnp.array([[1, 2, 3], [4, 5, 6]], jnp.int32)
    out = generate(model, prompt, 5, rng=jax.random.key(0), temperature=0)
    assert out.shape == (2, 8)
    np.testing.assert_array_equal(out[:, :3], prompt)
    # Causal, so the full forward over the output shows what every decode step saw:
    # each generated token is the argmax at the position before it.
    greedy = jnp.argmax(forward(model, out[:, :-1]), axis=-1)
    np.testing.assert_array_equal(out[:, 3:], greedy[:, 2:])
    with pytest.raises(ValueError, match="max_seq_len"):
        model.init_cache(1, 13)


def test_yaml_config_loads_and_builds():
    from train.config import load_config
    cfg = load_config(str(REPO / "configs" / "energy_transformer.yaml"))
    assert cfg.model.name == "energy_transformer"
    assert cfg.model.max_seq_len >= cfg.data.seq_len
    assert set(cfg.model.attention.energy_params) <= {"beta"}
    model = build_model(cfg.model.replace(vocab_size=17), rngs=nnx.Rngs(0))
    assert model.block.steps == cfg.model.energy_transformer.steps == 12
    assert model.num_memories == cfg.model.energy_transformer.num_memories == 16
    with pytest.raises(ValueError, match="stepz"):               # typos caught by validation
        load_config(str(REPO / "configs" / "energy_transformer.yaml"),
                    ["model.attention.energy_params.stepz=3"])


def test_configs_written_before_the_descent_options_moved_still_load(tmp_path):
    """A run directory's config.yaml from before model.energy_transformer existed: its
    energy_params.steps/alpha/num_memories are read as the new keys, with a warning."""
    from train.config import load_config
    old = (REPO / "configs" / "energy_transformer.yaml").read_text().replace(
        "  energy_transformer:\n    steps: 12", "    energy_params:\n      steps: 7").replace(
        "    alpha: 0.1", "      alpha: 0.2").replace("    num_memories: 16", "      num_memories: 8")
    assert "energy_params:\n      steps: 7" in old
    (tmp_path / "old.yaml").write_text(old)
    with pytest.warns(UserWarning, match="model.attention.energy_params.steps is now model.energy_transformer.steps"):
        cfg = load_config(str(tmp_path / "old.yaml"))
    e = cfg.model.energy_transformer
    assert (e.steps, e.alpha, e.num_memories) == (7, 0.2, 8) and cfg.model.attention.energy_params == {}
