"""Block-State Transformer: the SSM against its recurrence, the FFT convolution
against the direct one, the chunked recurrence against both, causality of every variant,
recurrent decoding against the full forward pass, every energy, training, and config errors."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import energy_attn as ea
from models import build_model
from models.bst import BlockStateTransformer, DiagonalSSM
from models.s4d import chunked_ssm_outputs, fft_causal_conv, ssm_conv_reference
from models.config import AttentionConfig
from models.bst import BSTConfig, BSTLayerConfig
from train.config import load_config

VARIANTS = ["sh", "mh", "mf"]


def tiny(variant="mh", energy="softmax", num_layers=2, block_len=4, kv_heads=None, **bst):
    bst = {"num_context_states": 4, "num_filters": 2, "state_dim": 4, **bst}
    return BSTConfig(vocab_size=32, max_seq_len=32, d_model=16, num_layers=num_layers,
                       num_heads=2, attention=AttentionConfig(energy=energy, num_kv_heads=kv_heads),
                       bst=BSTLayerConfig(variant=variant, block_len=block_len, **bst))


@nnx.jit
def forward(model, tokens):
    return model(tokens)


def test_ssm_equals_its_recurrence():
    """S4D output == the discretised recurrence h_t = e^{ΔA} h_{t-1} + (e^{ΔA}-1)/A u_t,
    y_t = 2 Re(C h_t) + D u_t, stepped one token at a time in numpy (no kernel, no FFT)."""
    ssm = DiagonalSSM(3, state_dim=6, filters=2, dt_min=1e-2, dt_max=0.5, rngs=nnx.Rngs(0))
    u = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (2, 45, 3)))   # T = 45: not a square
    a = -np.exp(np.asarray(ssm.log_neg_re_a[...], np.float64)) + 1j * np.asarray(ssm.im_a[...])
    dta = np.exp(np.asarray(ssm.log_dt[...], np.float64)) * a                 # (F, C, N/2)
    c = np.asarray(ssm.c[...], np.float64) @ np.array([1, 1j])
    h = np.zeros((2, *a.shape), complex)
    ys = []
    for t in range(u.shape[1]):
        h = np.exp(dta) * h + (np.exp(dta) - 1) / a * u[:, t, None, :, None]
        ys.append(2 * (c * h).sum(-1).real + u[:, t, None, :] * np.asarray(ssm.skip[...]))
    np.testing.assert_allclose(np.asarray(ssm(jnp.asarray(u))), np.stack(ys, 1), rtol=2e-4, atol=2e-4)


def test_fft_convolution_equals_direct_convolution():
    u = jax.random.normal(jax.random.PRNGKey(0), (2, 37, 3))
    kernel = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 37)) * jnp.exp(-0.1 * jnp.arange(37))
    got, want = fft_causal_conv(u, kernel), ssm_conv_reference(u, kernel)
    assert got.shape == (2, 37, 2, 3)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def changed_positions(model, length=24, positions=(2, 9, 13)):
    """Row i changes the token at positions[i]; returns a (rows, T) bool: logits changed."""
    tokens = jax.random.randint(jax.random.PRNGKey(0), (1, length), 0, 32)
    rows = jnp.repeat(tokens, len(positions), axis=0)
    pos = jnp.asarray(positions)
    edited = rows.at[jnp.arange(len(positions)), pos].set((rows[jnp.arange(len(positions)), pos] + 7) % 32)
    delta = jnp.abs(forward(model, edited) - forward(model, rows)).max(-1)
    return np.asarray(delta > 1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_causal_and_context_reaches_later_blocks(variant):
    model = build_model(tiny(variant), rngs=nnx.Rngs(0))
    positions = (2, 9, 13)
    changed = changed_positions(model, positions=positions)
    for row, p in enumerate(positions):
        assert not changed[row, :p].any(), f"{variant}: a change at {p} leaked to earlier positions"
        assert changed[row, p:].all(), f"{variant}: a change at {p} did not reach every later position"


def test_without_ssm_blocks_are_independent():
    """Control for the test above: with no BST layer (bst_every > num_layers), a
    change stays inside its block, so the reach across blocks is the SSM's doing."""
    model = build_model(tiny("mh", bst_every=3), rngs=nnx.Rngs(0))
    changed = changed_positions(model, positions=(2,))
    assert changed[0, 2:4].all() and not changed[0, 4:].any()


