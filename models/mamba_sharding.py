"""Mamba over a sequence-sharded mesh: the conv and the SSM scan with a carry exchange.

Only two parts of a Mamba layer mix positions: the depthwise causal conv and the
scan. Everything else is per-token and XLA shards it from the inputs. Under
`energy_attn.sequence_sharding` (the trainer's mesh.seq > 1) the mixers in
models/mamba.py call these three functions, each one `jax.shard_map` over the
spec's seq axis:

    starts = sharded_segment_starts(segment_ids, spec)      # (B, T) bool, layout order
    y = sharded_causal_conv(x, w, b, starts, spec)          # halo: K-1 tokens from the previous piece
    y = sharded_scan(ssd_scan, x, dt, a, B, C, D, starts=starts, spec=spec, chunk_size=64)

A device holds one contiguous piece of the sequence (layout "contiguous") or two
(layout "dual_chunk": pieces i and 2p-1-i, see energy_attn/tree/layout.py). The
scan is an affine map on the state, so each device scans its pieces from a zero
state and the carry exchange of models/sequence_pieces.py gives every piece its
true start state. Then:
- Mamba-2 (SSD): the start state's part of the output, C_t · h_start ·
  exp(Σ_{r<=t} Δ_r a), is added to the zero-state output (one einsum);
- Mamba-1: that part needs the (T, D_inner, N) expansion the chunked scan
  avoids, so the piece is scanned again from its true state (twice the scan).
Document starts (`starts`) stop the carry exactly as in the one-device scan, and
the conv drops taps that reach back across a start, so sharded == one device.
"""
from __future__ import annotations

import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from energy_attn.sequence_sharding import SequenceSharding
from energy_attn.tree.layout import check_layout

from .ssm_scan import causal_conv, segment_starts, selective_scan, ssd_scan
from .sequence_pieces import (carry_across_pieces, from_previous_piece, is_first_device, piece_length,
                              rows, shard_map, split_pieces, zeros_varying_like)


def check_sharded_length(length: int, conv_width: int, spec: SequenceSharding) -> None:
    """ValueError unless the sequence splits into pieces at least as long as the conv's reach."""
    check_layout(spec.layout, length, spec.num_shards)
    piece = piece_length(length, spec)
    if piece < conv_width - 1:
        raise ValueError(f"sequence-sharded Mamba needs pieces of at least conv_width - 1 = "
                         f"{conv_width - 1} tokens; T={length} over mesh.seq={spec.num_shards} "
                         f"({spec.layout}) gives {piece}")


def sharded_segment_starts(segment_ids, spec: SequenceSharding):
    """(B, T) ids in layout order -> (B, T) bool, True where a document starts in sequence
    order (a piece's first token is compared with the previous piece's last)."""
    def local(ids):
        pieces = split_pieces(ids, spec)
        before = from_previous_piece(jnp.stack([p[:, -1] for p in pieces]), spec)   # (k, B)
        out = []
        for j, p in enumerate(pieces):
            starts = segment_starts(p).at[:, 0].set(p[:, 0] != before[j])
            out.append(starts)
        # The sequence's first token never starts a document (segment_starts' convention);
        # piece 0 compares against zeros, so clear it there.
        out[0] = out[0].at[:, 0].set(jnp.where(is_first_device(spec), False, out[0][:, 0]))
        return jnp.concatenate(out, axis=1)

    return shard_map(local, spec, (rows(spec, 0),), rows(spec, 0))(segment_ids)


