"""Sequence-sharded Mamba (models/mamba_sharding.py) against the one-device functions:
document starts, the causal conv, both scans, whole mixers, the Zamba hybrid and its
training run, on 8 simulated CPU devices, both layouts, with packed documents whose
boundaries fall inside and exactly on the devices' pieces."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh

from energy_attn.sequence_sharding import SequenceSharding
from energy_attn.tree import dual_chunk_permutation
from models.config import ModelConfig
from models.mamba import SSMConfig
from models.zamba import SharedBlockConfig, ZambaConfig
from models.mamba import Mamba1, Mamba2
from models.ssm_scan import causal_conv, segment_starts, selective_scan, ssd_scan
from models.mamba_sharding import (sharded_causal_conv, sharded_scan, sharded_segment_starts)
from models.registry import build_model
from tests.test_train_sharded import train_losses

T = 32                              # 4 devices x 2 pieces of 4 tokens (dual_chunk), or 4 x 8
LAYOUTS = ["dual_chunk", "contiguous"]


def spec_for(layout, data=2, seq=4):
    devices = np.array(jax.devices()[:data * seq]).reshape(data, seq)
    return SequenceSharding(Mesh(devices, ("data", "seq")), layout=layout)


def permutation(layout, spec, length=T):
    return dual_chunk_permutation(length, spec.num_shards) if layout == "dual_chunk" else np.arange(length)


def documents(batch=2, length=T):
    """Row 0: starts inside pieces and on piece boundaries (4, 8, 16); row 1: one document."""
    ids = np.zeros((batch, length), np.int32)
    for s in (3, 4, 8, 11, 16, 26):
        ids[0, s:] += 1
    return jnp.asarray(ids)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_document_starts_match_one_device(layout):
    spec, ids = spec_for(layout), documents()
    perm = permutation(layout, spec)
    got = jax.jit(lambda i: sharded_segment_starts(i, spec))(ids[:, perm])
    np.testing.assert_array_equal(got, segment_starts(ids)[:, perm])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("with_documents", [False, True])
def test_causal_conv_matches_one_device_with_gradients(layout, with_documents):
    spec = spec_for(layout)
    perm = permutation(layout, spec)
    kx, kw, kb = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (2, T, 6))
    w, b = jax.random.normal(kw, (4, 6)), jax.random.normal(kb, (6,))
    starts = segment_starts(documents()) if with_documents else None

    def one(x, w, b):
        return causal_conv(x, w, b, starts=starts)[0]

    def sharded(x, w, b):     # takes and returns natural order, permutes around the sharded call
        s = None if starts is None else starts[:, perm]
        y = sharded_causal_conv(x[:, perm], w, b, s, spec)
        return jnp.zeros_like(y).at[:, perm].set(y)

    np.testing.assert_allclose(jax.jit(sharded)(x, w, b), one(x, w, b), rtol=1e-6, atol=1e-6)
    loss = lambda f: lambda *a: jnp.sum(jnp.sin(f(*a)))                       # noqa: E731
    for g, want in zip(jax.jit(jax.grad(loss(sharded), argnums=(0, 1, 2)))(x, w, b),
                       jax.grad(loss(one), argnums=(0, 1, 2))(x, w, b)):
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-5)


def scan_inputs(kind, key=0):
    ks = jax.random.split(jax.random.key(key), 6)
    n = 4
    if kind == "mamba2":     # x (B, T, H, P); dt (B, T, H); a (H,); D (H,)
        x = jax.random.normal(ks[0], (2, T, 3, 2))
        dt = jax.nn.softplus(jax.random.normal(ks[1], (2, T, 3)))
        A = -jnp.exp(jax.random.normal(ks[2], (3,)))
        D = jax.random.normal(ks[3], (3,))
    else:                    # x, dt (B, T, Di); A (Di, N); D (Di,)
        x = jax.random.normal(ks[0], (2, T, 5))
        dt = jax.nn.softplus(jax.random.normal(ks[1], (2, T, 5)))
        A = -jnp.exp(jax.random.normal(ks[2], (5, n)))
        D = jax.random.normal(ks[3], (5,))
    B = jax.random.normal(ks[4], (2, T, n))
    C = jax.random.normal(ks[5], (2, T, n))
    return x, dt, A, B, C, D


@pytest.mark.parametrize("kind", ["mamba2", "mamba1"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_scan_matches_one_device_first_and_second_order(kind, layout):
    spec = spec_for(layout)
    perm = permutation(layout, spec)
    scan = ssd_scan if kind == "mamba2" else selective_scan
    inputs = scan_inputs(kind)
    starts = segment_starts(documents())
    chunk = 3                # does not divide a piece: the scans pad inside every piece

    def one(x, dt, A, B, C, D):
        return scan(x, dt, A, B, C, D, starts=starts, chunk_size=chunk)[0]

    def sharded(x, dt, A, B, C, D):
        y = sharded_scan(scan, x[:, perm], dt[:, perm], A, B[:, perm], C[:, perm], D,
                         starts=starts[:, perm], spec=spec, chunk_size=chunk)
        return jnp.zeros_like(y).at[:, perm].set(y)

    np.testing.assert_allclose(jax.jit(sharded)(*inputs), one(*inputs), rtol=2e-5, atol=2e-5)
    loss = lambda f: lambda *a: jnp.sum(jnp.sin(f(*a)))                       # noqa: E731
    args = tuple(range(6))
    for g, want in zip(jax.jit(jax.grad(loss(sharded), argnums=args))(*inputs),
                       jax.grad(loss(one), argnums=args)(*inputs)):
        np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-4)
    # Second order: a Hessian-vector product in the direction of the inputs themselves.
    hvp = lambda f: lambda *a: jax.jvp(jax.grad(loss(f), argnums=args), a, a)[1]   # noqa: E731
    for g, want in zip(jax.jit(hvp(sharded))(*inputs), hvp(one)(*inputs)):
        np.testing.assert_allclose(g, want, rtol=1e-3, atol=1e-3)


def test_the_carry_crosses_devices():
    """Without the exchange each piece would start from zero: check the exchange matters."""
    spec = spec_for("contiguous")
    inputs = scan_inputs("mamba2")
    x, dt, A, B, C, D = inputs
    y = jax.jit(lambda *a: sharded_scan(ssd_scan, *a, starts=None, spec=spec, chunk_size=4))(*inputs)
    piece = T // spec.num_shards
    local = ssd_scan(x[:, piece:2 * piece], dt[:, piece:2 * piece], A, B[:, piece:2 * piece],
                     C[:, piece:2 * piece], D)[0]                       # device 1 alone, zero start
    assert float(jnp.max(jnp.abs(y[:, piece:2 * piece] - local))) > 1e-3
    np.testing.assert_allclose(y, ssd_scan(*inputs)[0], rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("cls", [Mamba1, Mamba2])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_mixer_under_sequence_sharding_matches_one_device(cls, layout):
    spec = spec_for(layout)
    perm = permutation(layout, spec)
    kw = dict(state_dim=4, chunk_size=4, rngs=nnx.Rngs(0), **({"head_dim": 8} if cls is Mamba2 else {}))
    mixer = cls(16, **kw)
    sharded = cls(16, **{**kw, "rngs": nnx.Rngs(0)}, sequence_sharding=spec)      # same weights
    x = jax.random.normal(jax.random.key(1), (2, T, 16))
    ids = documents()

    def loss(m, x, ids):
        return jnp.mean(jnp.sin(m(x, segment_ids=ids)))

    want, want_grads = nnx.value_and_grad(loss, argnums=(0, 1))(mixer, x, ids)
    got, got_grads = nnx.jit(nnx.value_and_grad(loss, argnums=(0, 1)))(sharded, x[:, perm], ids[:, perm])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_grads[1], want_grads[1][:, perm], rtol=1e-4, atol=1e-6)
    for g, w in zip(jax.tree.leaves(got_grads[0]), jax.tree.leaves(want_grads[0])):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)


def test_pieces_shorter_than_the_conv_reach_give_a_clear_error():
    spec = spec_for("dual_chunk", data=1, seq=8)               # 16 pieces of T/16 = 2 < 3 tokens
    mixer = Mamba2(16, state_dim=4, head_dim=8, rngs=nnx.Rngs(0), sequence_sharding=spec)
    with pytest.raises(ValueError, match="pieces of at least conv_width - 1 = 3"):
        jax.jit(lambda x: nnx.merge(*nnx.split(mixer))(x))(jnp.zeros((1, T, 16)))


@pytest.mark.parametrize("kind", ["mamba2", "mamba1"])
def test_zamba_loss_and_gradients_sharded_equal_one_device(kind):
    spec = spec_for("dual_chunk")
    perm = permutation("dual_chunk", spec)
    cfg = ZambaConfig(vocab_size=64, max_seq_len=T, d_model=16, num_layers=2, num_heads=2,
                      ssm=SSMConfig(kind=kind, state_dim=4, head_dim=8, chunk_size=4),
                      zamba=SharedBlockConfig(shared_every=2))
    model = build_model(cfg, rngs=nnx.Rngs(0))
    sharded = build_model(cfg, rngs=nnx.Rngs(0), sequence_sharding=spec)          # same weights
    tokens = jax.random.randint(jax.random.key(2), (2, T), 0, 64)
    ids, positions = documents(), jnp.broadcast_to(jnp.arange(T), (2, T))

    def loss(model, tokens, ids, positions):
        return jnp.mean(model(tokens, segment_ids=ids, positions=positions) ** 2)

    want, want_grads = nnx.value_and_grad(loss)(model, tokens, ids, positions)
    got, got_grads = nnx.jit(nnx.value_and_grad(loss))(sharded, tokens[:, perm], ids[:, perm],
                                                      positions[:, perm])
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(g, w, rtol=2e-4, atol=1e-6)


def test_zamba_trains_sequence_sharded_like_one_device(tmp_path):
    zamba = ["model.name=zamba", "model.d_model=16", "model.ssm.kind=mamba2", "model.ssm.head_dim=8",
             "model.zamba.shared_every=2"]
    one = train_losses(zamba, tmp_path / "one")
    sharded = train_losses([*zamba, "mesh.data=2", "mesh.seq=4"], tmp_path / "sharded")
    assert len(one) == 3
    np.testing.assert_allclose(sharded, one, rtol=0, atol=1e-5)


def test_sharding_is_a_constructor_argument_and_unshardable_models_say_so():
    """build_model hands the spec to the layers (no hidden global); a model whose builder
    takes no sequence_sharding is refused by build_model and by config validation."""
    from models.registry import MODELS, register_model
    from train.config import load_config
    spec = spec_for("dual_chunk")
    cfg = ZambaConfig(vocab_size=64, max_seq_len=T, d_model=16, num_layers=2, num_heads=2,
                      ssm=SSMConfig(kind="mamba2", state_dim=4, head_dim=8, chunk_size=4),
                      zamba=SharedBlockConfig(shared_every=2))
    model = build_model(cfg, rngs=nnx.Rngs(0), sequence_sharding=spec)
    assert model.shared[0].attn.sequence_sharding == spec
    assert all(layer.mixer.sequence_sharding == spec for layer in model.layers)
    assert build_model(cfg, rngs=nnx.Rngs(0)).shared[0].attn.sequence_sharding is None
    one_shard = spec_for("dual_chunk", data=8, seq=1)           # a size-1 axis: one device
    assert build_model(cfg, rngs=nnx.Rngs(0), sequence_sharding=one_shard).shared[0].attn.sequence_sharding is None

    @register_model("test_unshardable")
    def _build(cfg, *, rngs):
        return nnx.Linear(2, 2, rngs=rngs)
    try:
        with pytest.raises(ValueError, match="'test_unshardable' cannot run sequence-sharded"):
            build_model(ModelConfig(name="test_unshardable"), rngs=nnx.Rngs(0), sequence_sharding=spec)
        assert isinstance(build_model(ModelConfig(name="test_unshardable"), rngs=nnx.Rngs(0)), nnx.Linear)
    finally:
        del MODELS["test_unshardable"]
    with pytest.raises(ValueError, match="model.name='energy_transformer' cannot be sequence-sharded"):
        load_config(None, ["model.name=energy_transformer", "mesh.seq=2"])