@nnx.jit
def decode(model, tokens, cache):
    return model(tokens, cache=cache)


@pytest.mark.parametrize("variant, bst_every, kv_heads", [("sh", 1, None), ("mh", 1, None),
                                                          ("mf", 1, None), ("mf", 2, 1)])
def test_recurrent_decoding_equals_full_forward(variant, bst_every, kv_heads):
    """Prompt of 6 (crosses the block boundary at 4), then single tokens across three
    more boundaries, == the parallel forward pass. bst_every=2: layer 0 has no SSM
    (KV cache only); kv_heads=1: grouped-query K/V in both caches."""
    model = build_model(tiny(variant, bst_every=bst_every, kv_heads=kv_heads), rngs=nnx.Rngs(1))
    tokens = jax.random.randint(jax.random.PRNGKey(2), (2, 19), 0, 32)
    full = forward(model, tokens)                          # T = 19: padded to 20 inside
    logits, cache = decode(model, tokens[:, :6], model.init_cache(2, 22))
    outs = [logits]
    for t in range(6, 19):
        logits, cache = decode(model, tokens[:, t:t + 1], cache)
        outs.append(logits)
    np.testing.assert_allclose(jnp.concatenate(outs, 1), full, rtol=1e-4, atol=1e-4)
    assert int(cache.index) == 19
    assert cache.layers[0].ssm is None if bst_every == 2 else cache.layers[0].ssm is not None


def test_cached_context_equals_parallel_context_states():
    """After the last token of block k, the layer's buffer of SSM outputs gives block
    k+1's context states exactly as `context_states` does in the parallel pass; at
    position 0 they are the learned initial states. mf reads 2 of W = 4 positions per
    filter, the buffer's least trivial case (every variant is covered end to end above)."""
    layer = build_model(tiny("mf"), rngs=nnx.Rngs(0)).layers[0]
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 12, 16))

    @nnx.jit
    def contexts(layer, x):
        def step(carry, xt):
            cache, index = carry
            _, cache = layer.decode(xt[:, None], cache, index)
            return (cache, index + 1), layer.block_context(cache.outputs, False)
        return jax.lax.scan(step, (layer.init_cache(2), jnp.int32(0)), jnp.swapaxes(x, 0, 1))[1]

    got = contexts(layer, x)[3::4]                          # after positions 3, 7, 11: (3, B, S, d)
    want = layer.context_states(x)                         # (B, 3 blocks, S, d)
    np.testing.assert_allclose(jnp.moveaxis(got[:2], 0, 1), want[:, 1:], rtol=1e-5, atol=1e-5)
    first = layer.block_context(layer.init_cache(2).outputs, True)
    np.testing.assert_allclose(first, want[:, 0], rtol=1e-6, atol=1e-6)


def test_cache_size_does_not_depend_on_max_len():
    model = build_model(tiny("sh", bst_every=2, num_layers=3), rngs=nnx.Rngs(0))
    size = lambda c: sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(c))  # noqa: E731
    assert size(model.init_cache(2, 4)) == size(model.init_cache(2, 32)) > 0
    with pytest.raises(ValueError, match="cache max_len=33 exceeds the model's max_seq_len=32"):
        model.init_cache(2, 33)
    with pytest.raises(ValueError, match="segment_ids are for packed training rows"):
        model(jnp.zeros((2, 3), jnp.int32), segment_ids=jnp.zeros((2, 3), jnp.int32),
              cache=model.init_cache(2, 8))


def test_generate_matches_argmax_of_the_full_forward():
    """Greedy models.generate with the recurrent cache: each new token is the argmax of
    the full forward pass at the previous position (causal, so one pass checks all)."""
    from models.sampling import generate
    model = build_model(tiny("mf"), rngs=nnx.Rngs(4))
    prompt = jax.random.randint(jax.random.PRNGKey(5), (2, 5), 0, 32)
    out = generate(model, prompt, 6, rng=jax.random.PRNGKey(0), temperature=0.0)
    assert out.shape == (2, 11) and (out[:, :5] == prompt).all()
    logits = forward(model, out)
    np.testing.assert_array_equal(out[:, 5:], jnp.argmax(logits[:, 4:10], -1))
    top2 = jnp.sort(logits[:, 4:10], -1)[..., -2:]
    assert (top2[..., 1] - top2[..., 0] > 1e-5).all()       # no near-ties: the comparison is meaningful