def sharded_causal_conv(x, w, b, starts, spec: SequenceSharding):
    """causal_conv over a sharded (B, T, C) sequence: each piece borrows the last K-1 inputs
    of the piece before it. starts: (B, T) bool or None. Returns y (B, T, C)."""
    reach = w.shape[0] - 1

    def tails(pieces):           # the last K-1 tokens of each piece, of the piece before each
        return from_previous_piece(jnp.stack([p[:, p.shape[1] - reach:] for p in pieces]), spec)

    def local(x, w, b, *starts):
        pieces = split_pieces(x, spec)
        history = tails(pieces)
        if not starts:
            return jnp.concatenate([causal_conv(p, w, b, history=history[j])[0]
                                    for j, p in enumerate(pieces)], axis=1)
        # The borrowed tokens may hold document starts too: convolve history + piece as one
        # sequence, so taps stop at those, and keep the piece's outputs.
        starts = split_pieces(starts[0], spec)
        before = tails(starts)
        return jnp.concatenate([
            causal_conv(jnp.concatenate([history[j], p], axis=1), w, b,
                        starts=jnp.concatenate([before[j], starts[j]], axis=1))[0][:, reach:]
            for j, p in enumerate(pieces)], axis=1)

    args, specs = (x, w, b), (rows(spec, 1), P(), P())
    if starts is not None:
        args, specs = args + (starts,), specs + (rows(spec, 0),)
    return shard_map(local, spec, specs, rows(spec, 1))(*args)


def _piece_decay(scan, dt, A, starts):
    """How the piece maps its start state to its end state: exp(Σ Δ A), 0 if a document starts
    in it; shaped to broadcast against the state."""
    stopped = jnp.any(starts, axis=1)                                       # (B,)
    if scan is ssd_scan:                                                    # A: (H,), state (B, H, P, N)
        decay = jnp.exp(jnp.sum(dt, axis=1) * A)[..., None, None]
    else:                                                                   # A: (Di, N), state (B, Di, N)
        decay = jnp.exp(jnp.sum(dt, axis=1)[..., None] * A)
    return jnp.where(stopped.reshape((-1,) + (1,) * (decay.ndim - 1)), 0.0, decay)


def sharded_scan(scan, x, dt, A, B, C, D, *, starts, spec: SequenceSharding, chunk_size: int):
    """`scan` (selective_scan or ssd_scan, from a zero state) over a sharded sequence.
    Same arguments and shapes as `scan`; returns y only (training keeps no final state)."""
    if scan not in (selective_scan, ssd_scan):
        raise ValueError(f"sharded_scan runs selective_scan or ssd_scan, not {scan}")
    def local(x, dt, B, C, A, D, *starts):
        pieces = [split_pieces(a, spec) for a in (x, dt, B, C)]
        k = len(pieces[0])
        starts = split_pieces(starts[0], spec) if starts else [jnp.zeros(p.shape[:2], bool) for p in pieces[0]]
        state = (x.shape[0], *x.shape[2:], B.shape[-1])     # (B, H, P, N) or (B, Di, N)
        zero_start = [scan(*(a[j] for a in pieces[:2]), A, *(a[j] for a in pieces[2:]), D,
                           h0=zeros_varying_like(state, x, jnp.float32), starts=starts[j], chunk_size=chunk_size)
                      for j in range(k)]
        decay = jnp.stack([_piece_decay(scan, pieces[1][j], A, starts[j]) for j in range(k)])
        h_in = carry_across_pieces(jnp.stack([h for _, h in zero_start]), decay, spec)
        ys = []
        for j in range(k):
            xj, dtj, Bj, Cj = (a[j] for a in pieces)
            if scan is ssd_scan:   # add the start state's share: C_t · h_in · exp(Σ_{r<=t} Δ_r a)
                carried = jnp.exp(jnp.cumsum(dtj * A, axis=1)) * (jnp.cumsum(starts[j], axis=1) == 0)[..., None]
                ys.append(zero_start[j][0] + jnp.einsum("btn,bhpn->bthp", Cj, h_in[j]) * carried[..., None])
            else:                  # Mamba-1: scan the piece again from its true start state
                ys.append(scan(xj, dtj, A, Bj, Cj, D, h0=h_in[j], starts=starts[j], chunk_size=chunk_size)[0])
        return jnp.concatenate(ys, axis=1)

    args = (x, dt, B, C, A, D)
    specs = (rows(spec, x.ndim - 2), rows(spec, dt.ndim - 2), rows(spec, 1), rows(spec, 1), P(), P())
    if starts is not None:
        args, specs = args + (starts,), specs + (rows(spec, 0),)
    return shard_map(local, spec, specs, rows(spec, x.ndim - 2))(*args)
