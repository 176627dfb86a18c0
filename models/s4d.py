"""The S4D convolution kernels of the Block-State Transformer: pure functions of
arrays, shared by the layer (models/bst.py) and its sequence-sharded form
(models/bst_sharding.py).

- `chunked_ssm_outputs`: the recurrence chunk by chunk, read out only where the BST
  reads it (linear in T); `ssm_block_ends` adds the skip term at each block's end.
- `fft_causal_conv`: the paper's FFT convolution, O(T log T).
- `ssm_conv_reference`: the direct O(T²) convolution both must equal.
- `lower_toeplitz`: a Toeplitz matrix from its taps, with a slice-only gradient.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def fft_causal_conv(u, kernel):
    """y[t] = Σ_{s<=t} kernel[t-s] u[s], by FFT in float32.
    u: (B, T, C); kernel: (F, C, T) -> (B, T, F, C). Zero-padding to 2T keeps the
    circular convolution from wrapping the end of the sequence onto its start."""
    length = u.shape[1]
    n = 2 * length
    uf = jnp.fft.rfft(u.astype(jnp.float32), n=n, axis=1)               # (B, n/2+1, C)
    kf = jnp.fft.rfft(kernel.astype(jnp.float32), n=n, axis=-1)         # (F, C, n/2+1)
    y = jnp.fft.irfft(uf[:, :, None, :] * jnp.moveaxis(kf, -1, 0)[None], n=n, axis=1)
    return y[:, :length]


def ssm_conv_reference(u, kernel):
    """The direct O(T²) causal convolution that `fft_causal_conv` must equal."""
    length = u.shape[1]
    lag = jnp.arange(length)[:, None] - jnp.arange(length)[None, :]        # t - s
    toeplitz = jnp.where(lag >= 0, kernel[..., jnp.clip(lag, 0)], 0.0)     # (F, C, T, T)
    return jnp.einsum("fcts,bsc->btfc", toeplitz, u.astype(jnp.float32))


def lower_toeplitz(taps):
    """(..., L) -> (..., L, L) with M[i, j] = taps[i - j] for i >= j, else 0. Built by
    tiling [taps, 0...] and re-reading it with row stride 2L - 1 (each row shifts by
    one), so its gradient is a sum of slices rather than a scatter (slow on CPU)."""
    length = taps.shape[-1]
    padded = jnp.concatenate([taps, jnp.zeros_like(taps)], axis=-1)            # (..., 2L)
    tiled = jnp.tile(padded, (1,) * (taps.ndim - 1) + (length,))[..., :length * (2 * length - 1)]
    rows = tiled.reshape(*taps.shape[:-1], length, 2 * length - 1)[..., :length]   # rows[j, i] = taps[i-j]
    return jnp.swapaxes(rows, -1, -2)


def chunked_ssm_outputs(u, log_decay, weight, *, chunk: int, last: int, initial=None,
                        with_final: bool = False):
    """The S4D convolution y[t] = Σ_{s<=t} K[t-s] u[s], K[l] = 2·Re Σ_n w_n λ_n^l
    (λ = e^{log_decay}), at the `last` final positions of every chunk of `chunk`
    positions only: (B, T/chunk, last, F, C) float32. T must be a multiple of chunk.
    initial: (B, F, C, N/2) complex state before the first position (default zeros);
    with_final: also return the state after the last position.

    It runs the recurrence x_t = λ x_{t-1} + u_t, y_t = 2·Re Σ_n w_n x_t chunk by chunk:
      state:   each chunk's end state from its own inputs, Σ_j λ^{L-1-j} u_j (one
               matmul), carried across chunks by h_k = λ^L h_{k-1} + s_k (a scan over
               T/L steps of (B, F, C, N/2));
      output:  at position i of chunk k, 2·Re Σ_n w_n λ^{i+1} h_{k-1} from the carried
               state, plus Σ_{j<=i} K[i-j] u_j inside the chunk (rows of a Toeplitz
               matmul with the kernel's first L taps).
    Work per channel and filter is O(T·(N + last)) and linear in T. The BST reads the
    SSM only at the end of each block (mh: last = 1, mf: last = S/F; sh reads every
    position, last = L), so with chunk = the block it never forms the full output."""
    batch, length, channels = u.shape
    if length % chunk or not 1 <= last <= chunk:
        raise ValueError(f"length {length} must be a multiple of chunk {chunk}, and 1 <= last={last} <= chunk")
    num_chunks, modes = length // chunk, log_decay.shape[-1]
    u = u.astype(jnp.float32).reshape(batch, num_chunks, chunk, channels)
    power = jnp.exp(log_decay[..., None] * jnp.arange(chunk))                  # λ^l: (F, C, N/2, L)

    # End states as real pairs: one matmul against [Re λ^{L-1-j}, Im λ^{L-1-j}].
    to_end = power[..., ::-1]
    ends = jnp.einsum("fcnj,bkjc->kbfcn", jnp.concatenate([to_end.real, to_end.imag], 2), u)
    ends = ends[..., :modes] + 1j * ends[..., modes:]                           # (K, B, F, C, N/2)
    chunk_decay = jnp.exp(log_decay * chunk)

    def carry(h, end):                     # h: the state entering this chunk
        return chunk_decay * h + end, h
    initial = jnp.zeros_like(ends[0]) if initial is None else initial.astype(ends.dtype)
    final, entering = jax.lax.scan(carry, initial, ends)                       # (K, B, F, C, N/2)

    # Read out at the last `last` positions i = L-last .. L-1.
    at = power[..., chunk - last:] * jnp.exp(log_decay)[..., None]             # λ^{i+1}
    readout = weight[..., None] * at                                            # (F, C, N/2, last)
    y = 2.0 * jnp.einsum("fcni,kbfcn->bkifc", jnp.concatenate([readout.real, -readout.imag], 2),
                         jnp.concatenate([entering.real, entering.imag], -1))
    taps = 2.0 * jnp.einsum("fcn,fcnl->fcl", weight, power).real                # K[0 .. L-1]
    rows = lower_toeplitz(taps)[..., chunk - last:, :]                          # (F, C, last, L)
    y = y + jnp.einsum("fcij,bkjc->bkifc", rows, u)
    return (y, final) if with_final else y


def ssm_block_ends(u, log_decay, weight, skip, *, block_len: int, last: int, initial=None):
    """The chunked S4D's outputs, skip term included, at the last `last` positions of each
    block: (B, T, C) -> (B, T/W, last, F, C) fp32. initial: the state before u (zeros)."""
    batch, length, channels = u.shape
    y = chunked_ssm_outputs(u, log_decay, weight, chunk=block_len, last=last, initial=initial)
    u_last = u.reshape(batch, length // block_len, block_len, channels)[:, :, block_len - last:]
    return y + u_last.astype(jnp.float32)[:, :, :, None, :] * skip
