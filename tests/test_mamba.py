"""Mamba-1 and Mamba-2 scans and layers against naive one-step-at-a-time references:
chunked scan == recurrent step == reference (values and gradients), including
lengths that are not a multiple of the chunk, initial states and document resets;
layers: causality, cached decoding == full pass, packed rows == documents alone."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models.mamba import SSMConfig
from models.zamba import ZambaConfig
from models.mamba import Mamba1, Mamba2, MambaBlock, mamba_from_config
from models.ssm_scan import causal_conv, segment_starts, selective_scan, selective_step, ssd_scan, ssd_step

TOL = dict(rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ naive references
def reference_mamba1(x, dt, A, B, C, D, h0, starts):
    """h_t = exp(Δ_t A) h_{t-1} + Δ_t x_t B_t (h reset to 0 at a document start), y_t = C_t·h_t + D x_t."""
    def step(h, inp):
        x_t, dt_t, B_t, C_t, s_t = inp
        h = jnp.where(s_t[:, None, None], 0.0, h)
        h = jnp.exp(dt_t[:, :, None] * A[None]) * h + dt_t[:, :, None] * x_t[:, :, None] * B_t[:, None, :]
        return h, (h * C_t[:, None, :]).sum(-1) + D * x_t
    t_first = lambda a: jnp.swapaxes(a, 0, 1)  # noqa: E731
    h, y = jax.lax.scan(step, h0, tuple(map(t_first, (x, dt, B, C, starts))))
    return t_first(y), h


def reference_mamba2(x, dt, a, B, C, D, h0, starts):
    """Per head: h_t = exp(Δ_t a) h_{t-1} + Δ_t x_t ⊗ B_t (reset at starts), y_t = h_t C_t + D x_t."""
    def step(h, inp):
        x_t, dt_t, B_t, C_t, s_t = inp                       # (B,H,P), (B,H), (B,N), (B,N), (B,)
        h = jnp.where(s_t[:, None, None, None], 0.0, h)
        h = (jnp.exp(dt_t * a)[:, :, None, None] * h
             + (dt_t[:, :, None] * x_t)[..., None] * B_t[:, None, None, :])
        return h, (h * C_t[:, None, None, :]).sum(-1) + D[:, None] * x_t
    t_first = lambda a_: jnp.swapaxes(a_, 0, 1)  # noqa: E731
    h, y = jax.lax.scan(step, h0, tuple(map(t_first, (x, dt, B, C, starts))))
    return t_first(y), h


# Inputs from numpy: jax.random inside a test program costs seconds of XLA compile on CPU.
def _softplus(z):
    return np.log1p(np.exp(z))


def mamba1_inputs(seed, batch, length, inner=6, n=4):
    r = np.random.default_rng(seed)
    x, B, C = r.normal(size=(batch, length, inner)), *r.normal(size=(2, batch, length, n))
    dt = _softplus(r.normal(size=(batch, length, inner)) - 1.0)
    A, D = -np.exp(0.5 * r.normal(size=(inner, n))), r.normal(size=inner)
    f32 = lambda *a: tuple(jnp.asarray(t, jnp.float32) for t in a)   # noqa: E731
    return f32(x, dt, A, B, C, D), f32(r.normal(size=(batch, inner, n)))[0]


def mamba2_inputs(seed, batch, length, heads=3, p=4, n=5):
    r = np.random.default_rng(seed)
    x, B, C = r.normal(size=(batch, length, heads, p)), *r.normal(size=(2, batch, length, n))
    dt = _softplus(r.normal(size=(batch, length, heads)) - 1.0)
    a, D = -np.exp(0.5 * r.normal(size=heads)), r.normal(size=heads)
    f32 = lambda *a_: tuple(jnp.asarray(t, jnp.float32) for t in a_)   # noqa: E731
    return f32(x, dt, a, B, C, D), f32(r.normal(size=(batch, heads, p, n)))[0]


def packed_starts(length):
    """(2, length) document starts: row 0 at 5 and 13 (inside chunks of 4), row 1 at 8
    (on a chunk edge)."""
    ids = np.zeros((2, length), np.int32)
    ids[0, 5:], ids[0, 13:] = 1, 2
    ids[1, 8:] = 1
    return segment_starts(jnp.asarray(ids))


SCANS = {"mamba1": (mamba1_inputs, selective_scan, selective_step, reference_mamba1),
         "mamba2": (mamba2_inputs, ssd_scan, ssd_step, reference_mamba2)}


# ------------------------------------------------------------------ scans
# Each test is one jitted program (inputs, fast path, reference): eager ops compile one by one.
@pytest.mark.parametrize("kind", ["mamba1", "mamba2"])
@pytest.mark.parametrize("chunk, with_docs", [(4, True), (7, False)])   # 21 = 5*4 + 1 = 3*7
def test_chunked_scan_matches_naive_reference(kind, chunk, with_docs):
    make, scan, _, reference = SCANS[kind]

    @jax.jit
    def run(inputs, h0):
        starts = packed_starts(21) if with_docs else jnp.zeros((2, 21), bool)
        fast = scan(*inputs, h0=h0, starts=starts if with_docs else None, chunk_size=chunk)
        return fast, reference(*inputs, h0, starts)

    (y, h), (y_ref, h_ref) = run(*make(0, 2, 21))
    np.testing.assert_allclose(y, y_ref, **TOL)
    np.testing.assert_allclose(h, h_ref, **TOL)


@pytest.mark.parametrize("kind", ["mamba1", "mamba2"])
def test_chunked_scan_gradients_match_reference(kind):
    """Gradients through the checkpointed chunks and the masked exp, w.r.t. every input."""
    make, scan, _, reference = SCANS[kind]
    starts = packed_starts(11)

    def loss(fn, inputs, h0, w):
        y, h = fn(*inputs, h0)
        return jnp.sum(jnp.sin(y) * w) + jnp.sum(h ** 2)

    fast = lambda *a: scan(*a[:6], h0=a[6], starts=starts, chunk_size=4)   # noqa: E731
    slow = lambda *a: reference(*a, starts)                                 # noqa: E731

    @jax.jit
    def run(inputs, h0, w):
        return [jax.grad(loss, (1, 2))(fn, inputs, h0, w) for fn in (fast, slow)]

    inputs, h0 = make(1, 2, 11)
    g_fast, g_slow = run(inputs, h0, jnp.cos(jnp.arange(inputs[0].size).reshape(inputs[0].shape)))
    for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_slow), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["mamba1", "mamba2"])
def test_recurrent_step_matches_reference(kind):
    make, _, step, reference = SCANS[kind]

    @jax.jit
    def run(inputs, h0):
        x, dt, A, B, C, D = inputs

        def one(h, t):
            y, h = step(h, x[:, t], dt[:, t], A, B[:, t], C[:, t], D)
            return h, y
        h, ys = jax.lax.scan(one, h0, jnp.arange(9))
        return (jnp.moveaxis(ys, 0, 1), h), reference(x, dt, A, B, C, D, h0, jnp.zeros((2, 9), bool))

    (y, h), (y_ref, h_ref) = run(*make(4, 2, 9))
    np.testing.assert_allclose(y, y_ref, **TOL)
    np.testing.assert_allclose(h, h_ref, **TOL)


def test_causal_conv_reference_history_and_resets():
    rng = np.random.default_rng(0)
    x, w, b = rng.normal(size=(2, 10, 3)), rng.normal(size=(4, 3)), rng.normal(size=3)
    xp = np.pad(x, ((0, 0), (3, 0), (0, 0)))
    ref = b + sum(xp[:, 3 - lag:3 - lag + 10] * w[3 - lag] for lag in range(4))
    starts = np.zeros((2, 10), bool)
    starts[:, 6] = True                          # a document starts at 6

    @jax.jit
    def run(x, w, b):
        y, hist = causal_conv(x, w, b)
        y1, h1 = causal_conv(x[:, :6], w, b)     # in two pieces through the history buffer
        y2, h2 = causal_conv(x[:, 6:], w, b, history=h1)
        y_docs, _ = causal_conv(x, w, b, starts=starts)
        return y, hist, jnp.concatenate([y1, y2], 1), h2, y_docs, causal_conv(x[:, 6:], w, b)[0]

    y, hist, y_pieces, h2, y_docs, y_alone = run(*(jnp.asarray(a, jnp.float32) for a in (x, w, b)))
    np.testing.assert_allclose(y, ref, **TOL)
    np.testing.assert_allclose(y_pieces, y, **TOL)
    np.testing.assert_allclose(h2, hist, **TOL)
    np.testing.assert_allclose(y_docs[:, 6:], y_alone, **TOL)   # the document as if alone
    np.testing.assert_allclose(y_docs[:, :6], y[:, :6], **TOL)


# ------------------------------------------------------------------ layers
def config(kind, **ssm):
    return ZambaConfig(d_model=16, ssm=SSMConfig(kind=kind, state_dim=4, chunk_size=8, head_dim=8, **ssm))


def layer(kind):
    return mamba_from_config(config(kind), rngs=nnx.Rngs(0))


@nnx.jit
def forward(mixer, x, segment_ids=None):
    return mixer(x, segment_ids=segment_ids)


@nnx.jit
def forward_cached(mixer, x, cache):
    return mixer(x, cache=cache)


@pytest.mark.parametrize("kind", ["mamba1", "mamba2"])
def test_layer_causal_and_cached_decoding_equals_full_pass(kind):
    mixer = layer(kind)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 19, 16)), jnp.float32)   # 19: two chunks of 8 + a remainder
    full = forward(mixer, x)
    x_changed = x.at[:, 11:].set(jnp.asarray(rng.normal(size=(2, 8, 16)), jnp.float32))
    changed = forward(mixer, x_changed)
    np.testing.assert_allclose(changed[:, :11], full[:, :11], **TOL)
    assert float(jnp.abs(changed[:, 11:] - full[:, 11:]).max()) > 1e-3
    # prefill 5 tokens from the empty cache, 5 more from the filled state (chunked scan
    # with an initial state and conv history), then one recurrent step at a time
    y, cache = forward_cached(mixer, x[:, :5], mixer.init_cache(2))
    ys = [y]
    y, cache = forward_cached(mixer, x[:, 5:10], cache)
    ys.append(y)
    for t in range(10, 19):
        y, cache = forward_cached(mixer, x[:, t:t + 1], cache)
        ys.append(y)
    np.testing.assert_allclose(jnp.concatenate(ys, 1), full, **TOL)


@pytest.mark.parametrize("kind", ["mamba1", "mamba2"])
def test_packed_row_equals_documents_alone(kind):
    mixer = layer(kind)
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 15, 16)), jnp.float32)
    ids = jnp.asarray(np.repeat([[0] * 5 + [1] * 5 + [2] * 5], 2, 0))   # starts at 5 and 10 (chunk 8)
    packed = forward(mixer, x, ids)
    for lo in (0, 5, 10):
        np.testing.assert_allclose(packed[:, lo:lo + 5], forward(mixer, x[:, lo:lo + 5]), **TOL)
    # without segment ids the state crosses documents: the later documents differ
    crossed = forward(mixer, x)
    assert float(jnp.abs(crossed[:, 5:] - packed[:, 5:]).max()) > 1e-3


def mixer_params(d: int, s: SSMConfig) -> int:
    """Closed-form parameter count of one Mamba mixer (no norm)."""
    inner, n, K = s.expand * d, s.state_dim, s.conv_width
    if s.kind == "mamba1":
        rank = math.ceil(d / 16)
        return (d * 2 * inner                        # in_proj -> (x, z)
                + K * inner + inner                  # depthwise conv + bias
                + inner * (rank + 2 * n)             # x_proj -> (Δ low-rank, B, C)
                + rank * inner + inner               # dt_proj + Δ bias
                + inner * n + inner                  # A_log, D
                + inner * d)                         # out_proj
    heads, conv = inner // s.head_dim, inner + 2 * n
    return (d * (inner + conv + heads)               # in_proj -> (z, xBC, Δ)
            + K * conv + conv                        # conv over x, B, C
            + 3 * heads                              # Δ bias, A_log, D
            + inner                                  # gated RMSNorm
            + inner * d)                             # out_proj


def test_parameter_count_by_formula():
    # by hand, d=16, N=4, K=4, D_inner=32, dt_rank=1: in 1024, conv 160, x_proj 288, dt 64, A/D 160, out 512
    assert mixer_params(16, config("mamba1").ssm) == 2208
    count = lambda m: sum(p.size for p in jax.tree.leaves(nnx.state(m, nnx.Param)))  # noqa: E731
    for kind in ("mamba1", "mamba2"):
        assert count(layer(kind)) == mixer_params(16, config(kind).ssm)
    assert count(MambaBlock(config("mamba1"), rngs=nnx.Rngs(0))) == 2208 + 16   # + the pre-norm scale


def test_mamba1_initialisation_follows_mamba():
    m = layer("mamba1")
    np.testing.assert_allclose(-jnp.exp(m.A_log[...]), -np.tile(np.arange(1, 5), (32, 1)))  # S4D-real
    dt = jax.nn.softplus(m.dt_proj.bias[...])
    assert float(dt.min()) >= 1e-3 - 1e-7 and float(dt.max()) <= 0.1 + 1e-6


def test_bad_options_raise_clear_errors():
    with pytest.raises(ValueError, match="model.ssm.kind='mamba3'"):
        mamba_from_config(config("mamba3"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="model.ssm.head_dim=5 must divide"):
        Mamba2(16, head_dim=5, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="d_model=16"):
        Mamba1(16, rngs=nnx.Rngs(0))(jnp.zeros((1, 3, 8)))
