"""The decoder-only Transformer, its Blocks, sampling and the model registry.

Tiny configs throughout, and every forward pass under nnx.jit (eager dispatch
of the attention kernels is slow)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import energy_attn as ea
from models import AttentionConfig, ModelConfig, Transformer, build_model, generate, num_params
from models.layers import mlp_hidden

VOCAB, T = 32, 12


def config(**changes) -> ModelConfig:
    attention = changes.pop("attention", AttentionConfig())
    return ModelConfig(vocab_size=VOCAB, max_seq_len=16, d_model=16, num_layers=2, num_heads=2,
                       attention=attention).replace(**changes)


def random_tokens(seed, batch=2, length=T):
    return jax.random.randint(jax.random.key(seed), (batch, length), 0, VOCAB, jnp.int32)


@nnx.jit
def forward(model, tokens, segment_ids=None, positions=None):
    return model(tokens, segment_ids=segment_ids, positions=positions)


@nnx.jit
def forward_cached(model, tokens, caches):
    return model(tokens, cache=caches)


# ------------------------------------------------------------------ shapes and sizes
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_logits_shape_and_dtype(dtype):
    model = Transformer(config(compute_dtype=dtype), rngs=nnx.Rngs(0))
    logits = forward(model, random_tokens(0))
    assert logits.shape == (2, T, VOCAB) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))
    # bf16 is for activations only: every parameter stays float32.
    assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype(jnp.float32)}
    if dtype == "bfloat16":
        ref = forward(Transformer(config(), rngs=nnx.Rngs(0)), random_tokens(0))
        np.testing.assert_allclose(logits, ref, atol=0.05)


def expected_params(cfg: ModelConfig) -> int:
    d, h = cfg.d_model, cfg.num_heads
    head = d // h
    kv = (cfg.attention.num_kv_heads or h) * head
    attention = d * d + 2 * d * kv + d * d                 # q, k, v, o (no biases)
    hidden = mlp_hidden(cfg.mlp, d, cfg.mlp_ratio)
    mlp = (3 if cfg.mlp == "swiglu" else 2) * d * hidden
    per_layer = attention + mlp + 2 * d                     # + two RMSNorm scales
    embed = cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2)
    return embed + cfg.num_layers * per_layer + d           # + final norm


def test_parameter_counts_by_hand():
    # d=16, h=2, ratio 4: SwiGLU hidden round(2/3 * 64) = 43 -> 48; GELU hidden 64.
    assert mlp_hidden("swiglu", 16, 4.0) == 48 and mlp_hidden("gelu", 16, 4.0) == 64
    cfg = config()
    # embed 32*16 + 2 * (4*256 + 3*16*48 + 32) + 16
    assert expected_params(cfg) == 512 + 2 * (1024 + 2304 + 32) + 16 == 7248
    for c in (cfg, config(mlp="gelu"), config(attention=AttentionConfig(num_kv_heads=1)),
              config(tie_embeddings=False)):
        assert num_params(Transformer(c, rngs=nnx.Rngs(0))) == expected_params(c)
    tied = num_params(Transformer(cfg, rngs=nnx.Rngs(0)))
    untied = num_params(Transformer(config(tie_embeddings=False), rngs=nnx.Rngs(0)))
    assert untied - tied == VOCAB * cfg.d_model


# ------------------------------------------------------------------ masking
def test_causal_future_tokens_do_not_change_the_past():
    model = Transformer(config(), rngs=nnx.Rngs(0))
    tokens = random_tokens(0)
    t = 5
    changed = tokens.at[:, t + 1:].set((tokens[:, t + 1:] + 7) % VOCAB)
    a, b = forward(model, tokens), forward(model, changed)
    np.testing.assert_allclose(a[:, :t + 1], b[:, :t + 1], atol=1e-6)
    assert not np.allclose(a[:, t + 1:], b[:, t + 1:], atol=1e-3)


def test_packed_document_equals_the_document_alone():
    model = Transformer(config(), rngs=nnx.Rngs(0))
    n1, n2 = 5, 7
    row = random_tokens(1, batch=1, length=n1 + n2)
    segment_ids = jnp.array([[0] * n1 + [1] * n2])
    positions = jnp.concatenate([jnp.arange(n1), jnp.arange(n2)])[None]   # restart per document
    packed = forward(model, row, segment_ids, positions)
    alone = forward(model, row[:, n1:])
    np.testing.assert_allclose(packed[:, n1:], alone, atol=1e-5, rtol=1e-5)
    # Without the segment mask, document 2 sees document 1.
    leaky = Transformer(config(attention=AttentionConfig(segment_mask=False)), rngs=nnx.Rngs(0))
    assert not np.allclose(forward(leaky, row, segment_ids, positions)[:, n1:], alone, atol=1e-3)


# ------------------------------------------------------------------ decoding
@pytest.mark.parametrize("energy", ["softmax", "sigmoid"])
def test_prefill_then_decode_equals_full_forward(energy):
    model = Transformer(config(attention=AttentionConfig(energy=energy, num_kv_heads=1)),
                        rngs=nnx.Rngs(0))
    tokens = random_tokens(2, length=10)
    full = forward(model, tokens)
    # Cache length = sequence length: sigmoid's default bias is -log(number of keys).
    caches = model.init_cache(batch=2, max_len=10)
    logits, caches = forward_cached(model, tokens[:, :4], caches)
    steps = [logits]
    for t in range(4, 10):
        logits, caches = forward_cached(model, tokens[:, t:t + 1], caches)
        steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=1e-5, rtol=1e-5)
    assert int(caches[0].index) == 10 and len(caches) == 2


# ------------------------------------------------------------------ every energy trains
def loss_fn(model, tokens):
    logits = model(tokens[:, :-1], deterministic=False)
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()


@pytest.mark.parametrize("energy", ea.available_energies())
def test_every_registered_energy_plugs_in(energy):
    model = Transformer(config(num_layers=1, dropout=0.1, attention=AttentionConfig(energy=energy)),
                        rngs=nnx.Rngs(params=0, dropout=1))
    loss, grads = nnx.jit(nnx.value_and_grad(loss_fn))(model, random_tokens(3))
    assert np.isfinite(float(loss))
    leaves = jax.tree.leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert any(float(jnp.abs(g).max()) > 0 for g in leaves)


def test_adam_memorises_a_fixed_batch():
    model = Transformer(config(), rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adamw(1e-2), wrt=nnx.Param)
    tokens = random_tokens(4, batch=4, length=13)

    @nnx.jit
    def step(model, optimizer, tokens):
        loss, grads = nnx.value_and_grad(loss_fn)(model, tokens)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer, tokens)) for _ in range(30)]
    assert abs(losses[0] - np.log(VOCAB)) < 0.3          # small init: near-uniform predictions
    assert losses[-1] < 0.5 * losses[0], losses


def test_dropout_is_active_only_when_not_deterministic():
    model = Transformer(config(dropout=0.5), rngs=nnx.Rngs(params=0, dropout=1))
    tokens = random_tokens(5)
    train = nnx.jit(lambda m, t: m(t, deterministic=False))
    np.testing.assert_allclose(forward(model, tokens), forward(model, tokens))
    assert not np.allclose(train(model, tokens), forward(model, tokens), atol=1e-3)
    assert not np.allclose(train(model, tokens), train(model, tokens), atol=1e-3)  # fresh masks


# ------------------------------------------------------------------ sampling
def test_greedy_generation_is_argmax_of_the_full_forward():
    model = Transformer(config(), rngs=nnx.Rngs(0))
    prompt = random_tokens(6, length=3)
    out = generate(model, prompt, 8, rng=jax.random.key(0), temperature=0)
    assert out.shape == (2, 11) and out.dtype == jnp.int32
    np.testing.assert_array_equal(out[:, :3], prompt)
    np.testing.assert_array_equal(out, generate(model, prompt, 8, rng=jax.random.key(1), temperature=0))
    logits = forward(model, out)
    np.testing.assert_array_equal(out[:, 3:], jnp.argmax(logits[:, 2:-1], axis=-1))
    top1 = generate(model, prompt, 8, rng=jax.random.key(2), temperature=1.0, top_k=1)
    np.testing.assert_array_equal(top1, out)
    sampled = generate(model, prompt, 8, rng=jax.random.key(3), temperature=1.0, top_k=5)
    assert sampled.shape == (2, 11) and bool(jnp.all((sampled >= 0) & (sampled < VOCAB)))


def test_generate_rejects_bad_arguments():
    model = Transformer(config(), rngs=nnx.Rngs(0))
    prompt = random_tokens(7, length=10)
    with pytest.raises(ValueError, match=r"10 tokens \+ 7 new.*max_seq_len=16"):
        generate(model, prompt, 7, rng=jax.random.key(0))
    with pytest.raises(ValueError, match="temperature"):
        generate(model, prompt, 2, rng=jax.random.key(0), temperature=-1.0)
    with pytest.raises(ValueError, match="top_k"):
        generate(model, prompt, 2, rng=jax.random.key(0), top_k=0)


# ------------------------------------------------------------------ registry
def test_build_model_by_name_and_a_misspelled_name():
    assert isinstance(build_model(config(), rngs=nnx.Rngs(0)), Transformer)
    with pytest.raises(ValueError, match=r"'transfomer'.*Did you mean 'transformer'.*Registered"):
        build_model(config(name="transfomer"), rngs=nnx.Rngs(0))
