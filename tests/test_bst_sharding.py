"""Sequence-sharded Block-State Transformer (models/bst_sharding.py) against one device:
the context states for every variant and both layouts (values, first- and
second-order gradients), the whole model's loss and gradients, a training run, and
the errors for what cannot be sharded."""
import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh

from energy_attn.sequence_sharding import SequenceSharding
from energy_attn.tree import dual_chunk_permutation
from models.bst import BSTLayer
from models.bst import BSTConfig, BSTLayerConfig
from models.registry import build_model
from tests.test_train_sharded import train_losses

W = 4
T = 64                      # dual_chunk on 4 devices: 8 pieces of 8 tokens = 2 blocks each


def spec_for(layout, data=2, seq=4):
    devices = np.array(jax.devices()[:data * seq]).reshape(data, seq)
    return SequenceSharding(Mesh(devices, ("data", "seq")), layout=layout)


def permutation(layout, spec, length=T):
    return dual_chunk_permutation(length, spec.num_shards) if layout == "dual_chunk" else np.arange(length)


def config(variant, **extra):
    bst = BSTLayerConfig(variant=variant, block_len=W, num_context_states=4, num_filters=2, state_dim=4)
    return BSTConfig(vocab_size=64, max_seq_len=T, d_model=8, num_layers=2, num_heads=2,
                       bst=bst, **extra)


def assert_trees_close(got, want, rtol, atol):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


def blocks_to_natural(states, perm):
    """(B, T/W, ...) blocks in layout order -> natural order (perm moves whole blocks)."""
    block_perm = perm[::W] // W
    return jnp.zeros_like(states).at[:, block_perm].set(states)


@pytest.mark.parametrize("variant", ["mh", "sh", "mf"])
@pytest.mark.parametrize("layout", ["dual_chunk", "contiguous"])
def test_context_states_match_one_device_with_gradients(variant, layout):
    spec = spec_for(layout)
    perm = permutation(layout, spec)
    layer = BSTLayer(config(variant), with_ssm=True, rngs=nnx.Rngs(0))
    sharded = BSTLayer(config(variant), with_ssm=True, rngs=nnx.Rngs(0), sequence_sharding=spec)   # same weights
    x = jax.random.normal(jax.random.key(1), (2, T, 8))

    def loss(layer, x):
        return jnp.sum(jnp.sin(layer.context_states(x)))

    want, want_grads = nnx.value_and_grad(loss, argnums=(0, 1))(layer, x)
    states = nnx.jit(lambda m, x: m.context_states(x))(sharded, x[:, perm])
    got, got_grads = nnx.jit(nnx.value_and_grad(loss, argnums=(0, 1)))(sharded, x[:, perm])
    np.testing.assert_allclose(blocks_to_natural(states, perm), layer.context_states(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(got_grads[1], want_grads[1][:, perm], rtol=1e-4, atol=1e-5)
    assert_trees_close(got_grads[0], want_grads[0], rtol=1e-4, atol=1e-5)


def test_context_states_second_order():
    spec = spec_for("dual_chunk")
    perm = permutation("dual_chunk", spec)
    layer = BSTLayer(config("mh"), with_ssm=True, rngs=nnx.Rngs(0))
    graphdef, params, others = nnx.split(layer, nnx.Param, ...)
    sharded_graphdef = nnx.split(BSTLayer(config("mh"), with_ssm=True, rngs=nnx.Rngs(0),
                                          sequence_sharding=spec), nnx.Param, ...)[0]
    x = jax.random.normal(jax.random.key(1), (2, T, 8))

    def loss(graphdef, params, x):
        return jnp.sum(jnp.sin(nnx.merge(graphdef, params, others).context_states(x)))

    def hvp(graphdef, params, x):       # Hessian-vector product, direction = the point itself
        return jax.jvp(jax.grad(partial(loss, graphdef), argnums=(0, 1)), (params, x), (params, x))[1]

    want = hvp(graphdef, params, x)
    got = jax.jit(partial(hvp, sharded_graphdef))(params, x[:, perm])
    np.testing.assert_allclose(got[1], want[1][:, perm], rtol=1e-3, atol=1e-4)
    assert_trees_close(got[0], want[0], rtol=1e-3, atol=1e-4)


def test_bst_loss_and_gradients_sharded_equal_one_device():
    spec = spec_for("dual_chunk")
    perm = permutation("dual_chunk", spec)
    model = build_model(config("mh"), rngs=nnx.Rngs(0))
    sharded = build_model(config("mh"), rngs=nnx.Rngs(0), sequence_sharding=spec)    # same weights
    tokens = jax.random.randint(jax.random.key(2), (2, T), 0, 64)
    ids = jnp.asarray(np.repeat([[0] * 20 + [1] * 44], 2, axis=0))

    def loss(model, tokens, ids):
        return jnp.mean(model(tokens, segment_ids=ids) ** 2)

    want, want_grads = nnx.value_and_grad(loss)(model, tokens, ids)
    got, got_grads = nnx.jit(nnx.value_and_grad(loss))(sharded, tokens[:, perm], ids[:, perm])
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert_trees_close(got_grads, want_grads, rtol=2e-4, atol=1e-6)


def test_bst_trains_sequence_sharded_like_one_device(tmp_path):
    bst = ["model.name=bst", "model.d_model=16", "model.bst.block_len=8", "model.bst.state_dim=4"]
    one = train_losses(bst, tmp_path / "one")
    sharded = train_losses([*bst, "mesh.data=2", "mesh.seq=4"], tmp_path / "sharded")
    assert len(one) == 3
    np.testing.assert_allclose(sharded, one, rtol=0, atol=1e-5)


def test_what_cannot_be_sharded_gives_clear_errors():
    from train.config import load_config
    spec = spec_for("dual_chunk")
    model = build_model(config("mh"), rngs=nnx.Rngs(0), sequence_sharding=spec)
    with pytest.raises(ValueError, match="pieces of whole blocks.*pieces of 6 tokens"):
        jax.jit(lambda t: nnx.merge(*nnx.split(model))(t))(jnp.zeros((2, 48), jnp.int32))
    fft_bst = BSTLayerConfig(variant="mh", block_len=W, conv="fft", num_context_states=4, state_dim=4)
    fft = build_model(dataclasses.replace(config("mh"), bst=fft_bst), rngs=nnx.Rngs(0), sequence_sharding=spec)
    with pytest.raises(ValueError, match="model.bst.conv='fft' cannot be sequence-sharded"):
        jax.jit(lambda t: nnx.merge(*nnx.split(fft))(t))(jnp.zeros((2, T), jnp.int32))
    with pytest.raises(ValueError, match="model.bst.conv='fft' cannot be sequence-sharded"):
        load_config(None, ["model.name=bst", "model.bst.conv=fft", "mesh.seq=2"])
    with pytest.raises(ValueError, match="pieces of 12 tokens, not a multiple of model.bst.block_len=64"):
        load_config(None, ["model.name=bst", "data.seq_len=96", "model.max_seq_len=96", "mesh.seq=4"])
