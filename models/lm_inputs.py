"""What every language model in the zoo checks first, and the attention mask it builds.

    check_lm_inputs(tokens, max_seq_len=self.max_seq_len, segment_ids=segment_ids, cache=cache)
    check_cache_length(max_len, self.max_seq_len)            # in init_cache
    mask = lm_mask(segment_ids, self.segment_mask, cache)    # None with a cache

One owner for these rules, so the transformer, the hybrid, the BST and the energy
transformer refuse the same bad calls with the same words.
"""
from __future__ import annotations

import energy_attn as ea


def check_lm_inputs(tokens, *, max_seq_len: int | None = None, segment_ids=None, cache=None) -> None:
    """tokens (B, T) with T <= max_seq_len (None: any T); segment_ids only without a cache."""
    if tokens.ndim != 2:
        raise ValueError(f"tokens must have shape (B, T); got {tokens.shape}")
    if max_seq_len is not None and tokens.shape[1] > max_seq_len:
        raise ValueError(f"sequence of {tokens.shape[1]} tokens exceeds max_seq_len={max_seq_len}")
    if cache is not None and segment_ids is not None:
        raise ValueError("segment_ids are for packed training rows; decode one document per row "
                         "with the cache instead")


def check_cache_length(max_len: int, max_seq_len: int) -> None:
    if max_len > max_seq_len:
        raise ValueError(f"cache max_len={max_len} exceeds the model's max_seq_len={max_seq_len}")


def lm_mask(segment_ids, segment_mask: bool, cache=None, *, causal: bool = True) -> ea.Mask | None:
    """The attention mask of a training/prefill call: causal, and within documents when the
    row is packed (segment_ids) and the model masks them (model.attention.segment_mask).
    With a cache: None, as the KV cache adds causality from its write index."""
    if cache is not None:
        return None
    mask = ea.causal() if causal else None
    if segment_ids is not None and segment_mask:
        mask = ea.segments(segment_ids) if mask is None else mask & ea.segments(segment_ids)
    return mask
