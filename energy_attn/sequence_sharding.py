"""Sequence sharding for whole models: a value that layers are built with.

A model is written for one device. To run it with its sequence split over a mesh
axis, build it with a `SequenceSharding` (the trainer does, from `mesh.seq`):

    spec = SequenceSharding(mesh, seq_axis="seq", batch_axis="data", layout="dual_chunk")
    model = build_model(cfg, rngs=rngs, sequence_sharding=spec)
    loss = jax.jit(loss_fn)(model, batch)        # batch arrays sharded P("data", "seq")

Everything per-token (embeddings, norms, MLPs, the loss) is sharded by XLA from
the batch's sharding. Attention is the one layer that mixes positions, so an
`EnergyAttention` built with a spec runs its energy through
`energy_attn.tree.attend_sequence_sharded` inside `jax.shard_map` (the Mamba and
BST layers do the same for their scans). A spec over a size-1 axis, or None,
leaves a layer single-device; decoding with a KV cache is always single-device.

With layout="dual_chunk" the caller must also permute each sequence with
`energy_attn.tree.dual_chunk_permutation` before sharding it (and pass RoPE
positions explicitly), so that every device holds chunks i and 2p-1-i: the
causal work is then balanced across devices.
"""
from __future__ import annotations

import dataclasses
from typing import Any

LAYOUTS = ("contiguous", "dual_chunk")


@dataclasses.dataclass(frozen=True)
class SequenceSharding:
    mesh: Any                          # a jax.sharding.Mesh holding seq_axis (and batch_axis)
    seq_axis: str = "seq"
    batch_axis: str | None = "data"    # the batch is split over this axis too (None: replicated)
    layout: str = "dual_chunk"         # how the sequence was laid out before sharding
    scheme: str | None = None          # communication scheme (None: the tree module's default)

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout={self.layout!r} is not one of {LAYOUTS}")
        names = tuple(self.mesh.axis_names)
        for what, axis in (("seq_axis", self.seq_axis), ("batch_axis", self.batch_axis)):
            if axis is not None and axis not in names:
                raise ValueError(f"{what}={axis!r} is not an axis of the mesh (axes: {names})")

    @property
    def num_shards(self) -> int:
        return self.mesh.shape[self.seq_axis]


def active(spec: SequenceSharding | None) -> SequenceSharding | None:
    """The spec if it splits the sequence (more than one shard), else None."""
    return spec if spec is not None and spec.num_shards > 1 else None


def attend_sharded(energy, q, k, v, mask, spec: SequenceSharding, params: dict):
    """Self-attention over a sequence sharded as `spec` says: q, k, v are global
    (B, T, H, D) arrays; the mask may be causal and/or carry segment ids (the
    masks a packed LM batch needs), given in the layout's token order."""
    import jax
    from jax.sharding import PartitionSpec as P

    from .tree import attend_sequence_sharded

    if q.shape[1] != k.shape[1]:
        raise ValueError(
            f"sequence sharding covers self-attention over the whole sequence (Tq = Tk); got "
            f"Tq={q.shape[1]}, Tk={k.shape[1]}. For decoding with a sharded KV cache use "
            "energy_attn.tree.decode_attention")
    extra = list(mask.restricts_beyond("causal", "q_segment_ids", "kv_segment_ids"))
    extra += ["q_offset"] if mask.q_offset is not None else []
    if extra:
        raise ValueError(f"under sequence sharding the attention mask may be causal and carry "
                         f"segment ids only; this one also sets {extra}")
    segment_ids = mask.q_segment_ids
    if segment_ids is not None and mask.kv_segment_ids is not None and \
            mask.kv_segment_ids is not mask.q_segment_ids:
        raise ValueError("under sequence sharding queries and keys must share one segment-id array")
    rows = P(spec.batch_axis, spec.seq_axis)
    heads = P(spec.batch_axis, spec.seq_axis, None, None)
    options = dict(params)
    if spec.scheme is not None:
        options["scheme"] = spec.scheme

    def local(q, k, v, *segment_ids):
        return attend_sequence_sharded(energy, q, k, v, axis=spec.seq_axis, causal=mask.causal,
                                       segment_ids=segment_ids[0] if segment_ids else None,
                                       layout=spec.layout, **options)

    args = (q, k, v) if segment_ids is None else (q, k, v, segment_ids)
    specs = (heads, heads, heads, rows)[:len(args)]
    return jax.shard_map(local, mesh=spec.mesh, in_specs=specs, out_specs=heads)(*args)
