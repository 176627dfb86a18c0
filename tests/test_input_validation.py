"""Bad input gets one clear sentence, not a truncated result or a deep traceback:
non-floating q/k/v, bad energy registrations, and corpora too small to train on."""
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import energy_attn as ea
from energy_attn import registry
from tests.test_energies import make_qkv
from train.config import load_config
from train.data.pipeline import build_data

# ------------------------------------------------------------------ q, k, v dtypes

ENTRY_POINTS = {
    "attend": lambda q, k, v: ea.attend("softmax", q, k, v, mask=ea.causal()),
    "attend_with_energy": lambda q, k, v: ea.attend_with_energy("softmax", q, k, v),
    "attention_weights": lambda q, k, v: ea.attention_weights("softmax", q, k, v),
    "posterior_covariance": lambda q, k, v: ea.posterior_covariance("softmax", q, k, v),
}


def _dtype_error(entry, arg, dtype):
    return re.escape(f"ea.{entry}: {arg} has dtype {dtype}; attention needs floating-point "
                     f"inputs (cast with {arg}.astype(jnp.float32))")


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("arg", ["q", "k", "v"])
def test_integer_input_is_rejected_naming_the_argument(entry, arg):
    qkv = dict(zip("qkv", make_qkv()))
    qkv[arg] = (3 * qkv[arg]).astype(jnp.int32)
    with pytest.raises(TypeError, match=_dtype_error(entry, arg, "int32")):
        ENTRY_POINTS[entry](qkv["q"], qkv["k"], qkv["v"])


def test_all_integer_inputs_no_longer_truncate():
    # The original report: int32 q/k/v came back as int32, 5.998 truncated to 5.
    q = jnp.arange(2 * 3 * 1 * 2, dtype=jnp.int32).reshape(2, 3, 1, 2)
    with pytest.raises(TypeError, match=_dtype_error("attend", "q", "int32")):
        ea.attend("softmax", q, q, q)
    out = ea.attend("softmax", q.astype(jnp.float32), q.astype(jnp.float32), q.astype(jnp.float32))
    assert out.dtype == jnp.float32 and not np.allclose(out, np.round(out))


def test_attention_weights_without_v_checks_k():
    q, k, _ = make_qkv()
    with pytest.raises(TypeError, match=_dtype_error("attention_weights", "k", "int32")):
        ea.attention_weights("softmax", q, k.astype(jnp.int32))


@pytest.mark.parametrize("dtype", [jnp.bool_, jnp.uint8, jnp.int8, jnp.complex64])
def test_other_non_floating_dtypes_are_rejected(dtype):
    q, k, v = make_qkv()
    with pytest.raises(TypeError, match=_dtype_error("attend", "v", jnp.dtype(dtype).name)):
        ea.attend("softmax", q, k, v.astype(dtype))


def test_integer_input_is_rejected_under_jit_and_unbatched():
    q, k, v = make_qkv()
    f = jax.jit(lambda q, k, v: ea.attend("softmax", q, k, v))
    with pytest.raises(TypeError, match=_dtype_error("attend", "k", "int32")):
        f(q, k.astype(jnp.int32), v)
    with pytest.raises(TypeError, match=_dtype_error("attend", "q", "int32")):
        ea.attend("softmax", q[0].astype(jnp.int32), k[0], v[0])


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_low_precision_floats_still_work_with_unchanged_dtypes(dtype):
    q, k, v = (x.astype(dtype) for x in make_qkv())
    q32, k32, v32 = (x.astype(jnp.float32) for x in (q, k, v))
    out = ea.attend("softmax", q, k, v, mask=ea.causal())
    assert out.dtype == dtype
    ref = ea.attend("softmax", q32, k32, v32, mask=ea.causal())
    np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=2e-2)
    out2, f = ea.attend_with_energy("softmax", q, k, v)
    assert out2.dtype == dtype and f.dtype == jnp.float32
    # the derived quantities come back in the (float32) compute dtype, as before
    assert ea.attention_weights("softmax", q, k).dtype == jnp.float32
    assert ea.posterior_covariance("softmax", q, k, v).dtype == jnp.float32
    assert jax.jit(lambda q, k, v: ea.attend("softmax", q, k, v))(q, k, v).dtype == dtype


# ------------------------------------------------------------------ register_energy


def _energy(q, k, v, zeta, *, mask):
    return ea.logsumexp(ea.scores(q, k, mask=mask) + ea.source(zeta, v), axis=-1).sum()


@pytest.fixture
def private_registry(monkeypatch):
    """register_energy writes to a copy of the global registry, restored afterwards."""
    monkeypatch.setattr(registry, "_ENERGIES", dict(registry._ENERGIES))
    return registry._ENERGIES


@pytest.mark.parametrize("name,fn,exc,pattern", [
    ("x", 42, TypeError, r"register_energy\('x', \.\.\.\): the energy must be callable.*got int 42"),
    ("x", "softmax", TypeError, r"the energy must be callable.*got str 'softmax'"),
    ("", _energy, ValueError, r"the name must be a non-empty string without whitespace, got ''$"),
    ("a b", _energy, ValueError, r"without whitespace, got 'a b'$"),
    ("a\tb", _energy, ValueError, r"without whitespace, got 'a\\tb'$"),
    (42, _energy, TypeError, r"the name must be a string, got int 42$"),
    (None, _energy, TypeError, r"the name must be a string, got NoneType None$"),
])
def test_register_energy_rejects_bad_input(private_registry, name, fn, exc, pattern):
    before = dict(private_registry)
    with pytest.raises(exc, match=pattern):
        ea.register_energy(name, fn)
    assert private_registry == before


