"""The Block-State Transformer over a sequence-sharded mesh.

Inside a BST layer only the SSM carries information between blocks: attention stays
within a block (self-attention) or reads that block's context states
(cross-attention). So when every device's pieces hold whole blocks, the block
transformer runs locally, and only the context states need the devices before:

- each device runs the chunked S4D over its pieces from a zero state, and the carry
  exchange of models/sequence_pieces.py gives every piece its true start state (the
  S4D recurrence x_t = λ x_t-1 + u_t is affine in the state: decay λ^(piece length));
- the piece's block-end outputs are then recomputed from that state;
- block k attends to the states of block k-1: a piece's first block takes the last
  block's states of the piece before it (the sequence's first block the learned
  initial states).

    states = sharded_context_states(ssm_norm(x), log_decay, weight, skip, context_init,
                                    block_len=W, last=ends_read, spec=spec)   # (B, T/W, S, d)

Layouts "contiguous" and "dual_chunk" both work; T must split into pieces of whole
blocks. The FFT convolution (model.bst.conv=fft) is not sharded.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from energy_attn.sequence_sharding import SequenceSharding
from energy_attn.tree.layout import check_layout

from .s4d import chunked_ssm_outputs, ssm_block_ends
from .sequence_pieces import (carry_across_pieces, from_previous_piece, is_first_device, piece_length,
                              rows, shard_map, split_pieces)


def check_sharded_length(length: int, block_len: int, spec: SequenceSharding) -> None:
    """ValueError unless the sequence splits into pieces of whole blocks."""
    check_layout(spec.layout, length, spec.num_shards)
    piece = piece_length(length, spec)
    if piece % block_len:
        raise ValueError(f"a sequence-sharded BST needs pieces of whole blocks: T={length} over "
                         f"mesh.seq={spec.num_shards} ({spec.layout}) gives pieces of {piece} tokens, "
                         f"not a multiple of model.bst.block_len={block_len}")


def sharded_context_states(u, log_decay, weight, skip, context_init, *, block_len: int, last: int,
                           spec: SequenceSharding):
    """u (B, T, d): the SSM's normalised input, sharded in the layout's order ->
    (B, T/W, S, d) fp32: each block's context states (GELU of the previous block's read
    SSM outputs, block 0: context_init), as BSTLayer.context_states computes them on one
    device, before adding context_ids."""
    check_sharded_length(u.shape[1], block_len, spec)
    num_states = context_init.shape[0]

    def local(u, log_decay, weight, skip, context_init):
        pieces = split_pieces(u, spec)
        piece_len = pieces[0].shape[1]
        # 1. Each piece's end state from a zero start, then the carry exchange.
        zero_start_ends = jnp.stack([
            chunked_ssm_outputs(p, log_decay, weight, chunk=block_len, last=last, with_final=True)[1]
            for p in pieces])                                                # (k, B, F, d, N/2)
        decay = jnp.exp(log_decay * piece_len)[None, None]                   # λ^(piece length)
        decay = jnp.broadcast_to(decay, (len(pieces), *decay.shape[1:]))
        start = carry_across_pieces(zero_start_ends, decay, spec)
        # 2. Block-end outputs from the true start state -> each block's own states.
        states = []
        for j, p in enumerate(pieces):
            ends = ssm_block_ends(p, log_decay, weight, skip, block_len=block_len, last=last,
                                  initial=start[j])                          # (B, nb, last, F, d)
            states.append(jax.nn.gelu(ends).reshape(*ends.shape[:2], num_states, ends.shape[-1]))
        # 3. Shift one block forward in sequence order.
        before = from_previous_piece(jnp.stack([s[:, -1] for s in states]), spec)   # (k, B, S, d)
        first = jnp.broadcast_to(context_init.astype(jnp.float32), before[0].shape)
        before = before.at[0].set(jnp.where(is_first_device(spec), first, before[0]))
        return jnp.concatenate([jnp.concatenate([before[j][:, None], s[:, :-1]], axis=1)
                                for j, s in enumerate(states)], axis=1)

    return shard_map(local, spec, (rows(spec, 1), P(), P(), P(), P()), rows(spec, 2))(
        u, log_decay, weight, skip, context_init)
