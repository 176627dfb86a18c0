"""How a sequence is laid out over p devices: contiguous, or MaxText's dual-chunk swap.

Causal attention over a contiguously sharded sequence is unbalanced: the device
holding the last block sees every key, the first sees almost none. The dual-chunk
layout cuts the sequence into 2p chunks and gives device i chunks i and 2p−1−i,
so every device does the same causal work:

    perm = dual_chunk_permutation(seq_len=16, num_shards=2)   # chunks 0,3 | 1,2
    x_perm = x[:, perm]                  # shard x_perm contiguously over the mesh
    x = x_perm[:, inverse_permutation(perm)]

Inside `jax.shard_map` a device knows its tokens' true positions from
`chunk_starts` (static chunk length, traced starts), and an array all-gathered in
layout order goes back to natural order with `to_natural` (reshapes and slices,
no gather, so its transpose is cheap too).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

LAYOUTS = ("contiguous", "dual_chunk")


def check_layout(layout: str, seq_len: int, num_shards: int) -> None:
    """ValueError naming both numbers when seq_len does not split into the layout's chunks."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not one of {LAYOUTS}")
    chunks = num_shards * (2 if layout == "dual_chunk" else 1)
    if num_shards < 1 or seq_len % chunks:
        what = f"2 × {num_shards} = {chunks} chunks" if layout == "dual_chunk" else f"{num_shards} shards"
        raise ValueError(f"layout={layout!r} needs the sequence length to be divisible by {what}; "
                         f"got seq_len={seq_len} with num_shards={num_shards}")


def dual_chunk_permutation(seq_len: int, num_shards: int) -> np.ndarray:
    """Indices `perm` with x_perm = x[:, perm]: device i's block holds chunks i and 2p−1−i."""
    check_layout("dual_chunk", seq_len, num_shards)
    c = seq_len // (2 * num_shards)
    chunks = np.arange(seq_len).reshape(2 * num_shards, c)
    order = [j for i in range(num_shards) for j in (i, 2 * num_shards - 1 - i)]
    return chunks[order].reshape(-1)


def inverse_permutation(perm) -> np.ndarray:
    """x = x_perm[:, inverse_permutation(perm)]."""
    perm = np.asarray(perm)
    inv = np.empty_like(perm)
    inv[perm] = np.arange(perm.size)
    return inv


def dual_chunk_inverse(seq_len: int, num_shards: int) -> np.ndarray:
    return inverse_permutation(dual_chunk_permutation(seq_len, num_shards))


def chunk_starts(layout: str, local_len: int, num_shards: int, shard):
    """[(global start, length)] of the contiguous chunks a shard holds, in local order.

    `shard` may be traced (lax.axis_index); lengths are static.
    """
    if layout == "contiguous":
        return [(shard * local_len, local_len)]
    c = local_len // 2
    return [(shard * c, c), ((2 * num_shards - 1 - shard) * c, c)]


def to_natural(x, num_shards: int, layout: str, axis: int = 1):
    """An array gathered in layout order (shard-major) along `axis` -> natural order."""
    if layout == "contiguous":
        return x
    t = x.shape[axis]
    c = t // (2 * num_shards)
    y = x.reshape(x.shape[:axis] + (num_shards, 2, c) + x.shape[axis + 1:])
    first = lax.index_in_dim(y, 0, axis + 1, keepdims=False)            # chunks 0 .. p−1
    second = jnp.flip(lax.index_in_dim(y, 1, axis + 1, keepdims=False), axis)  # p .. 2p−1
    return jnp.concatenate([first, second], axis).reshape(x.shape)


def to_layout(x, num_shards: int, layout: str, axis: int = 1):
    """Inverse of `to_natural`: natural order -> shard-major layout order along `axis`."""
    if layout == "contiguous":
        return x
    t = x.shape[axis]
    c = t // (2 * num_shards)
    y = x.reshape(x.shape[:axis] + (2, num_shards, c) + x.shape[axis + 1:])
    first = lax.index_in_dim(y, 0, axis, keepdims=False)
    second = jnp.flip(lax.index_in_dim(y, 1, axis, keepdims=False), axis)
    return jnp.stack([first, second], axis + 1).reshape(x.shape)
