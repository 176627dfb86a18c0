"""The one idea: attention is the gradient of a scalar energy.

    out = ∂F/∂ζ at ζ = 0,     F = energy(q, k, v, ζ, mask=..., **params)

Everything here is derived from an energy with `jax.grad` / `jax.vjp`; nothing
knows which energy it is given.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from .masks import Mask, as_mask
from .primitives import varying_like
from .registry import get_energy

# --------------------------------------------------------------- input checks


def _check_floating(where: str, q, k, v):
    """Integer (or bool, complex) q/k/v would be differentiated and cast back to their
    dtype, silently truncating the output; dtypes are static, so this also runs under jit."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"{where}: {name} has dtype {x.dtype}; attention needs floating-point "
                            f"inputs (cast with {name}.astype(jnp.float32))")


def _check_inputs(q, k, v, mask: Mask):
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not hasattr(x, "shape") or x.ndim not in (3, 4):
            shape = getattr(x, "shape", type(x).__name__)
            raise ValueError(f"{name} must have shape (B, T, H, D) or (T, H, D); got {shape}")
    if not q.ndim == k.ndim == v.ndim:
        raise ValueError(f"q, k, v must all be batched or all unbatched; got ndims "
                         f"{q.ndim}, {k.ndim}, {v.ndim}")
    if q.ndim == 4 and not q.shape[0] == k.shape[0] == v.shape[0]:
        raise ValueError(f"batch sizes differ: q {q.shape[0]}, k {k.shape[0]}, v {v.shape[0]}")
    *_, tq, hq, dk = q.shape
    *_, tk, hkv, _ = k.shape
    if k.shape[-1] != dk:
        raise ValueError(f"k has key width {k.shape[-1]} but q has {dk}; expected k of shape "
                         f"(B, Tk, H_kv, {dk})")
    if v.shape[:-1] != k.shape[:-1]:
        raise ValueError(f"v has shape {v.shape}; expected (B, Tk, H_kv, Dv) = "
                         f"({', '.join(map(str, k.shape[:-1]))}, Dv) to match k")
    if hq % hkv:
        raise ValueError(f"q has {hq} heads, which is not a multiple of the {hkv} K/V heads "
                         "(grouped-query attention needs H_q % H_kv == 0)")
    batch = q.shape[0] if q.ndim == 4 else 1
    mask.check(batch, hq, tq, tk)


def _compute_dtype(*xs):
    return jnp.promote_types(jnp.result_type(*xs), jnp.float32)


def _prepare(where, energy, q, k, v, mask):
    fn = get_energy(energy)
    mask = as_mask(mask)
    q, k, v = (jnp.asarray(x) for x in (q, k, v))
    _check_floating(where, q, k, v)
    _check_inputs(q, k, v, mask)
    out_dtype = jnp.result_type(q, k, v)
    dtype = _compute_dtype(q, k, v)
    q, k, v = (x.astype(dtype) for x in (q, k, v))
    unbatched = q.ndim == 3
    if unbatched:
        q, k, v = q[None], k[None], v[None]
    return fn, mask, q, k, v, out_dtype, unbatched


def _scalar_energy(fn, q, k, v, mask, params):
    name = getattr(fn, "__name__", repr(fn))

    def energy_of(zeta):
        e = fn(q, k, v, zeta, mask=mask, **params)
        if jnp.ndim(e) != 0:
            raise ValueError(f"energy {name!r} returned shape {jnp.shape(e)}; an energy must "
                             "return a scalar (sum over batch, heads and queries)")
        return e
    return energy_of


def _zero_source(q, v):
    # Inside shard_map, ζ must vary over the mesh axes q varies over: a replicated
    # ζ would make jax.grad sum every device's output (the transpose of pvary).
    return varying_like(jnp.zeros(q.shape[:-1] + (v.shape[-1],), q.dtype), q)


# --------------------------------------------------------------- derivations


def _split_params(params):
    """Array-valued params are traced; the rest (names, ints, floats) are static."""
    arrays = {n: p for n, p in params.items() if isinstance(p, (jax.Array, np.ndarray))}
    static = tuple(sorted((n, p) for n, p in params.items() if n not in arrays))
    try:
        hash(static)
    except TypeError:
        return None, None
    return static, arrays


def _source_value_and_grad(fn, q, k, v, mask, params):
    return jax.value_and_grad(_scalar_energy(fn, q, k, v, mask, params))(_zero_source(q, v))


def _score_gradient(fn, q, k, v, mask, params):
    zero_bias = jnp.zeros((q.shape[0], q.shape[2], q.shape[1], k.shape[1]), q.dtype)

    def energy_of_bias(b):
        return _scalar_energy(fn, q, k, v, mask & Mask(bias=b), params)(_zero_source(q, v))
    return jax.grad(energy_of_bias)(zero_bias)