@pytest.mark.parametrize("energy", ea.available_energies())
def test_every_registered_energy_plugs_in(energy):
    model = build_model(tiny("mf", energy=energy, num_layers=1), rngs=nnx.Rngs(0))
    assert model.layers[0].attn.energy is ea.get_energy(energy)
    assert model.layers[0].cross.energy is ea.get_energy(energy)
    tokens = jax.random.randint(jax.random.PRNGKey(0), (1, 12), 0, 32)
    edited = tokens.at[0, 5].set((tokens[0, 5] + 7) % 32)

    @nnx.jit
    def run(m):    # one compile: both forward passes and the gradient
        grads = nnx.grad(lambda m: m(tokens).std())(m)
        return jnp.abs(m(edited) - m(tokens)).max(-1)[0] > 1e-6, grads

    changed, grads = run(model)
    assert not changed[:5].any() and changed[5:].all()
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_training_lowers_the_loss(tmp_path):
    from train.loop.trainer import train
    run = tmp_path / "run"
    cfg = load_config(None, [
        "model.name=bst", "model.num_layers=1", "model.d_model=32", "model.num_heads=2",
        "model.max_seq_len=32", "model.bst.block_len=8", "model.bst.state_dim=8", "data.seq_len=32",
        "train.batch_size=4", "train.eval_batches=1", "optim.warmup_steps=2", "optim.lr=1e-2",
        "train.steps=20", "train.eval_every=20", "checkpoint.every=20", "train.sample_tokens=0",
        "logging.log_every=1", "logging.progress_bar=false", "logging.wandb=disabled", f"train.run_dir={run}"])
    train(cfg, log=lambda *_: None)
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r.get("split", "train") == "train"]
    assert losses[-1] < losses[0] - 0.5                    # byte-level: starts near log(257)


BASE = ["model.name=bst", "model.max_seq_len=128", "data.seq_len=128"]


@pytest.mark.parametrize("override, message", [
    (["model.bst.variant=multi"], "model.bst.variant='multi' is not one of"),
    (["model.bst.block_len=0"], "model.bst.block_len must be >= 1"),
    (["model.bst.block_len=48"], "data.seq_len=128 must be divisible by model.bst.block_len=48"),
    (["model.bst.state_dim=5"], "model.bst.state_dim=5 must be even"),
    (["model.bst.variant=mf", "model.bst.num_context_states=5"], "divisible by model.bst.num_filters"),
    (["mesh.seq=2", "model.bst.conv=fft"], "model.bst.conv='fft' cannot be sequence-sharded"),
])
def test_bad_options_give_one_clear_error(override, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, BASE + override)


def test_model_constructor_rejects_a_bad_variant():
    with pytest.raises(ValueError, match="model.bst.variant='xy'"):
        BlockStateTransformer(tiny("xy"), rngs=nnx.Rngs(0))


