"""EnergyAttention, RoPE and the KV cache, each checked against an independent reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import energy_attn as ea
from energy_attn.energies.softmax import softmax_reference
from energy_attn.rope import rope_frequencies

B, T, D_MODEL = 2, 12, 16


def tokens(seed, batch=B, length=T, width=D_MODEL):
    return jax.random.normal(jax.random.key(seed), (batch, length, width), jnp.float32)


@nnx.jit
def forward(layer, x, mask=None, context=None):
    """The layer under jit: eager attend re-traces its kernels on every call, which is slow."""
    return layer(x, mask=mask, context=context)


rope = jax.jit(ea.apply_rope)     # one compile instead of one per eager op


def warm_softmax(q, k, v, zeta, *, mask, beta=0.7):
    """A researcher's own energy: softmax attention at a fixed inverse temperature."""
    s = ea.scores(q, k, mask=mask, beta=beta)
    return ea.logsumexp(s + ea.source(zeta, v), axis=-1).sum()


# ------------------------------------------------------------------ shapes
def test_output_shape_grouped_query_and_wide_values():
    layer = ea.EnergyAttention(D_MODEL, num_heads=4, num_kv_heads=2, value_dim=6, rngs=nnx.Rngs(0))
    assert layer.k_proj.kernel.shape == (D_MODEL, 2 * 4)      # K/V project to 2 heads of width 4
    assert layer.v_proj.kernel.shape == (D_MODEL, 2 * 6)
    out = forward(layer, tokens(0), ea.causal())
    assert out.shape == (B, T, D_MODEL)
    assert bool(jnp.all(jnp.isfinite(out)))


def test_cross_attention_to_a_context_of_different_length_and_width():
    layer = ea.EnergyAttention(D_MODEL, num_heads=4, context_dim=10, rngs=nnx.Rngs(0))
    context = tokens(1, length=5, width=10)
    out = forward(layer, tokens(0), context=context)
    assert out.shape == (B, T, D_MODEL)
    # Without RoPE or a mask, cross-attention is permutation-invariant in the context.
    shuffled = forward(layer, tokens(0), context=context[:, ::-1])
    np.testing.assert_allclose(out, shuffled, atol=1e-5)


# ------------------------------------------------------ hand-written reference
def reference_forward(layer, x):
    """The layer's own weights, our RoPE, and jax.nn.dot_product_attention."""
    b, t, _ = x.shape
    q = (x @ layer.q_proj.kernel[...]).reshape(b, t, layer.num_heads, layer.head_dim)
    k = (x @ layer.k_proj.kernel[...]).reshape(b, t, layer.num_kv_heads, layer.head_dim)
    v = (x @ layer.v_proj.kernel[...]).reshape(b, t, layer.num_kv_heads, layer.value_dim)
    positions = jnp.arange(t)
    q, k = ea.apply_rope(q, positions), ea.apply_rope(k, positions)
    out = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    return out.reshape(b, t, -1) @ layer.out_proj.kernel[...]


@pytest.mark.parametrize("num_kv_heads", [4, 2])
def test_self_attention_matches_dot_product_attention(num_kv_heads):
    layer = ea.EnergyAttention(D_MODEL, num_heads=4, num_kv_heads=num_kv_heads, rngs=nnx.Rngs(0))
    x = tokens(0)
    np.testing.assert_allclose(forward(layer, x, ea.causal()), reference_forward(layer, x),
                               atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------- decoding
@pytest.mark.parametrize("energy, params", [("softmax", None), (warm_softmax, {"beta": 0.4})])
def test_prefill_then_decode_equals_full_causal_forward(energy, params):
    layer = ea.EnergyAttention(D_MODEL, num_heads=4, num_kv_heads=2, energy=energy,
                               energy_params=params, rngs=nnx.Rngs(0))
    x = tokens(0)
    full = forward(layer, x, ea.causal())

    graphdef, state = nnx.split(layer)
    traces = []

    @jax.jit
    def step(state, x_new, cache):
        traces.append(1)        # runs only while tracing
        return nnx.merge(graphdef, state)(x_new, cache=cache, decode=True)

    cache = layer.init_cache(B, max_len=16)            # longer than needed: tail stays unfilled
    prefill, cache = step(state, x[:, :5], cache)
    outs = [prefill]
    for t in range(5, T):
        out, cache = step(state, x[:, t:t + 1], cache)
        outs.append(out)
    assert len(traces) == 2, "one compile for the prefill, one shared by every decode step"
    assert int(cache.index) == T
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=1e-5, rtol=1e-5)


