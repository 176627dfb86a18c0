"""Kernels: the fast and the numerically delicate parts that energies are built on.

    entmax.py        the α-entmax solver and the Tsallis conjugate, with exact JVPs
    linear_sums.py   kernel attention's num/den: chunked prefix sums (causal), or dense
    blockwise.py, flash.py, few_queries.py, and this file: the softmax energy's kernels

Fast kernels for the softmax energy's derivative rule.

`softmax_attention` returns the exact attention output ∂F/∂ζ and the per-query
log-partition for F(ζ) = Σ_i lse_j(β q_i·k_j + bias_ij + ζ_i·v_j), for any ζ.

Implementations:
  "blockwise": query blocks with static causal/window block skipping (CPU default)
  "dense":     one block (= plain masked softmax attention)
  "flash":     online-lse loops with a recomputing backward, O(T) memory (long T)
  "dpa":       jax.nn.dot_product_attention (cuDNN on GPU for bf16/f16)
  "few_queries": a few queries against many keys (decoding): K and V are read in
               their own layout, no heads-first copy of the cache
  "auto":      picks one of the above from the backend, mask and sizes.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from ..autodiff import instantiate_zeros
from ..masks import Mask
from .blockwise import attention_blocks
from .few_queries import few_query_attention
from .flash import flash_attention

IMPLEMENTATIONS = ("auto", "blockwise", "dense", "flash", "dpa", "few_queries")

# "few_queries" multiplies H_kv-fold zeros to avoid copying K/V; worth it while the
# query rows are few (Tq·H) and the keys many.
FEW_QUERY_ROWS, FEW_QUERY_MIN_KEYS = 64, 1024

# Above this many score entries (B·H·Tq·Tk) a kernel that keeps T×T residuals for
# autodiff costs more than ~1 GiB; switch to the recomputing flash kernel.
FLASH_THRESHOLD = 2 ** 28


def choose_implementation(impl: str, q, k, mask: Mask) -> str:
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown softmax implementation {impl!r}; choose one of {IMPLEMENTATIONS}")
    if impl != "auto":
        return impl
    b, tq, h, _ = q.shape
    tk = k.shape[1]
    gpu = jax.default_backend() == "gpu"
    if not gpu and tq * h <= FEW_QUERY_ROWS and tk >= FEW_QUERY_MIN_KEYS:
        return "few_queries"
    if b * h * tq * tk > FLASH_THRESHOLD and _divides(tq, 512) and _divides(tk, 512):
        return "flash"
    if gpu and mask.q_valid is None and mask.window is None:
        return "dpa"
    return "blockwise"


def _divides(t, block):
    return t % min(t, block) == 0


def softmax_attention(q, k, v, zeta, mask: Mask, beta, impl: str = "auto",
                      block_q: int = 128, block_k: int = 512):
    """Exact (out, lse) of softmax attention with source ζ. q is *unscaled*."""
    impl = choose_implementation(impl, q, k, mask)
    q = q * _per_head(beta, q)
    if impl == "flash":
        bq, bk = min(block_q, q.shape[1]), min(block_k, k.shape[1])
        if q.shape[1] % bq or k.shape[1] % bk:
            raise ValueError(f"impl='flash' needs Tq % {bq} == 0 and Tk % {bk} == 0 "
                             f"(got Tq={q.shape[1]}, Tk={k.shape[1]}); pick block sizes that divide them")
        return flash_attention(q, k, v, zeta, mask, bq, bk)
    block = q.shape[1] if impl == "dense" else block_q
    if impl == "dpa":
        return _skip_zero_source(_dpa, q, k, v, zeta, mask, block)
    if impl == "few_queries":
        return _skip_zero_source(few_query_attention, q, k, v, zeta, mask, block)
    return _skip_zero_source(attention_blocks, q, k, v, zeta, mask, block)


def _per_head(beta, q):
    beta = jnp.asarray(beta, q.dtype)
    if beta.ndim == 1:          # one β per query head
        return beta[:, None]
    return beta


def _dpa(q, k, v, zeta, mask: Mask, block):
    """jax.nn.dot_product_attention, with ζ folded in as extra q/k columns."""
    if zeta is not None:
        q, k = jnp.concatenate([q, zeta], -1), jnp.concatenate([k, v], -1)
    tq, tk, dv = q.shape[1], k.shape[1], v.shape[-1]
    width = max(q.shape[-1], dv)          # dpa wants one width for q, k and v: pad with zeros
    pad = lambda x: jnp.pad(x, [(0, 0)] * 3 + [(0, width - x.shape[-1])])
    q, k, v = pad(q), pad(k), pad(v)
    ok = mask.allowed(0, tq, 0, tk, tq, tk)
    out, lse = jax.nn.dot_product_attention(
        q, k, v, bias=mask.bias_block(0, tq, 0, tk), mask=ok, scale=1.0,
        implementation="cudnn" if q.dtype in (jnp.bfloat16, jnp.float16) and jax.default_backend() == "gpu" else None,
        return_residual=True)
    out, lse = out[..., :dv], lse.transpose(0, 2, 1)      # dpa's lse is (B, T, H)
    if ok is not None:          # dpa averages V over a fully masked row; we want zeros
        has_key = jnp.any(jnp.broadcast_to(ok, (q.shape[0], q.shape[2], tq, tk)), -1)
        out = jnp.where(has_key.transpose(0, 2, 1)[..., None], out, 0.0)
        lse = jnp.where(has_key, lse, 0.0)
    return out, lse


def _skip_zero_source(kernel, q, k, v, zeta, mask, block):
    """Evaluate `kernel` without the ζ·v term when ζ is all zero (attend's case).

    The ζ·v scores cost as much as the q·k scores. Skipping them is only a
    *value* shortcut: under differentiation the custom JVP below always uses the
    full kernel, so every derivative with respect to ζ stays exact.
    """
    return _zero_source_shortcut(kernel, block, q, k, v, zeta, mask)


# Module level (not a closure per call) so that eager calls hit JAX's caches.
@partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _zero_source_shortcut(kernel, block, q, k, v, zeta, mask):
    return jax.lax.cond(jnp.all(zeta == 0),
                        lambda: kernel(q, k, v, None, mask, block),
                        lambda: kernel(q, k, v, zeta, mask, block))


@partial(_zero_source_shortcut.defjvp, symbolic_zeros=True)
def _zero_source_shortcut_jvp(kernel, block, primals, tangents):
    q, k, v, zeta, mask = primals
    dq, dk, dv, dmask = instantiate_zeros((tangents[0], tangents[1], tangents[2], tangents[4]))
    dzeta = tangents[3]
    if not isinstance(dzeta, SymbolicZero):
        return jax.jvp(lambda *a: kernel(*a, block), primals, (dq, dk, dv, dzeta, dmask))
    # ζ is held fixed (training differentiates in q, k, v only). Where it is zero,
    # its ζ·v term adds nothing to the value or to any q/k/v tangent, so skip it
    # there too; the derivative stays exact.
    without = lambda q, k, v, mask: kernel(q, k, v, None, mask, block)
    with_zeta = lambda q, k, v, mask: kernel(q, k, v, zeta, mask, block)
    args, dargs = (q, k, v, mask), (dq, dk, dv, dmask)
    return jax.lax.cond(jnp.all(zeta == 0),
                        lambda: jax.jvp(without, args, dargs),
                        lambda: jax.jvp(with_zeta, args, dargs))