def test_bench_models_cli_tiny_run_and_bad_lengths(capsys, tmp_path):
    from train.cli import main
    path = tmp_path / "bench.json"
    code = main(["bench", "models", "--models", "bst", "--lengths", "64", "--d-model", "16",
                 "--layers", "1", "--heads", "2", "--block-len", "16", "--repeats", "1", "--json", str(path)])
    out = capsys.readouterr().out
    assert code == 0 and "bst" in out and "needs both T=4096 and T=16384" in out
    rows = json.loads(path.read_text())["models"]["bst"]
    assert set(rows) == {"64"} and all(r["step_s"] > 0 and r["memory_bytes"] > 0 for r in rows.values())
    assert main(["bench", "models", "--lengths", "100", "--block-len", "64"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "100 is not a multiple of --block-len=64" in err[0]


def twin_ssms(**kw):
    """The same S4D parameters behind both convolutions."""
    chunked = DiagonalSSM(3, state_dim=6, filters=2, dt_min=1e-2, dt_max=0.5, conv="chunked",
                          rngs=nnx.Rngs(0), **kw)
    fft = DiagonalSSM(3, state_dim=6, filters=2, dt_min=1e-2, dt_max=0.5, conv="fft", rngs=nnx.Rngs(0), **kw)
    return chunked, fft


def explicit_kernel(ssm, length):
    """K[l] = 2 Re sum_n w_n lambda_n^l from the modes, every power formed (no Vandermonde split)."""
    dta, w = ssm.modes()
    return 2.0 * jnp.einsum("fcn,fcnl->fcl", w, jnp.exp(dta[..., None] * jnp.arange(length))).real


@nnx.jit
def outputs_and_grads(ssm, u):
    loss = lambda m, u: jnp.sum(jnp.sin(m(u)))             # noqa: E731
    return ssm(u), nnx.grad(loss, argnums=(0, 1))(ssm, u)


@pytest.mark.parametrize("length", [45, 130])
def test_full_outputs_chunked_equal_fft_and_direct(length):
    """DiagonalSSM at every position (T not a multiple of the 64-chunk: padded inside),
    chunked vs fft with the same parameters vs the direct O(T^2) convolution, values and
    first-order gradients w.r.t. every SSM parameter and the input."""
    ssm = DiagonalSSM(3, state_dim=6, filters=2, dt_min=1e-2, dt_max=0.5, conv="chunked", rngs=nnx.Rngs(0))
    u = jax.random.normal(jax.random.PRNGKey(6), (2, length, 3))
    direct = ssm_conv_reference(u, explicit_kernel(ssm, length)) + u[:, :, None, :] * ssm.skip[...]
    chunked, (gp_c, gu_c) = outputs_and_grads(ssm, u)
    ssm.conv = "fft"                                       # static: nnx.jit traces it anew
    fft, (gp_f, gu_f) = outputs_and_grads(ssm, u)
    np.testing.assert_allclose(chunked, direct, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fft, direct, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gu_c, gu_f, rtol=1e-3, atol=1e-4)
    for a, b in zip(jax.tree.leaves(nnx.state(gp_c, nnx.Param)), jax.tree.leaves(nnx.state(gp_f, nnx.Param))):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("chunk, last", [(8, 1), (8, 8), (6, 4), (1, 1)])
def test_chunked_ssm_outputs_equal_direct_convolution(chunk, last):
    """The raw convolution (no skip) at the last `last` positions of each chunk."""
    ssm = DiagonalSSM(3, state_dim=6, filters=2, dt_min=1e-2, dt_max=0.5, rngs=nnx.Rngs(1))
    u = jax.random.normal(jax.random.PRNGKey(7), (2, 3 * chunk, 3))
    got = jax.jit(chunked_ssm_outputs, static_argnames=("chunk", "last"))(u, *ssm.modes(), chunk=chunk,
                                                                          last=last)
    want = ssm_conv_reference(u, explicit_kernel(ssm, 3 * chunk)).reshape(2, 3, chunk, 2, 3)
    np.testing.assert_allclose(got, want[:, :, chunk - last:], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="must be a multiple of chunk"):
        chunked_ssm_outputs(u[:, 1:], *ssm.modes(), chunk=3 * chunk, last=1)


@pytest.mark.parametrize("block_len, last", [(8, 1), (8, 3), (8, 8), (5, 2)])
def test_chunked_block_ends_equal_fft_and_direct_convolution(block_len, last):
    """What the BST layer reads (the last `last` outputs of each block), by the chunked
    recurrence, equals the FFT path and the direct O(T^2) convolution, values and
    first-order gradients (w.r.t. every SSM parameter and the input)."""
    chunked, fft = twin_ssms()
    u = jax.random.normal(jax.random.PRNGKey(3), (2, 4 * block_len, 3))
    got = chunked.block_ends(u, block_len=block_len, last=last)
    direct = ssm_conv_reference(u, fft.kernel(u.shape[1])) + u[:, :, None, :] * fft.skip[...]
    want = direct.reshape(2, 4, block_len, 2, 3)[:, :, block_len - last:]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fft.block_ends(u, block_len=block_len, last=last), want, rtol=1e-4, atol=1e-4)

    def grads(ssm):
        loss = lambda m, u: jnp.sum(jnp.sin(m.block_ends(u, block_len=block_len, last=last)))  # noqa: E731
        return nnx.grad(loss, argnums=(0, 1))(ssm, u)
    (gp_c, gu_c), (gp_f, gu_f) = grads(chunked), grads(fft)
    np.testing.assert_allclose(gu_c, gu_f, rtol=1e-3, atol=1e-4)
    for a, b in zip(jax.tree.leaves(nnx.state(gp_c, nnx.Param)), jax.tree.leaves(nnx.state(gp_f, nnx.Param))):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)


