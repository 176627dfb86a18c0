"""models/remat.py: recompute_in_backward gives the same gradients (first and second
order) as the plain function, actually lowers the compiled memory of a layer chain on
this backend (where jax.checkpoint does not), and Mamba blocks use it by default."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models.mamba import SSMConfig
from models.zamba import ZambaConfig
from models.mamba import MambaBlock
from models.remat import recompute_in_backward


def layer(w, x, ids):
    h = jnp.tanh(x @ w)
    h = jnp.sin(h) * h + jnp.where(ids[:, None] % 2 == 0, 1.0, -1.0)
    return x + h @ w.T


def chain(fn, n):
    def loss(ws, x, ids):
        for w in ws[:n]:
            x = fn(w, x, ids)
        return (x ** 2).sum()
    return loss


def test_gradients_first_and_second_order_match_plain():
    ws = [jax.random.normal(jax.random.PRNGKey(i), (6, 10)) * 0.3 for i in range(3)]
    x = jax.random.normal(jax.random.PRNGKey(9), (5, 6))
    ids = jnp.arange(5)
    plain, remat = chain(layer, 3), chain(recompute_in_backward(layer), 3)
    np.testing.assert_allclose(remat(ws, x, ids), plain(ws, x, ids), rtol=1e-6)
    for got, want in zip(jax.tree.leaves(jax.grad(remat, argnums=(0, 1))(ws, x, ids)),
                         jax.tree.leaves(jax.grad(plain, argnums=(0, 1))(ws, x, ids))):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # Second order: the gradient of (a scalar of) the gradient w.r.t. x.
    g2 = lambda loss: jax.grad(lambda x: jax.grad(loss)(ws, x, ids)[0].sum())(x)  # noqa: E731
    np.testing.assert_allclose(g2(remat), g2(plain), rtol=1e-4, atol=1e-5)


def compiled_temp_bytes(loss, *args):
    return jax.jit(jax.grad(loss)).lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_lowers_compiled_memory_of_a_chain():
    """8 layers, 4096 x 64 activations: the plain backward keeps every layer's
    intermediates; recomputation keeps each layer's input only."""
    ws = [jax.random.normal(jax.random.PRNGKey(i), (64, 256)) * 0.1 for i in range(8)]
    x = jax.random.normal(jax.random.PRNGKey(9), (4096, 64))
    ids = jnp.arange(4096)
    plain = compiled_temp_bytes(chain(layer, 8), ws, x, ids)
    remat = compiled_temp_bytes(chain(recompute_in_backward(layer), 8), ws, x, ids)
    assert remat < 0.5 * plain, (remat, plain)


@pytest.mark.parametrize("kind", ["mamba1", "mamba2"])
def test_mamba_block_remat_same_values_and_gradients(kind):
    def block(remat):
        cfg = ZambaConfig(d_model=16, ssm=SSMConfig(kind=kind, state_dim=4, chunk_size=8, head_dim=8,
                                                    remat=remat))
        return MambaBlock(cfg, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 21, 16))
    ids = jnp.array([[0] * 9 + [1] * 12, [0] * 21])

    @nnx.jit
    def value_and_grads(m, x):
        return nnx.value_and_grad(lambda m, x: (m(x, segment_ids=ids) ** 2).mean(), argnums=(0, 1))(m, x)

    (v_plain, (g_plain, gx_plain)), (v_remat, (g_remat, gx_remat)) = (
        value_and_grads(block(False), x), value_and_grads(block(True), x))
    np.testing.assert_allclose(v_remat, v_plain, rtol=1e-6)
    np.testing.assert_allclose(gx_remat, gx_plain, rtol=1e-5, atol=1e-7)
    for got, want in zip(jax.tree.leaves(nnx.state(g_remat, nnx.Param)),
                         jax.tree.leaves(nnx.state(g_plain, nnx.Param))):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
    assert block(True).remat and SSMConfig().remat          # on by default
