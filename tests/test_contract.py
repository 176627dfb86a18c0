"""The contract itself: any function energy(q, k, v, zeta, *, mask, **params) -> scalar
becomes attention, and bad input gets an error that names the argument."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import energy_attn as ea
from tests import reference as ref
from tests.test_energies import make_qkv

def test_user_energy_in_own_code_needs_no_registration():
    def cosine_softmax(q, k, v, zeta, *, mask, temperature=0.1):
        qn = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
        kn = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
        s = ea.scores(qn, kn, mask=mask, beta=1 / temperature) + ea.source(zeta, v)
        return ea.logsumexp(s, axis=-1).sum()

    q, k, v = make_qkv()
    out = ea.attend(cosine_softmax, q, k, v, mask=ea.causal(), temperature=0.2)
    qn = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
    kn = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
    allowed = jnp.asarray(ref.dense_allowed(2, 12, 12, causal=True))
    np.testing.assert_allclose(out, ref.softmax_attention(qn, kn, v, allowed, 5.0), atol=1e-5)
    # registering it makes it available by name, e.g. from a config
    ea.register_energy("test_cosine_softmax", cosine_softmax)
    np.testing.assert_allclose(ea.attend("test_cosine_softmax", q, k, v, mask=ea.causal(), temperature=0.2), out)


def test_user_energy_gets_per_head_beta_from_scores():
    """ea.scores takes one β per query head, so a user energy passes `beta` through as is:
    attending with β = (b0, b1, ...) equals attending head by head with each scalar."""
    def my_softmax(q, k, v, zeta, *, mask, beta=None):
        return ea.logsumexp(ea.scores(q, k, mask=mask, beta=beta) + ea.source(zeta, v), axis=-1).sum()

    q, k, v = make_qkv()
    heads = q.shape[2]
    betas = jnp.linspace(0.2, 1.5, heads)
    out = ea.attend(my_softmax, q, k, v, mask=ea.causal(), beta=betas)
    allowed = jnp.asarray(ref.dense_allowed(2, 12, 12, causal=True))
    kk, vv = (jnp.repeat(a, heads // a.shape[2], axis=2) for a in (k, v))
    for h in range(heads):
        want = ref.softmax_attention(q[:, :, h:h + 1], kk[:, :, h:h + 1], vv[:, :, h:h + 1], allowed,
                                     float(betas[h]))
        np.testing.assert_allclose(out[:, :, h:h + 1], want, atol=1e-5)
    # and the built-in softmax agrees with it
    np.testing.assert_allclose(ea.attend("softmax", q, k, v, mask=ea.causal(), beta=betas), out, atol=1e-5)
    with pytest.raises(ValueError, match="per-head beta has 3 values"):
        ea.scores(q, k, beta=jnp.ones(3))


def test_grad_of_grad_through_user_energy():
    def my_energy(q, k, v, zeta, *, mask):
        return ea.logsumexp(ea.scores(q, k, mask=mask) + ea.source(zeta, v), axis=-1).sum()

    q, k, v = make_qkv()
    g = jax.grad(lambda q: ea.attend(my_energy, q, k, v, mask=ea.causal()).sum())(q)
    g_ref = jax.grad(lambda q: ea.attend("softmax", q, k, v, mask=ea.causal()).sum())(q)
    np.testing.assert_allclose(g, g_ref, atol=1e-5)


# ------------------------------------------------------------------ bad input
def test_unknown_energy_name_suggests_close_names():
    q, k, v = make_qkv()
    with pytest.raises(ValueError, match=r"unknown energy 'sigmiod'.*Did you mean 'sigmoid'"):
        ea.attend("sigmiod", q, k, v)


def test_non_scalar_energy():
    q, k, v = make_qkv()
    bad = lambda q, k, v, zeta, *, mask: ea.logsumexp(ea.scores(q, k, mask=mask) + ea.source(zeta, v))
    with pytest.raises(ValueError, match="must return a scalar"):
        ea.attend(bad, q, k, v)


@pytest.mark.parametrize("change,pattern", [
    (lambda q, k, v: (q[..., :5], k, v), r"k has key width 8 but q has 5"),
    (lambda q, k, v: (q, k, v[:, :7]), r"v has shape .*expected \(B, Tk, H_kv, Dv\)"),
    (lambda q, k, v: (q[:, :, :3], k, v), r"3 heads, which is not a multiple of the 2 K/V heads"),
    (lambda q, k, v: (q[:1], k, v), r"batch sizes differ"),
    (lambda q, k, v: (q[0, 0], k, v), r"q must have shape \(B, T, H, D\)"),
])
def test_shape_errors_name_the_argument(change, pattern):
    q, k, v = make_qkv()
    with pytest.raises(ValueError, match=pattern):
        ea.attend("softmax", *change(q, k, v))


@pytest.mark.parametrize("mask,pattern", [
    (ea.padding(kv_valid=np.ones((2, 5), bool)), r"mask.kv_valid has shape \(2, 5\); expected \(2, 12\)"),
    (ea.segments(np.zeros((2, 3), int)), r"mask.q_segment_ids has shape \(2, 3\); expected \(2, 12\)"),
    (ea.bias(np.zeros((3, 12, 12))), r"mask.bias has shape \(1, 3, 12, 12\)"),
    (ea.sliding_window(0), r"sliding_window size must be >= 1"),
])
def test_mask_shape_errors(mask, pattern):
    q, k, v = make_qkv()
    with pytest.raises(ValueError, match=pattern):
        ea.attend("softmax", q, k, v, mask=mask)


def test_mask_must_be_a_mask():
    q, k, v = make_qkv()
    with pytest.raises(TypeError, match="ea.explicit"):
        ea.attend("softmax", q, k, v, mask=np.ones((12, 12), bool))


def test_conflicting_offsets_are_refused():
    with pytest.raises(ValueError, match="query offset"):
        ea.causal(3) & ea.causal(jnp.asarray(5))


def test_unknown_softmax_implementation():
    q, k, v = make_qkv()
    with pytest.raises(ValueError, match="unknown softmax implementation 'fastest'"):
        ea.attend("softmax", q, k, v, impl="fastest")


def test_flash_block_sizes_must_divide():
    q, k, v = make_qkv()
    with pytest.raises(ValueError, match="impl='flash' needs"):
        ea.attend("softmax", q, k, v, impl="flash", block_q=5, block_k=5)


def test_attend_inside_shard_map_with_per_device_queries():
    """Each device attends its own queries to its own keys. ζ must vary like q: a
    replicated ζ would make jax.grad sum every device's output (4x too large here)."""
    from jax.sharding import AxisType, PartitionSpec as P
    mesh = jax.make_mesh((4,), ("seq",), axis_types=(AxisType.Auto,), devices=jax.devices()[:4])
    q, k, v = (jax.random.normal(key, (2, 16, 2, 8)) for key in jax.random.split(jax.random.key(0), 3))
    local = jax.shard_map(lambda q, k, v: ea.attend("softmax", q, k, v, mask=ea.causal()), mesh=mesh,
                          in_specs=P(None, "seq"), out_specs=P(None, "seq"))
    want = jnp.concatenate([ea.attend("softmax", *(x[:, 4 * i:4 * i + 4] for x in (q, k, v)),
                                      mask=ea.causal()) for i in range(4)], axis=1)
    np.testing.assert_allclose(jax.jit(local)(q, k, v), want, atol=1e-6)


def test_mask_predicates_and_key_range_agree_for_static_and_traced_bounds():
    ids = jnp.zeros((1, 8), jnp.int32)
    assert ea.causal().restricts_beyond("causal") == ()
    assert (ea.causal() & ea.segments(ids, ids)).restricts_beyond("causal") == ("q_segment_ids", "kv_segment_ids")
    assert ea.causal(offset=3).is_trivial is False and ea.Mask(q_offset=3).is_trivial
    for mask in (ea.causal(), ea.sliding_window(3), ea.causal() & ea.sliding_window(3)):
        for q0, q1 in ((0, 4), (4, 8), (6, 8)):
            static = mask.static_key_range(q0, q1, 8, 8)
            traced = jax.jit(lambda a, b: mask.static_key_range(a, b, 8, 8))(q0, q1)
            assert all(isinstance(x, int) for x in static)
            assert static == tuple(int(x) for x in traced), (mask, q0, q1)
            allowed = np.asarray(ea.allowed_pairs(mask, 8, 8))[0, 0, q0:q1].any(0)
            seen = np.flatnonzero(allowed)
            assert static[0] <= seen.min() and seen.max() < static[1]        # a superset of the keys seen
