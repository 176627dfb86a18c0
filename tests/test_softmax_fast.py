"""The softmax energy's fast derivative rule against plain autodiff of the same
energy and against jax.nn.dot_product_attention: every kernel, with masks, first
and second order."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import energy_attn as ea
from energy_attn.energies.softmax import softmax_reference
from tests import reference as ref
from tests.test_energies import make_qkv, mask_case

IMPLS = ["blockwise", "dense", "flash", "dpa", "few_queries"]
OPTS = dict(block_q=4, block_k=4)      # tiny blocks so block skipping is exercised


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mask_name", ["none", "causal", "padding", "segments", "window", "alibi"])
def test_kernels_first_and_second_order(impl, mask_name):
    q, k, v = make_qkv(seed=5)
    mask, _, _ = mask_case(mask_name)
    w = jax.random.normal(jax.random.PRNGKey(2), q.shape[:-1] + (v.shape[-1],))

    def loss(energy, **kw):
        return lambda q, k, v: jnp.sum(jnp.tanh(ea.attend(energy, q, k, v, mask=mask, **kw)) * w)

    out = jax.jit(lambda q, k, v: ea.attend("softmax", q, k, v, mask=mask, impl=impl, **OPTS))(q, k, v)
    np.testing.assert_allclose(out, ea.attend(softmax_reference, q, k, v, mask=mask), atol=1e-5)
    got = jax.jit(jax.grad(loss("softmax", impl=impl, **OPTS), argnums=(0, 1, 2)))(q, k, v)
    want = jax.grad(loss(softmax_reference), argnums=(0, 1, 2))(q, k, v)
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("impl", IMPLS)
def test_matches_dot_product_attention(impl):
    q, k, v = make_qkv(dv=8)        # dot_product_attention needs Dv == Dk
    got = ea.attend("softmax", q, k, v, mask=ea.causal(), impl=impl, **OPTS)
    want = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_log_partition_value(impl):
    q, k, v = make_qkv()
    mask, allowed, bias = mask_case("alibi")
    _, f = ea.attend_with_energy("softmax", q, k, v, mask=mask, impl=impl, **OPTS)
    np.testing.assert_allclose(f, ref.softmax_log_partition(q, k, jnp.asarray(allowed), 8 ** -0.5, bias), rtol=1e-5)


@pytest.mark.parametrize("impl", ["blockwise", "flash", "few_queries"])
def test_source_derivatives_at_nonzero_zeta(impl):
    """The ζ·v term is skipped in value when ζ = 0; derivatives must not notice."""
    q, k, v = make_qkv()
    zeta = 0.3 * jax.random.normal(jax.random.PRNGKey(4), q.shape[:-1] + (v.shape[-1],))
    fast = lambda z: ea.get_energy("softmax")(q, k, v, z, mask=ea.causal(), impl=impl, **OPTS)
    slow = lambda z: softmax_reference(q, k, v, z, mask=ea.causal())
    np.testing.assert_allclose(jax.grad(fast)(zeta), jax.grad(slow)(zeta), atol=1e-5)
    u = jax.random.normal(jax.random.PRNGKey(5), zeta.shape)
    hvp = lambda f: jax.grad(lambda z: jnp.vdot(jax.grad(f)(z), u))(zeta)
    np.testing.assert_allclose(hvp(fast), hvp(slow), atol=1e-5)
    # ζ held fixed at a non-zero value while q, k, v vary (the shortcut must not apply)
    energy = ea.get_energy("softmax")
    train_like = lambda f: jax.grad(lambda q, k, v: jnp.sum(u * jax.grad(
        lambda z: f(q, k, v, z))(zeta)), argnums=(0, 1, 2))(q, k, v)
    got = train_like(lambda q, k, v, z: energy(q, k, v, z, mask=ea.causal(), impl=impl, **OPTS))
    want = train_like(lambda q, k, v, z: softmax_reference(q, k, v, z, mask=ea.causal()))
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, atol=2e-5, rtol=1e-4)


def test_kv_cache_style_traced_offset():
    """A traced causal offset (decoding) falls back to full key ranges but stays exact."""
    q, k, v = make_qkv(tq=2, tk=16)
    f = jax.jit(lambda off: ea.attend("softmax", q, k, v, mask=ea.causal(off), impl="flash", block_q=2, block_k=4))
    allowed = jnp.asarray(ref.dense_allowed(2, 2, 16, causal=True, offset=9))
    np.testing.assert_allclose(f(9), ref.softmax_attention(q, k, v, allowed, 8 ** -0.5), atol=1e-5)


def test_per_head_beta():
    q, k, v = make_qkv(hkv=4)
    beta = jnp.array([0.1, 0.5, 1.0, 2.0])
    got = ea.attend("softmax", q, k, v, mask=ea.causal(), beta=beta)
    want = ea.attend(softmax_reference, q, k, v, mask=ea.causal(), beta=beta)
    np.testing.assert_allclose(got, want, atol=1e-5)
    g = jax.grad(lambda b: ea.attend("softmax", q, k, v, beta=b).sum())(beta)
    g_ref = jax.grad(lambda b: ea.attend(softmax_reference, q, k, v, beta=b).sum())(beta)
    np.testing.assert_allclose(g, g_ref, atol=1e-4)


def test_forward_mode_and_hessian():
    """jax.hessian (forward-over-reverse) works through the dense/blockwise kernels."""
    q, k, v = make_qkv(b=1, tq=3, tk=5, h=2, hkv=2, dv=3)
    zeta = jnp.zeros((1, 3, 2, 3))
    fast = lambda z: ea.get_energy("softmax")(q, k, v, z, mask=ea.causal())
    slow = lambda z: softmax_reference(q, k, v, z, mask=ea.causal())
    np.testing.assert_allclose(jax.hessian(fast)(zeta), jax.hessian(slow)(zeta), atol=1e-5)


def test_posterior_covariance_is_the_value_covariance():
    q, k, v = make_qkv()
    cov = ea.posterior_covariance("softmax", q, k, v, mask=ea.causal())
    p = ref.softmax_attention(q, k, jnp.eye(12)[None, :, None, :].repeat(2, 0).repeat(2, 2),
                              jnp.asarray(ref.dense_allowed(2, 12, 12, causal=True)), 8 ** -0.5)
    vv = jnp.repeat(v, 2, 2)                                          # (B, Tk, H, Dv)
    mean = jnp.einsum("bqhk,bkhd->bqhd", p, vv)
    second = jnp.einsum("bqhk,bkhd,bkhe->bqhde", p, vv, vv)
    want = second - mean[..., :, None] * mean[..., None, :]
    np.testing.assert_allclose(cov, want, atol=1e-5)
    # symmetric positive semi-definite
    np.testing.assert_allclose(cov, jnp.swapaxes(cov, -1, -2), atol=1e-6)
    assert np.linalg.eigvalsh(np.asarray(cov)).min() > -1e-5


def test_posterior_covariance_with_flash_kernel():
    q, k, v = make_qkv()
    a = ea.posterior_covariance("softmax", q, k, v, mask=ea.causal(), impl="flash", **OPTS)
    b = ea.posterior_covariance(softmax_reference, q, k, v, mask=ea.causal())
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_attention_weights_are_softmax_of_scores():
    q, k, _ = make_qkv()
    w = ea.attention_weights("softmax", q, k, mask=ea.causal())
    s = jnp.where(ref.dense_allowed(2, 12, 12, causal=True), ref.raw_scores(q, k, 8 ** -0.5), -jnp.inf)
    np.testing.assert_allclose(w, jax.nn.softmax(s, -1), atol=1e-6)
    ws = ea.attention_weights("sigmoid", q, k, mask=ea.causal())
    seen = jnp.isfinite(s).sum(-1, keepdims=True)     # default bias: -log(keys the query sees)
    np.testing.assert_allclose(ws, jnp.where(jnp.isfinite(s), jax.nn.sigmoid(s - jnp.log(seen)), 0), atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 2), tq=st.integers(1, 9), extra_k=st.integers(0, 6), hkv=st.sampled_from([1, 2]),
       groups=st.sampled_from([1, 2]), dk=st.integers(1, 6), dv=st.integers(1, 5),
       causal=st.booleans(), window=st.one_of(st.none(), st.integers(1, 5)), pad=st.booleans(),
       block=st.integers(1, 4), seed=st.integers(0, 10 ** 6))
def test_property_softmax_vs_reference(b, tq, extra_k, hkv, groups, dk, dv, causal, window, pad, block, seed):
    tk = tq + extra_k
    q, k, v = make_qkv(seed=seed, b=b, tq=tq, tk=tk, h=hkv * groups, hkv=hkv, dk=dk, dv=dv)
    rng = np.random.default_rng(seed)
    kv_valid = rng.random((b, tk)) < 0.8 if pad else None
    mask = ea.Mask()
    if causal:
        mask = mask & ea.causal()
    if window is not None:
        mask = mask & ea.sliding_window(window)
    if pad:
        mask = mask & ea.padding(kv_valid=kv_valid)
    allowed = ref.dense_allowed(b, tq, tk, causal=causal, window=window, kv_valid=kv_valid)
    want = ref.softmax_attention(q, k, v, jnp.asarray(allowed), dk ** -0.5)
    for impl in ("blockwise", "dense"):
        got = ea.attend("softmax", q, k, v, mask=mask, impl=impl, block_q=block)
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)
    if tq % block == 0 and tk % block == 0:
        got = ea.attend("softmax", q, k, v, mask=mask, impl="flash", block_q=block, block_k=block)
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)
    got = ea.attend("sigmoid", q, k, v, mask=mask, block_q=block)
    seen = np.maximum(allowed.sum(-1, keepdims=True), 1)
    want = ref.sigmoid_attention(q, k, v, jnp.asarray(allowed), dk ** -0.5, -np.log(seen))
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)


def test_decoding_picks_the_few_query_kernel_and_stays_exact():
    """One new token against a long cache (auto -> few_queries), grouped-query heads,
    a partly filled buffer with one empty row: output, first and second order."""
    from energy_attn.kernels import choose_implementation
    q, k, v = make_qkv(seed=9, tq=1, tk=1024, b=3, h=4, hkv=2)
    assert choose_implementation("auto", q, k, ea.causal()) == "few_queries"
    filled = jnp.arange(1024)[None] < jnp.array([[700], [1024], [0]])
    mask = ea.padding(kv_valid=filled)
    out = ea.attend("softmax", q, k, v, mask=mask)
    np.testing.assert_allclose(out, ea.attend(softmax_reference, q, k, v, mask=mask), atol=1e-5)
    assert np.all(np.asarray(out[2]) == 0)                 # the empty row: zeros, not NaN
    w = jax.random.normal(jax.random.PRNGKey(3), out.shape)
    loss = lambda e: lambda q, k, v: jnp.sum(jnp.sin(ea.attend(e, q, k, v, mask=mask)) * w)
    for got, want in zip(jax.grad(loss("softmax"), (0, 1, 2))(q, k, v),
                         jax.grad(loss(softmax_reference), (0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)
    dq = jax.random.normal(jax.random.PRNGKey(4), q.shape)
    hvp = lambda e: jax.jvp(lambda q: jax.grad(loss(e))(q, k, v), (q,), (dq,))[1]
    np.testing.assert_allclose(hvp("softmax"), hvp(softmax_reference), atol=1e-4, rtol=1e-3)
