"""Tree attention: energies whose keys (and queries) are sharded along the sequence.

    from energy_attn import tree
    mesh = jax.make_mesh((4,), ("seq",))
    out = tree.decode_attention(q, k, v, mesh=mesh, kv_length=n)          # sharded KV cache
    out = tree.attend_sequence_sharded("softmax", q, k, v, axis="seq")    # inside shard_map
    perm = tree.dual_chunk_permutation(seq_len, num_shards)               # causal load balance

sharded.py: sharded energies, decode, ShardedKVCache; prefill.py: training/prefill;
layout.py: contiguous and dual-chunk layouts.
"""
from .layout import (LAYOUTS, check_layout, chunk_starts, dual_chunk_inverse,  # noqa: F401
                     dual_chunk_permutation, inverse_permutation, to_layout, to_natural)
from .prefill import (DEFAULT_SCHEME, SCHEMES, attend_sequence_sharded,  # noqa: F401
                      attend_sequence_sharded_with_energy, compare_schemes)
from .sharded import (SHARDED, Combine, ShardedKVCache, attend_sharded_keys,  # noqa: F401
                      attend_sharded_keys_with_energy, decode_attention,
                      decode_attention_with_energy, resolve_sharded, shard_count, shard_index,
                      shard_mask, sharded_energy, tree_pmax, tree_psum, tree_pvary, zero_source)

from . import hlo  # noqa: F401
from .baselines import allgather_partials_decode_attention, ring_attention, ring_decode_attention  # noqa: F401
from .hlo import collective_stats, memory_stats  # noqa: F401
