"""Every energy against its explicit closed-form attention, with masks, first and
second order (training differentiates through the gradient)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import energy_attn as ea
from energy_attn.energies.linear import features
from tests import reference as ref

B, TQ, TK, H, HKV, DK, DV = 2, 12, 12, 4, 2, 8, 6
BETA = DK ** -0.5


def make_qkv(seed=0, tq=TQ, tk=TK, b=B, h=H, hkv=HKV, dk=DK, dv=DV, scale=1.0):
    ks = jax.random.split(jax.random.PRNGKey(seed), 3)
    q = scale * jax.random.normal(ks[0], (b, tq, h, dk))
    k = jax.random.normal(ks[1], (b, tk, hkv, dk))
    v = jax.random.normal(ks[2], (b, tk, hkv, dv))
    return q, k, v


def mask_case(name, tq=TQ, tk=TK, b=B):
    """(Mask, dense allowed (B,1,Tq,Tk), additive bias or None) for a named case."""
    rng = np.random.default_rng(1)
    if name == "none":
        return None, ref.dense_allowed(b, tq, tk), None
    if name == "causal":
        return ea.causal(), ref.dense_allowed(b, tq, tk, causal=True), None
    if name == "padding":
        kv = np.arange(tk)[None] < np.array([tk, tk - 4])[:, None]
        return ea.causal() & ea.padding(kv_valid=kv), ref.dense_allowed(b, tq, tk, causal=True, kv_valid=kv), None
    if name == "segments":
        seg = np.sort(rng.integers(0, 3, (b, tq)), axis=1)
        return ea.causal() & ea.segments(seg), ref.dense_allowed(b, tq, tk, causal=True, q_seg=seg), None
    if name == "window":
        return ea.causal() & ea.sliding_window(4), ref.dense_allowed(b, tq, tk, causal=True, window=4), None
    if name == "alibi":
        m = ea.causal() & ea.alibi(H, tq, tk)
        off = tk - tq
        dist = np.abs((off + np.arange(tq))[:, None] - np.arange(tk)[None])
        bias = -ea.alibi_slopes(H)[None, :, None, None] * dist[None, None]
        return m, ref.dense_allowed(b, tq, tk, causal=True), jnp.asarray(bias, jnp.float32)
    raise KeyError(name)


MASKS = ["none", "causal", "padding", "segments", "window", "alibi"]


def reference_output(energy, q, k, v, allowed, bias):
    allowed = jnp.asarray(allowed)
    if energy == "softmax":
        return ref.softmax_attention(q, k, v, allowed, BETA, bias)
    if energy == "sigmoid":
        b = -jnp.log(jnp.maximum(allowed.sum(-1, keepdims=True), 1)) + (0 if bias is None else bias)
        return ref.sigmoid_attention(q, k, v, allowed, BETA, b)
    if energy == "distance":
        assert bias is None
        return ref.distance_attention(q, k, v, allowed, BETA)
    if energy == "linear":
        fq, fk = features(q, "elu"), features(k, "elu")
        allowed = allowed * (1.0 if bias is None else jnp.exp(bias))
        return ref.linear_attention(fq, fk, v, allowed)
    if energy in ("sparsemax", "entmax"):
        assert bias is None
        return ref.entmax_attention(q, k, v, allowed, BETA, 2 if energy == "sparsemax" else 1.5)
    raise KeyError(energy)


ENERGIES = ["softmax", "sigmoid", "distance", "linear", "sparsemax", "entmax"]
NO_BIAS = {"distance", "sparsemax", "entmax"}   # their references take no additive bias


def cases():
    for e in ENERGIES:
        for m in MASKS:
            if m == "alibi" and e in NO_BIAS:
                continue
            yield e, m


@pytest.mark.parametrize("energy,mask_name", list(cases()))
def test_output_matches_closed_form(energy, mask_name):
    q, k, v = make_qkv()
    mask, allowed, bias = mask_case(mask_name)
    out = jax.jit(lambda q, k, v: ea.attend(energy, q, k, v, mask=mask))(q, k, v)
    expect = reference_output(energy, q, k, v, allowed, bias)
    np.testing.assert_allclose(out, expect, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("energy,mask_name", [(e, m) for e, m in cases() if m in ("causal", "segments", "alibi")])
def test_second_order_matches_closed_form(energy, mask_name):
    """Gradient of a loss *through* the attention output (what training computes)."""
    q, k, v = make_qkv(seed=3)
    mask, allowed, bias = mask_case(mask_name)
    w = jax.random.normal(jax.random.PRNGKey(9), (B, TQ, H, DV))
    loss = lambda q, k, v: jnp.sum(jnp.sin(ea.attend(energy, q, k, v, mask=mask)) * w)
    loss_ref = lambda q, k, v: jnp.sum(jnp.sin(reference_output(energy, q, k, v, allowed, bias)) * w)
    got = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
    want = jax.grad(loss_ref, argnums=(0, 1, 2))(q, k, v)
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, atol=5e-5, rtol=5e-4)


@pytest.mark.parametrize("energy", ENERGIES)
def test_decoding_queries_against_longer_keys(energy):
    """Tq < Tk: the queries are the last positions (a KV cache step)."""
    q, k, v = make_qkv(tq=3, tk=TK)
    out = ea.attend(energy, q, k, v, mask=ea.causal())
    expect = reference_output(energy, q, k, v, ref.dense_allowed(B, 3, TK, causal=True), None)
    np.testing.assert_allclose(out, expect, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("energy", ENERGIES)
def test_fully_masked_rows_give_zeros_not_nan(energy):
    q, k, v = make_qkv()
    q_valid = np.ones((B, TQ), bool)
    q_valid[0, 5:] = False
    kv_valid = np.ones((B, TK), bool)
    kv_valid[1] = False                    # batch 1 sees no key at all
    mask = ea.causal() & ea.padding(kv_valid=kv_valid, q_valid=q_valid)
    out = ea.attend(energy, q, k, v, mask=mask)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[0, 5:], 0.0)
    np.testing.assert_array_equal(out[1], 0.0)
    grads = jax.grad(lambda q, k, v: ea.attend(energy, q, k, v, mask=mask).sum(), argnums=(0, 1, 2))(q, k, v)
    assert all(np.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("energy", ENERGIES)
def test_extreme_logits_stay_finite(energy):
    q, k, v = make_qkv(scale=1e4 * DK ** 0.5)  # scores of order ±1e4
    out, f = ea.attend_with_energy(energy, q, k, v, mask=ea.causal())
    assert np.isfinite(out).all() and np.isfinite(f)


@pytest.mark.parametrize("energy", ENERGIES)
def test_bf16_inputs(energy):
    q, k, v = make_qkv()
    out16 = ea.attend(energy, *(x.astype(jnp.bfloat16) for x in (q, k, v)), mask=ea.causal())
    out32 = ea.attend(energy, q, k, v, mask=ea.causal())
    assert out16.dtype == jnp.bfloat16 and np.isfinite(np.asarray(out16, np.float32)).all()
    np.testing.assert_allclose(np.asarray(out16, np.float32), out32, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("energy", ENERGIES)
def test_vmap_over_unbatched_inputs(energy):
    q, k, v = make_qkv()
    batched = ea.attend(energy, q, k, v, mask=ea.causal())
    mapped = jax.vmap(lambda q, k, v: ea.attend(energy, q, k, v, mask=ea.causal()))(q, k, v)
    np.testing.assert_allclose(mapped, batched, atol=1e-5, rtol=1e-5)


def test_energy_values_are_log_partitions():
    q, k, v = make_qkv()
    mask, allowed, _ = mask_case("padding")
    allowed = jnp.asarray(allowed)
    _, f = ea.attend_with_energy("softmax", q, k, v, mask=mask)
    np.testing.assert_allclose(f, ref.softmax_log_partition(q, k, allowed, BETA), rtol=1e-5)
    # sigmoid: Σ softplus over allowed pairs
    _, f = ea.attend_with_energy("sigmoid", q, k, v, mask=mask)
    s = ref.raw_scores(q, k, BETA) - jnp.log(jnp.maximum(allowed.sum(-1, keepdims=True), 1))
    np.testing.assert_allclose(f, jnp.sum(jnp.where(allowed, jax.nn.softplus(s), 0)), rtol=1e-5)
    # distance: lse of -β‖q-k‖²
    _, f = ea.attend_with_energy("distance", q, k, v, mask=mask)
    kk = jnp.repeat(k, H // HKV, 2)
    d2 = jnp.sum((q[:, :, None] - kk[:, None]) ** 2, -1).transpose(0, 3, 1, 2)
    s = jnp.where(allowed, -BETA * d2, -jnp.inf)
    np.testing.assert_allclose(f, jax.nn.logsumexp(s, -1).sum(), rtol=1e-5)


def test_sparsemax_is_sparse_and_weights_sum_to_one():
    q, k, v = make_qkv(scale=4.0)
    w = ea.attention_weights("sparsemax", q, k, mask=ea.causal())
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
    assert (w == 0).mean() > 0.3


def test_linear_causal_prefix_sums_equal_dense_path():
    """The O(T) chunked path against the dense κ matrix, chunk not dividing T."""
    q, k, v = make_qkv(tq=37, tk=37)
    mask = ea.causal()
    fast = ea.attend("linear", q, k, v, mask=mask, chunk=8)
    dense = ea.attend("linear", q, k, v, mask=ea.explicit(np.tril(np.ones((37, 37), bool))), chunk=8)
    np.testing.assert_allclose(fast, dense, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("feature_map", ["elu", "relu", "exp"])
def test_linear_feature_maps(feature_map):
    q, k, v = make_qkv()
    out = ea.attend("linear", q, k, v, mask=ea.causal(), feature_map=feature_map, num_features=16)
    fq = features(q, feature_map, num_features=16, is_query=True)
    fk = features(k, feature_map, num_features=16, is_query=False)
    expect = ref.linear_attention(fq, fk, v, jnp.asarray(ref.dense_allowed(B, TQ, TK, causal=True)))
    np.testing.assert_allclose(out, expect, atol=2e-5, rtol=2e-5)


def test_exp_features_approximate_softmax_kernel():
    """Positive random features: φ(q)·φ(k) ≈ exp(q·k/√D) for many features."""
    q, k, _ = make_qkv(dk=4)
    fq = features(q * 0.5, "exp", num_features=20000, is_query=True)
    fk = features(k * 0.5, "exp", num_features=20000, is_query=False)
    approx = jnp.einsum("bqhf,bkhf->bhqk", fq, jnp.repeat(fk, 2, 2))
    exact = jnp.exp(ref.raw_scores(q * 0.5, k * 0.5, 4 ** -0.5))
    ratio = (approx / approx.sum(-1, keepdims=True)) / (exact / exact.sum(-1, keepdims=True))
    assert np.median(np.abs(ratio - 1)) < 0.1


def test_entmax_alpha_validation():
    q, k, v = make_qkv()
    with pytest.raises(ValueError, match="alpha > 1"):
        ea.attend("entmax", q, k, v, alpha=1.0)


@pytest.mark.parametrize("alpha", [1.25, 1.5, 2.0, 3.0])
def test_entmax_probabilities_against_bisection_in_float64(alpha):
    from energy_attn.energies.entmax import entmax
    z = np.random.default_rng(0).normal(size=(5, 9)) * 2
    z[1, 4:] = -np.inf                      # masked entries
    p = np.asarray(entmax(jnp.asarray(z, jnp.float32), alpha))
    x = (alpha - 1) * z
    lo, hi = x.max(-1, keepdims=True) - 1, x.max(-1, keepdims=True)
    for _ in range(200):                    # plain float64 bisection on Σ [x-τ]_+^(1/(α-1)) = 1
        mid = (lo + hi) / 2
        big = (np.maximum(np.nan_to_num(x - mid, nan=0, neginf=0), 0) ** (1 / (alpha - 1))).sum(-1, keepdims=True) >= 1
        lo, hi = np.where(big, mid, lo), np.where(big, hi, mid)
    want = np.maximum(np.nan_to_num(x - lo, neginf=0), 0) ** (1 / (alpha - 1))
    np.testing.assert_allclose(p, want, atol=2e-6)
    assert (p[1, 4:] == 0).all()