def test_cache_overflow_is_caught_when_the_index_is_concrete():
    layer = ea.EnergyAttention(D_MODEL, num_heads=4, rngs=nnx.Rngs(0))
    prefill = nnx.jit(lambda layer, x, cache: layer(x, cache=cache))
    _, cache = prefill(layer, tokens(0, length=6), layer.init_cache(B, max_len=8))
    with pytest.raises(ValueError, match="cache overflow: 6 positions filled"):
        layer(tokens(1, length=3), cache=cache)


def test_decode_without_cache_and_cross_attention_with_cache_are_refused():
    layer = ea.EnergyAttention(D_MODEL, num_heads=4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="decode=True needs a cache"):
        layer(tokens(0), decode=True)
    with pytest.raises(ValueError, match="cross-attention"):
        layer(tokens(0), context=tokens(1), cache=layer.init_cache(B, 16))


# ------------------------------------------------------------------- RoPE
def test_rope_scores_depend_only_on_position_difference():
    q = jax.random.normal(jax.random.key(0), (1, 1, 1, 8))
    k = jax.random.normal(jax.random.key(1), (1, 1, 1, 8))

    def score(m, n):
        return jnp.sum(rope(q, jnp.array([m])) * rope(k, jnp.array([n])))

    for shift in (0, 3, 117):
        np.testing.assert_allclose(score(5 + shift, 2 + shift), score(5, 2), rtol=1e-4)
        np.testing.assert_allclose(score(2 + shift, 9 + shift), score(2, 9), rtol=1e-4)
    assert not np.isclose(score(5, 2), score(5, 3))      # but it does depend on the difference


def test_rope_preserves_norms_and_accepts_batched_positions():
    x = jax.random.normal(jax.random.key(0), (2, 5, 3, 8))
    positions = jnp.array([[0, 1, 2, 3, 4], [7, 8, 9, 10, 11]])
    rotated = rope(x, positions)
    np.testing.assert_allclose(np.linalg.norm(rotated, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)
    np.testing.assert_allclose(rope(x, jnp.arange(5))[0], rotated[0], atol=1e-6)
    np.testing.assert_allclose(rope(x, jnp.zeros(5, int)), x)   # position 0: identity


def test_rope_rejects_odd_head_dim_and_mismatched_positions():
    with pytest.raises(ValueError, match="head_dim must be even; got 7"):
        rope_frequencies(7)
    with pytest.raises(ValueError, match="head_dim must be even"):
        ea.EnergyAttention(15, num_heads=3, rngs=nnx.Rngs(0))        # head_dim 5
    with pytest.raises(ValueError, match=r"positions has shape \(4,\)"):
        ea.apply_rope(jnp.zeros((1, 5, 2, 8)), jnp.arange(4))


# -------------------------------------------------------------- bad input
def test_unknown_energy_fails_at_construction_with_a_hint():
    with pytest.raises(ValueError, match="unknown energy 'sofmax'.*Did you mean 'softmax'"):
        ea.EnergyAttention(D_MODEL, num_heads=4, energy="sofmax", rngs=nnx.Rngs(0))


def test_heads_not_divisible_by_kv_heads():
    with pytest.raises(ValueError, match="num_heads=4 must be a multiple of num_kv_heads=3"):
        ea.EnergyAttention(D_MODEL, num_heads=4, num_kv_heads=3, rngs=nnx.Rngs(0))


def test_wrong_input_width():
    layer = ea.EnergyAttention(D_MODEL, num_heads=4, context_dim=10, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"x must have shape \(B, T, d_model=16\); got \(2, 12, 8\)"):
        layer(tokens(0, width=8))
    with pytest.raises(ValueError, match=r"context must have shape \(B, T, context_dim=10\)"):
        layer(tokens(0), context=tokens(1, width=16))


# -------------------------------------------------------------- gradients
def test_parameter_gradients_match_plain_autodiff_reference():
    x = tokens(0)

    def loss(layer):
        return jnp.sum(jnp.sin(layer(x, mask=ea.causal())))

    def param_grads(energy):
        layer = ea.EnergyAttention(D_MODEL, num_heads=4, num_kv_heads=2, use_bias=True,
                                   energy=energy, rngs=nnx.Rngs(0))
        return nnx.jit(nnx.grad(loss))(layer)

    fast, reference = param_grads("softmax"), param_grads(softmax_reference)
    for g in jax.tree.leaves(fast):
        assert bool(jnp.all(jnp.isfinite(g)))
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(fast))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4), fast, reference)