def test_chunked_second_order_gradient_equals_fft():
    """d/d(log_dt) of the sum of d(loss)/du: a second-order check of the chunked path."""
    chunked, fft = twin_ssms()
    u = jax.random.normal(jax.random.PRNGKey(4), (1, 16, 3))

    def second(ssm):
        graphdef, params, rest = nnx.split(ssm, nnx.Param, ...)
        def inner(params, u):
            return jnp.sum(jnp.sin(nnx.merge(graphdef, params, rest).block_ends(u, block_len=8, last=2)))
        return jax.grad(lambda p: jax.grad(inner, argnums=1)(p, u).sum())(params)["log_dt"][...]
    np.testing.assert_allclose(second(chunked), second(fft), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("conv", ["chunked", "fft"])
def test_step_by_step_equals_full_pass(conv):
    """DiagonalSSM.step (the recurrent form decoding will use) == __call__, T = 45."""
    ssm = twin_ssms()[0 if conv == "chunked" else 1]
    u = jax.random.normal(jax.random.PRNGKey(5), (2, 45, 3))
    state, ys = ssm.init_state(2), []
    for t in range(u.shape[1]):
        y, state = ssm.step(u[:, t], state)
        ys.append(y)
    np.testing.assert_allclose(jnp.stack(ys, 1), ssm(u), rtol=1e-4, atol=1e-4)


def test_bad_conv_is_one_clear_error():
    with pytest.raises(ValueError, match="model.bst.conv='fast' is not one of"):
        load_config(None, BASE + ["model.bst.conv=fast"])


def test_decode_benchmark_runs_and_its_cache_does_not_grow_with_max_len():
    from models.bench_models import bst_decode
    lines = []
    rows = bst_decode(max_lens=(128, 256), variants=("mh",), d_model=32, num_layers=1, steps=1,
                            log=lines.append)
    assert [r["max_len"] for r in rows] == [128, 256] and len(lines) == 2
    assert rows[0]["cache_bytes"] == rows[1]["cache_bytes"]
    assert all(r["recompute_s"] > 0 and r["recurrent_s"] > 0 for r in rows)
    assert "ms/token" in lines[0]


def test_bench_models_measures_config_files_as_they_are(capsys, tmp_path):
    """--configs: the shipped files' models, at each --lengths, with the ratio to the transformer."""
    from train.cli import main
    small = {"transformer": "model: {name: transformer, d_model: 16, num_layers: 1, num_heads: 2}\n",
             "zamba": ("model: {name: zamba, d_model: 16, num_layers: 2, num_heads: 2,\n"
                       "        ssm: {kind: mamba2, state_dim: 4, head_dim: 8, chunk_size: 8}}\n")}
    paths = []
    for name, text in small.items():
        paths.append(tmp_path / f"{name}.yaml")
        paths[-1].write_text(text)
    out_json = tmp_path / "bench.json"
    code = main(["bench", "models", "--configs", ",".join(map(str, paths)), "--lengths", "32,64",
                 "--repeats", "1", "--json", str(out_json)])
    out = capsys.readouterr().out
    assert code == 0 and "models as in the given configs" in out
    assert "zamba/tr" in out                      # the ratio row
    res = json.loads(out_json.read_text())
    assert set(res["models"]) == {"transformer", "zamba"}
    assert set(res["models"]["zamba"]) == {"32", "64"}
    # Two files of one model are refused in one line.
    assert main(["bench", "models", "--configs", f"{paths[0]},{paths[0]}"]) == 2
    assert "two configs of model 'transformer'" in capsys.readouterr().err