def _source_hessian_blocks(fn, q, k, v, mask, params):
    zeta0 = _zero_source(q, v)
    _, pullback = jax.vjp(jax.grad(_scalar_energy(fn, q, k, v, mask, params)), zeta0)
    basis = jnp.eye(v.shape[-1], dtype=q.dtype)[:, None, None, None, :] * jnp.ones_like(zeta0)
    cols = jax.vmap(lambda e: pullback(e)[0])(basis)          # (Dv, B, Tq, H, Dv)
    return jnp.moveaxis(cols, 0, -1)                             # [..., d, e]


@partial(jax.jit, static_argnums=(0, 1, 6))
def _derive_jit(derivation, fn, q, k, v, mask, static_params, array_params):
    return derivation(fn, q, k, v, mask, dict(static_params, **array_params))


def _derive(derivation, fn, q, k, v, mask, params):
    """Run a derivation under jit, so that eager calls reuse compiled code."""
    static, arrays = _split_params(params)
    if static is None:       # unhashable options: trace without the jit cache
        return derivation(fn, q, k, v, mask, params)
    return _derive_jit(derivation, fn, q, k, v, mask, static, arrays)


# --------------------------------------------------------------- the contract


def _attend_with_energy(where, energy, q, k, v, mask, params):
    fn, mask, q, k, v, out_dtype, unbatched = _prepare(where, energy, q, k, v, mask)
    f, out = _derive(_source_value_and_grad, fn, q, k, v, mask, params)
    if unbatched:
        out = out[0]
    return out.astype(out_dtype), f


def attend_with_energy(energy: str | Callable, q, k, v, *, mask: Mask | None = None, **params):
    """(∂F/∂ζ at 0, F at 0): the attention output and the energy (summed log-partition).

    Inputs and output dtype as for `attend`.
    """
    return _attend_with_energy("ea.attend_with_energy", energy, q, k, v, mask, params)


def attend(energy: str | Callable, q, k, v, *, mask: Mask | None = None, **params):
    """Attention output: jax.grad of the energy with respect to the source ζ, at ζ = 0.

    q: (B, Tq, H, Dk), k: (B, Tk, H_kv, Dk), v: (B, Tk, H_kv, Dv) -> (B, Tq, H, Dv).
    The batch axis may be dropped (then vmap over attend works).

    q, k and v must be floating point (float16, bfloat16, float32 or float64): any other
    dtype (int, bool, complex) raises TypeError, eagerly and under jit alike, instead of
    silently truncating the output; attend_with_energy, attention_weights and
    posterior_covariance check the same. The energy is evaluated in at least float32 and
    the output cast back to the dtype q, k and v promote to (bfloat16 in, bfloat16 out).
    """
    return _attend_with_energy("ea.attend", energy, q, k, v, mask, params)[0]


def attention_weights(energy: str | Callable, q, k, v=None, *, mask: Mask | None = None, **params):
    """The attention map ∂F/∂s_ij as (B, H, Tq, Tk).

    Energies see the scores only through β q·k + bias, so the derivative with
    respect to a zero additive bias *is* ∂F/∂s, for any energy. q, k (and v, if
    given) must be floating point (TypeError otherwise, as for `attend`); the map is
    computed in at least float32.
    """
    if v is None:
        v = jnp.zeros(k.shape[:-1] + (1,), jnp.result_type(k))
    fn, mask, q, k, v, _, unbatched = _prepare("ea.attention_weights", energy, q, k, v, mask)
    w = _derive(_score_gradient, fn, q, k, v, mask, params)
    return w[0] if unbatched else w


def posterior_covariance(energy: str | Callable, q, k, v, *, mask: Mask | None = None, **params):
    """Second ζ-derivative, per query: Cov[v | query i] as (B, Tq, H, Dv, Dv).

    The Bayesian reading of the softmax energy: F is a log-partition, so ∂F/∂ζ is
    the posterior mean of v and ∂²F/∂ζ² its covariance. Energies are sums over
    queries, so the Hessian is block-diagonal and Dv reverse-mode passes give
    every block (reverse-over-reverse also works with the flash kernel). q, k and v
    must be floating point (TypeError otherwise, as for `attend`).
    """
    fn, mask, q, k, v, _, unbatched = _prepare("ea.posterior_covariance", energy, q, k, v, mask)
    cov = _derive(_source_hessian_blocks, fn, q, k, v, mask, params)
    return cov[0] if unbatched else cov