def test_register_energy_decorator_checks_the_name_at_once(private_registry):
    with pytest.raises(ValueError, match="without whitespace, got 'my energy'"):
        ea.register_energy("my energy")
    with pytest.raises(TypeError, match="must be callable"):
        ea.register_energy("mine")(3.0)
    assert "mine" not in private_registry


def test_register_energy_valid_registration_still_works(private_registry):
    assert ea.register_energy("test_validation_lse", _energy) is _energy
    assert ea.register_energy("test_validation_lse", _energy) is _energy   # same fn again: fine

    @ea.register_energy("test_validation_deco")
    def other(q, k, v, zeta, *, mask):
        return _energy(q, k, v, zeta, mask=mask)

    assert {"test_validation_lse", "test_validation_deco"} <= set(ea.available_energies())
    with pytest.raises(ValueError, match="already registered"):
        ea.register_energy("test_validation_lse", other)
    q, k, v = make_qkv()
    np.testing.assert_allclose(ea.attend("test_validation_lse", q, k, v),
                               ea.attend("softmax", q, k, v), atol=1e-5)


def test_private_registry_does_not_leak():
    assert not {"test_validation_lse", "test_validation_deco", "mine"} & set(ea.available_energies())


# ------------------------------------------------------------------ corpora too small


def _build(path, seq_len, *overrides):
    cfg = load_config(None, ["data.source=text", f"data.path={path}", f"data.seq_len={seq_len}",
                             f"model.max_seq_len={max(seq_len, 128)}", *overrides])
    return build_data(cfg.data, batch_size=2, seed=0)


def _advice(err) -> int:
    m = re.search(r"use a smaller data\.seq_len \(at most (\d+)\)", str(err))
    assert m, f"no seq_len advice in: {err}"
    return int(m.group(1))


def _works(path, seq_len, *overrides):
    _, train, val = _build(path, seq_len, *overrides)
    batch = next(train)
    assert batch["inputs"].shape == (2, seq_len)
    assert len(list(val(1))) == 1


def _words(n_bytes, seed):
    rng = np.random.default_rng(seed)
    words = "the quick brown fox jumps over a lazy dog while seven small birds sing".split()
    return " ".join(rng.choice(words, n_bytes)).strip()[:n_bytes]


@pytest.mark.parametrize("seq_len", [128, 2, 1])
def test_three_byte_file_is_too_small_to_split(tmp_path, seq_len):
    p = tmp_path / "tiny.txt"
    p.write_text("abc")
    with pytest.raises(ValueError) as e:
        _build(p, seq_len)
    msg = str(e.value)
    assert msg == (f"data.path='{p}' is too small to split into training and validation data: "
                   "it has 4 tokens (1 document plus its EOS token, byte tokenizer), "
                   "data.val_fraction=0.05 holds out 0 of them, and each split needs at least 2 "
                   "tokens for one sequence of seq_len 1; use a larger corpus or raise "
                   "data.val_fraction to 0.4")
    assert "at most" not in msg


def test_too_small_val_fraction_advice_works(tmp_path):
    p = tmp_path / "tiny.txt"
    p.write_text("abc")
    with pytest.raises(ValueError, match=r"raise data\.val_fraction to 0\.4$"):
        _build(p, 1)
    _works(p, 1, "data.val_fraction=0.4")


def test_two_byte_file_gets_no_val_fraction_advice(tmp_path):
    p = tmp_path / "tiny.txt"
    p.write_text("ab")                   # 3 tokens: no split leaves 2 on each side
    with pytest.raises(ValueError, match=r"too small to split.*use a larger corpus$"):
        _build(p, 1, "data.val_fraction=0.5")


def test_fifty_byte_file_advice_fits_the_validation_split(tmp_path):
    # Was: "training split has 48 tokens ... at most 47", then seq_len=47 failed on the
    # 3-token validation tail.
    p = tmp_path / "small.txt"
    p.write_text(_words(50, 0))
    with pytest.raises(ValueError) as e:
        _build(p, 128)
    assert "the validation split has 3 tokens" in str(e.value)
    k = _advice(e.value)
    assert k == 2
    _works(p, k)
    with pytest.raises(ValueError):      # and the advice is the largest that works
        _build(p, k + 1)


@pytest.mark.parametrize("n_bytes,n_docs,tokenizer", [
    (200, 1, "byte"), (500, 1, "byte"), (500, 1, "char"), (500, 5, "byte"), (500, 12, "byte"),
    (800, 20, "char"),
])
def test_following_the_seq_len_advice_works(tmp_path, n_bytes, n_docs, tokenizer):
    if n_docs == 1:
        p = tmp_path / "doc.txt"
        p.write_text(_words(n_bytes, n_docs))
    else:
        p = tmp_path / "docs.jsonl"
        p.write_text("".join(json.dumps({"text": _words(n_bytes // n_docs, i)}) + "\n"
                             for i in range(n_docs)))
    with pytest.raises(ValueError) as e:
        _build(p, 1024, f"data.tokenizer={tokenizer}")
    k = _advice(e.value)
    assert k >= 1
    _works(p, k, f"data.tokenizer={tokenizer}")
    with pytest.raises(ValueError, match="at most"):
        _build(p, k + 1, f"data.tokenizer={tokenizer}")
