"""A sequence-sharded sequence seen as pieces, for the layers that carry state along it.

Under `energy_attn.sequence_sharding` a device holds one contiguous piece of every
sequence (layout "contiguous") or two (layout "dual_chunk": pieces i and 2p-1-i; see
energy_attn/tree/layout.py). A recurrent layer (the Mamba scan, the BST's SSM) runs
each piece from a zero state and then needs values from the pieces before it. These
helpers, used inside `jax.shard_map` over spec.seq_axis, move such per-piece values
between devices:

    pieces = split_pieces(x_local, spec)              # k arrays (B, T/G, ...), G = k·p pieces
    before = from_previous_piece(tails, spec)         # (k, ...): the value of the piece before each
    h_in = carry_across_pieces(h_end, decay, spec)    # (k, ...): each piece's true start state

`carry_across_pieces` is the associative carry exchange: a piece maps its start state
to its end state affinely, h_end = decay · h_start + h_end(h_start = 0), so every
device all-gathers the (decay, zero-start end) of every piece (a few KB each) and
folds them in sequence order.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from energy_attn.sequence_sharding import SequenceSharding
from energy_attn.tree.layout import to_layout, to_natural


def pieces_per_device(spec: SequenceSharding) -> int:
    return 2 if spec.layout == "dual_chunk" else 1


def piece_length(length: int, spec: SequenceSharding) -> int:
    return length // (spec.num_shards * pieces_per_device(spec))


def split_pieces(x, spec: SequenceSharding):
    """Local (B, T_local, ...) -> this device's pieces, each (B, T_local / k, ...)."""
    return jnp.split(x, pieces_per_device(spec), axis=1)


def is_first_device(spec: SequenceSharding):
    """True on the device whose first piece starts the sequence (both layouts)."""
    return lax.axis_index(spec.seq_axis) == 0


def all_pieces(stacked, spec: SequenceSharding):
    """This device's per-piece values (k, ...) -> every piece's (G, ...), in sequence order."""
    gathered = lax.all_gather(stacked, spec.seq_axis, axis=0, tiled=True)   # layout order
    return to_natural(gathered, spec.num_shards, spec.layout, axis=0)


def my_pieces(every, spec: SequenceSharding):
    """Every piece's values (G, ...) in sequence order -> this device's (k, ...)."""
    k = pieces_per_device(spec)
    laid_out = to_layout(every, spec.num_shards, spec.layout, axis=0)
    return lax.dynamic_slice_in_dim(laid_out, lax.axis_index(spec.seq_axis) * k, k, axis=0)


def from_previous_piece(stacked, spec: SequenceSharding):
    """(k, ...) per piece -> the same value of the piece before each of them (zeros before
    the sequence's first piece)."""
    every = all_pieces(stacked, spec)
    shifted = jnp.concatenate([jnp.zeros_like(every[:1]), every[:-1]], axis=0)
    return my_pieces(shifted, spec)


def zeros_varying_like(shape, like, dtype=None):
    """Zeros typed as varying over the same mesh axes as `like`: a scan's carry must keep
    its type, and a state fed with per-device data varies per device."""
    zeros = jnp.zeros(shape, like.dtype if dtype is None else dtype)
    axes = tuple(jax.typeof(like).manual_axis_type.varying)
    return lax.pcast(zeros, axes, to="varying") if axes else zeros


def carry_across_pieces(h_end, decay, spec: SequenceSharding):
    """h_end (k, B, ...): each local piece's end state from a zero start; decay (k, ...),
    broadcastable against a state: how the piece scales its start state. Returns
    (k, B, ...): each piece's true start state (zeros for the sequence's first piece)."""
    h_end, decay = all_pieces(h_end, spec), all_pieces(decay, spec)

    def fold(h, piece):          # h: the state entering this piece
        end, dec = piece
        return dec * h + end, h

    _, starts = lax.scan(fold, zeros_varying_like(h_end.shape[1:], h_end), (h_end, decay))
    return my_pieces(starts, spec)


def shard_map(fn, spec: SequenceSharding, in_specs, out_specs):
    return jax.shard_map(fn, mesh=spec.mesh, in_specs=in_specs, out_specs=out_specs)


def rows(spec: SequenceSharding, extra_dims: int) -> P:
    """The PartitionSpec of a (B, T, ...) array with `extra_dims` trailing dims."""
    return P(spec.batch_axis, spec.seq_axis, *([None] * extra_dims))
