"""Modern Hopfield networks from the energy: CCCP = jax.grad, retrieval, β guidance,
diagnostics, the Bayesian view, and the hopfield-layers-style NNX layers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import energy_attn as ea
from energy_attn import hopfield as hf


def normal(seed, shape, scale=1.0):
    # numpy, not jax.random: each new shape would compile a sampler (~0.3 s on CPU)
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def softmax_np(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


# ---------------------------------------------------------------- the energy
def test_energies_and_association_match_their_formulas():
    X, xi, beta = normal(0, (6, 5)), normal(1, (3, 5)), 0.7
    s = np.asarray(xi @ X.T)
    lse = np.log(np.exp(beta * s).sum(-1)) / beta
    np.testing.assert_allclose(hf.lse_energy(xi, X, beta), lse, rtol=1e-5)
    m2 = float(np.max((np.asarray(X) ** 2).sum(-1)))
    e = -lse + 0.5 * (np.asarray(xi) ** 2).sum(-1) + np.log(6) / beta + 0.5 * m2
    np.testing.assert_allclose(hf.hopfield_energy(xi, X, beta), e, rtol=1e-5)
    np.testing.assert_allclose(hf.association(xi, X, beta), softmax_np(beta * s), atol=1e-6)


def test_cccp_update_is_explicit_formula_and_one_attention_step():
    X, xi, beta = normal(0, (6, 5)), normal(1, (3, 5)), 0.7
    explicit = softmax_np(beta * np.asarray(xi @ X.T)) @ np.asarray(X)      # X softmax(β Xᵀξ)
    new = hf.update(xi, X, beta)
    np.testing.assert_allclose(new, explicit, atol=1e-5)
    # values = keys: the core's ∂F/∂ζ of the softmax energy, (T, H=1, D) unbatched
    out = ea.attend("softmax", xi[:, None], X[:, None], X[:, None], beta=beta)[:, 0]
    np.testing.assert_allclose(new, out, atol=1e-5)


def test_per_head_update_equals_batched_multi_head_attention():
    B, Q, H, N, d = 2, 3, 4, 5, 6
    xi, k = normal(0, (B, Q, H, d)), normal(1, (B, N, H, d))
    beta = jnp.array([0.1, 0.5, 1.0, 2.0])
    new = hf.update(xi, jnp.swapaxes(k, 1, 2)[:, None], beta)       # patterns (B, 1, H, N, d)
    np.testing.assert_allclose(new, ea.attend("softmax", xi, k, k, beta=beta), atol=1e-5)


# ---------------------------------------------------------------- retrieval
@pytest.mark.parametrize("beta", [0.1, 1.0, 8.0, "per_head"])
def test_energy_never_increases_along_retrieval(beta):
    H, Q, N, d = 3, 4, 10, 16
    X = normal(0, (H, N, d), d ** -0.5)                 # per-head pattern sets, ‖x‖ ≈ 1
    xi = normal(1, (Q, H, d), d ** -0.5)
    beta = jnp.array([0.5, 4.0, 30.0]) if beta == "per_head" else beta
    r = hf.retrieve(xi, X, beta, update_steps_max=20, update_steps_eps=None)
    assert r.trajectory.shape == (21, Q, H, d) and r.energies.shape == (21, Q, H)
    assert r.associations.shape == (20, Q, H, N) and r.num_steps.shape == (Q, H)
    assert float(jnp.max(jnp.diff(r.energies, axis=0))) <= 1e-6
    np.testing.assert_allclose(r.energies, hf.hopfield_energy(r.trajectory, X, beta), atol=1e-6)
    # associations[t] is the weighting step t+1 applied
    np.testing.assert_allclose(r.trajectory[1:], jnp.einsum("tqhn,hnd->tqhd", r.associations, X),
                               atol=1e-5)


def plus_minus_patterns(seed, n=8, d=64):
    return np.random.default_rng(seed).choice([-1.0, 1.0], size=(n, d)).astype(np.float32)


def test_plain_retrieval_of_corrupted_and_half_masked_patterns():
    X = plus_minus_patterns(0)
    beta = hf.suggest_beta(X)
    rng = np.random.default_rng(0)
    flipped = X[3].copy()
    flipped[rng.choice(64, int(0.3 * 64), replace=False)] *= -1     # 30% of the bits wrong
    masked = X[5].copy()
    masked[32:] = 0.0                                                 # half the pattern unknown
    r = hf.retrieve(np.stack([flipped, masked]), X, beta)
    np.testing.assert_array_equal(np.argmax(hf.association(r.result, X, beta), -1), [3, 5])
    np.testing.assert_array_equal(np.sign(r.result), X[[3, 5]])
    assert np.all(np.asarray(r.num_steps) < 100)                     # converged, not capped


def test_small_beta_averages_all_patterns():
    X = plus_minus_patterns(0)
    query = X[3] * np.where(np.arange(64) < 19, -1.0, 1.0)
    r = hf.retrieve(query, X, 0.01)
    mean = X.mean(0)
    spread = np.linalg.norm(X - mean, axis=-1).min()
    assert np.linalg.norm(np.asarray(r.result) - mean) < 0.02 * spread
    codes, names = hf.classify_heads(hf.association(r.result, X, 0.01))
    assert names[int(codes)] == "global"


def test_stop_rules_global_and_per_head():
    X = normal(0, (6, 8), 8 ** -0.5)
    xi = normal(1, (5, 2, 8), 8 ** -0.5)                    # 5 queries × 2 heads
    r = hf.retrieve(xi, X, 2.0, update_steps_max=1)
    assert r.trajectory.shape[0] == 2 and np.all(np.asarray(r.num_steps) == 1)
    r = hf.retrieve(xi, X, 2.0, update_steps_eps=10.0, max_steps=7)   # every change is "small"
    assert np.all(np.asarray(r.num_steps) == 1)
    r = hf.retrieve(xi, X, 2.0, update_steps_max=0)
    assert np.all(np.asarray(r.num_steps) == 0)
    np.testing.assert_allclose(r.result, xi)

    r = hf.retrieve(xi, X, 2.0, update_steps_max=jnp.array([1, 3]), update_steps_eps=None)
    np.testing.assert_array_equal(r.num_steps, np.tile([1, 3], (5, 1)))
    # a stopped head is frozen for the rest of the loop (padding with its final state)
    np.testing.assert_allclose(r.trajectory[1:, :, 0], np.broadcast_to(r.result[:, 0], (3, 5, 8)))
    assert not np.allclose(r.trajectory[2, :, 1], r.trajectory[3, :, 1])

    r = hf.retrieve(xi, X, 2.0, update_steps_eps=jnp.array([10.0, 0.0]), max_steps=7)
    np.testing.assert_array_equal(r.num_steps, np.tile([1, 7], (5, 1)))


def test_retrieve_is_jittable():
    X, xi = normal(0, (6, 8)), normal(1, (4, 8))
    f = jax.jit(lambda xi, b: hf.retrieve(xi, X, b, update_steps_max=3))
    r = f(xi, 0.5)
    assert isinstance(r, hf.Retrieval)
    np.testing.assert_allclose(r.result, hf.retrieve(xi, X, 0.5, update_steps_max=3).result, atol=1e-6)


# ---------------------------------------------------------------- β guidance + diagnostics
def test_separation_on_a_hand_example():
    X = np.array([[3.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    # gram [[9,0,3],[0,4,2],[3,2,2]]: Δ = [9−3, 4−2, 2−3]
    np.testing.assert_allclose(hf.separation(X), [6.0, 2.0, -1.0])
    with pytest.raises(ValueError, match="not separable"):
        hf.suggest_beta(X)


def test_suggest_beta_meets_ramsauers_separation_condition():
    X = plus_minus_patterns(1, n=16)
    n, m2 = 16, 64.0
    delta = float(np.min(hf.separation(X)))
    b = hf.suggest_beta(X)
    bound = lambda b: 2 / (b * n) + np.log(2 * (n - 1) * n * b * m2) / b
    assert delta >= bound(b) * (1 - 1e-6) and delta < bound(0.95 * b)   # the smallest such β
    assert hf.suggest_beta(X, safety=3.0) == pytest.approx(3 * b)


def test_top_k_mass_and_head_classes_on_hand_made_weights():
    w = np.array([[0.5, 0.4, 0.1, 0.0],
                  [1.0, 0.0, 0.0, 0.0],
                  [0.25, 0.25, 0.25, 0.25],
                  [5.0, 0.0, 4.0, 1.0]])                   # unnormalised: same as row 0
    np.testing.assert_array_equal(hf.top_k_mass(w), [2, 1, 4, 2])
    np.testing.assert_array_equal(hf.top_k_mass(w, mass=0.5), [1, 1, 2, 1])
    codes, names = hf.classify_heads(w)
    assert [names[c] for c in np.asarray(codes)] == ["metastable", "single", "global", "metastable"]
    # per head: (B, H, Tq, N) as from ea.attention_weights, median k over B and Tq
    per_head = np.stack([np.stack([w[1], w[1]]), np.stack([w[0], w[2]]), np.stack([w[2], w[2]])])
    codes, _ = hf.classify_heads(per_head[None], head_axis=1)
    np.testing.assert_array_equal(codes, [2, 0, 0])            # medians k = 1, 3, 4


def test_stationarity_at_separated_patterns():
    X = plus_minus_patterns(0)
    st = hf.stationarity(X, 4 * hf.suggest_beta(X))
    assert float(jnp.max(st["grad_norm"])) < 1e-3
    assert bool(jnp.all(st["psd"])) and float(jnp.min(st["min_eigenvalue"])) > 0.5
    # at tiny β the patterns are not fixed points: everything flows to the mean
    assert float(jnp.min(hf.stationarity(X, 1e-3)["grad_norm"])) > 1.0


def test_posterior_mean_and_covariance_are_explicit_moments():
    X, V, xi = normal(0, (7, 4)), normal(1, (7, 3)), normal(2, (2, 5, 4))
    for beta in (0.8, jnp.linspace(0.2, 2.0, 5)):            # scalar and per-query β
        mean, cov = hf.posterior(xi, X, beta, values=V)
        assert mean.shape == (2, 5, 3) and cov.shape == (2, 5, 3, 3)
        p = softmax_np(np.asarray(beta)[..., None] * np.asarray(xi @ X.T))
        mu = p @ np.asarray(V)
        second = np.einsum("...n,nd,ne->...de", p, V, V)
        np.testing.assert_allclose(mean, mu, atol=1e-5)
        np.testing.assert_allclose(cov, second - mu[..., :, None] * mu[..., None, :], atol=1e-5)
    mean, _ = hf.posterior(xi, X, 0.8)                          # values = patterns: the CCCP step
    np.testing.assert_allclose(mean, hf.update(xi, X, 0.8), atol=1e-5)


# ---------------------------------------------------------------- layers
B, N, S, D = 2, 7, 3, 12


@nnx.jit(static_argnames="return_info")
def call(layer, *args, return_info=False):
    """Layers under jit: eagerly every small op would compile on its own (slow)."""
    return layer(*args, return_info=return_info)


@nnx.jit
def output_and_grads(model, *args):
    """One compile: the output (for its shape) and the gradient of a loss on it."""
    def loss(m):
        out = m(*args)
        return jnp.sum(out ** 2), out
    (_, out), grads = nnx.value_and_grad(loss, has_aux=True)(model)
    return out, grads


def all_finite(tree):
    leaves = jax.tree.leaves(tree)
    return bool(leaves) and all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)


@nnx.jit(static_argnums=1)
def reference(layer, steps, stored, state, proj):
    """The layer's own norms and projections, `steps` CCCP steps written as attention
    with values = keys, then ea.attend onto the projected pattern projection."""
    def heads(x, norm, linear):
        return linear(norm(x)).reshape(*x.shape[:-1], layer.num_heads, -1)
    k = heads(stored, layer.norm_stored, layer.stored_proj)
    q = heads(state, layer.norm_state, layer.state_proj)
    v = heads(proj, layer.norm_projection, layer.projection_proj)
    beta = jnp.asarray(layer.scaling)
    for _ in range(steps):
        q = ea.attend("softmax", q, k, k, beta=beta)
    return layer.out_proj(ea.attend("softmax", q, k, v, beta=beta).reshape(B, S, -1))


@pytest.mark.parametrize("steps", [0, 2])
def test_hopfield_layer_is_attention_after_updates_in_association_space(steps):
    layer = hf.Hopfield(D, hidden_size=5, output_size=9, pattern_size=4, num_heads=3,
                        scaling=[0.3, 1.0, 2.0], update_steps_max=steps, update_steps_eps=None,
                        stored_pattern_size=10, pattern_projection_size=8, rngs=nnx.Rngs(0))
    stored, state, proj = normal(0, (B, N, 10)), normal(1, (B, S, D)), normal(2, (B, N, 8))
    out, info = call(layer, stored, state, proj, return_info=True)
    assert out.shape == (B, S, 9)
    np.testing.assert_allclose(out, reference(layer, steps, stored, state, proj), atol=2e-5)

    assert info["association"].shape == (B, 3, S, N)
    np.testing.assert_allclose(info["association"].sum(-1), 1.0, atol=1e-5)
    assert info["associations"].shape == (steps, B, 3, S, N)
    assert info["energies"].shape == (steps + 1, B, 3, S)
    assert float(jnp.max(jnp.diff(info["energies"], axis=0), initial=0.0)) <= 1e-5
    np.testing.assert_array_equal(info["num_steps"], steps)


def test_hopfield_per_head_stop_rules_and_static_patterns():
    layer = hf.Hopfield(8, num_heads=2, update_steps_max=[1, 4], update_steps_eps=None,
                        static_stored_pattern=True, static_state_pattern=True,
                        static_pattern_projection=True, disable_out_projection=True,
                        normalize_stored_pattern=False, normalize_state_pattern=False,
                        normalize_pattern_projection=False, rngs=nnx.Rngs(0))
    assert layer.stored_proj is None and layer.out_proj is None
    stored, state = normal(0, (B, N, 8)), normal(1, (B, S, 8))
    out, info = call(layer, stored, state, return_info=True)
    assert out.shape == (B, S, 8)
    np.testing.assert_array_equal(info["num_steps"][:, 0], 1)
    np.testing.assert_array_equal(info["num_steps"][:, 1], 4)
    # static and un-normalised: plain Hopfield retrieval of the raw patterns, split in heads
    x, X = state.reshape(B, S, 2, 4), jnp.swapaxes(stored.reshape(B, N, 2, 4), 1, 2)[:, None]
    r = hf.retrieve(x, X, 0.5, update_steps_max=jnp.array([1, 4]), update_steps_eps=None)
    np.testing.assert_allclose(out.reshape(B, S, 2, 4), hf.update(r.result, X, 0.5), atol=1e-5)


def test_pooling_and_lookup_layer_shapes_and_finite_gradients():
    x = normal(0, (B, N, D))
    pool = hf.HopfieldPooling(D, output_size=6, quantity=2, num_heads=2, rngs=nnx.Rngs(0))
    out, grads = output_and_grads(pool, x)
    assert out.shape == (B, 2, 6) and all_finite(grads)
    assert float(jnp.abs(grads["query"][...]).max()) > 0       # the pooling query trains

    # one update step: gradients also flow through the retrieval loop
    lookup = hf.HopfieldLayer(D, output_size=6, quantity=11, num_heads=2, update_steps_max=1,
                              lookup_weights_as_separated=True, rngs=nnx.Rngs(1))
    out, grads = output_and_grads(lookup, x)
    assert out.shape == (B, N, 6) and all_finite(grads)
    assert float(jnp.abs(grads["lookup"][...]).max()) > 0      # the memory trains
    assert float(jnp.abs(grads["targets"][...]).max()) > 0
    _, info = call(lookup, x, return_info=True)
    assert info["association"].shape == (B, 2, N, 11)


# ---------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors():
    X, xi = normal(0, (5, 4)), normal(1, (4,))
    for beta in (0.0, -1.0, jnp.array([1.0, -0.5])):
        with pytest.raises(ValueError, match="beta must be positive"):
            hf.retrieve(jnp.stack([xi, xi]), X, beta)
    with pytest.raises(ValueError, match="width 3 but patterns have width 4"):
        hf.update(normal(1, (3,)), X, 1.0)
    with pytest.raises(ValueError, match="patterns contains NaN"):
        hf.retrieve(xi, np.where(np.arange(4) == 1, np.nan, X), 1.0)
    with pytest.raises(ValueError, match="xi contains NaN"):
        hf.hopfield_energy(np.where(np.arange(4) == 0, np.inf, xi), X, 1.0)
    with pytest.raises(ValueError, match="patterns is empty"):
        hf.association(xi, jnp.zeros((0, 4)), 1.0)
    with pytest.raises(ValueError, match="update_steps_max must be a non-negative integer"):
        hf.retrieve(xi, X, 1.0, update_steps_max=-1)
    with pytest.raises(ValueError, match="scaling must be positive"):
        hf.Hopfield(8, scaling=0.0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="scaling must be a scalar or have one entry per head"):
        hf.Hopfield(8, num_heads=2, scaling=[1.0, 2.0, 3.0], rngs=nnx.Rngs(0))
    layer = hf.Hopfield(D, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=rf"state must have shape \(B, length, {D}\)"):
        call(layer, normal(0, (1, 3, D)), normal(1, (1, 2, 6)))
