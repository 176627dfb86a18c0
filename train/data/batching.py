"""Token streams -> packed rows -> batches, for corpora held in memory (train/data/pipeline.py's
builtin and text sources, and train/data/token_cache.py's memory-mapped cache).

A row is seq_len + 1 consecutive tokens: inputs = row[:-1], targets = row[1:], with
segment ids and positions that restart after every EOS (see train/data/pipeline.py). Iterators
expose `state()` and `restore(state)` for exact resume.
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from train.data.tokenizer import Tokenizer


Batch = dict[str, np.ndarray]


def tokenize_documents(docs: list[str], tokenizer: Tokenizer) -> np.ndarray:
    """One int32 stream: doc0 EOS doc1 EOS ..."""
    eos = np.array([tokenizer.eos_id], np.int32)
    parts = []
    for d in docs:
        parts.append(tokenizer.encode_array(d))
        parts.append(eos)
    return np.concatenate(parts) if parts else np.zeros(0, np.int32)


def pack_rows(rows: np.ndarray, eos_id: int, pack_documents: bool = True) -> Batch:
    """(B, T+1) token rows -> the batch dict (inputs, targets, segment_ids, positions)."""
    rows = np.asarray(rows, np.int32)
    inputs, targets = rows[:, :-1], rows[:, 1:]
    B, T = inputs.shape
    t = np.broadcast_to(np.arange(T, dtype=np.int32), (B, T))
    if not pack_documents:
        return {"inputs": inputs, "targets": targets, "segment_ids": np.ones((B, T), np.int32),
                "positions": np.array(t)}
    after_eos = np.zeros((B, T), bool)
    after_eos[:, 1:] = inputs[:, :-1] == eos_id          # token t starts a document
    segment_ids = 1 + np.cumsum(after_eos, axis=1, dtype=np.int32)
    starts = np.maximum.accumulate(np.where(after_eos, t, 0), axis=1)
    return {"inputs": np.ascontiguousarray(inputs), "targets": np.ascontiguousarray(targets),
            "segment_ids": segment_ids.astype(np.int32), "positions": (t - starts).astype(np.int32)}


def too_few_tokens(split: str, n_tokens: int, seq_len: int, extra: str = "",
                    at_most: int | None = None) -> ValueError:
    """`at_most`: the largest seq_len that works (default: what this split alone allows);
    below 1 the advice to shrink seq_len would be wrong, so the message says so."""
    at_most = n_tokens - 1 if at_most is None else at_most
    if at_most < 1:
        return ValueError(
            f"the {split} split has {plural(n_tokens, 'token')}, too few for even one sequence "
            f"(seq_len=1 needs 2 tokens){extra}")
    return ValueError(
        f"the {split} split has {plural(n_tokens, 'token')}, fewer than seq_len+1 = {seq_len + 1} "
        f"needed for one sequence; use a smaller data.seq_len (at most {at_most}){extra}")


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


class BatchIterator:
    """Batches from one in-memory token stream, forever.

    Rows start at multiples of seq_len (row r = tokens[r*T : r*T + T + 1]), so every token
    is a target once per epoch. Epoch e visits the rows in the order of a permutation drawn
    from np.random.default_rng([seed, e]); batches run on across epoch boundaries. With
    several processes, global batch k is the next B*P rows and process p takes rows
    [p*B, (p+1)*B) of it, so the processes see disjoint rows and share one position.
    """

    def __init__(self, tokens: np.ndarray, *, batch_size: int, seq_len: int, eos_id: int,
                 seed: int, pack_documents: bool = True, process_index: int = 0,
                 process_count: int = 1):
        self.tokens = np.asarray(tokens, np.int32)
        self.batch_size, self.seq_len, self.eos_id = batch_size, seq_len, eos_id
        self.seed, self.pack_documents = seed, pack_documents
        self.process_index, self.process_count = process_index, process_count
        self.num_rows = (len(self.tokens) - 1) // seq_len
        if self.num_rows < 1:
            raise too_few_tokens("training", len(self.tokens), seq_len)
        self.epoch, self.index = 0, 0            # next global batch starts at row `index` of `epoch`
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)
        return self._perms[epoch]

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        B, P, T = self.batch_size, self.process_count, self.seq_len
        flat = self.epoch * self.num_rows + self.index + self.process_index * B + np.arange(B)
        rows = np.array([self._perm(int(f // self.num_rows))[f % self.num_rows] for f in flat])
        batch = pack_rows(self.tokens[rows[:, None] * T + np.arange(T + 1)], self.eos_id,
                          self.pack_documents)
        self.epoch, self.index = divmod(self.epoch * self.num_rows + self.index + B * P,
                                        self.num_rows)
        return batch

    def state(self) -> dict:
        return {"epoch": int(self.epoch), "index": int(self.index)}

    def restore(self, state: dict) -> None:
        epoch, index = state_ints(state, "epoch", "index")
        if not 0 <= index < self.num_rows:
            raise ValueError(f"data state {state} does not fit this data ({self.num_rows} rows of "
                             f"seq_len {self.seq_len}); did data or data.seq_len change since it was saved?")
        self.epoch, self.index = epoch, index


class ValBatches:
    """`val_batches(n)`: the same first n validation batches on every call (rows in order;
    the last batch wraps to the start to stay full). `bytes_per_token` turns a loss in
    nats/token into bits per byte: bpb = loss / ln 2 / bytes_per_token."""

    def __init__(self, tokens: np.ndarray, *, batch_size: int, seq_len: int, eos_id: int,
                 pack_documents: bool, bytes_per_token: float, process_index: int = 0,
                 process_count: int = 1, split: str = "documents"):
        self.tokens = np.asarray(tokens, np.int32)
        self.batch_size, self.seq_len, self.eos_id = batch_size, seq_len, eos_id
        self.pack_documents = pack_documents
        self.process_index, self.process_count = process_index, process_count
        self.bytes_per_token = bytes_per_token
        self.split = split                   # "documents" (by hash) or "tail" (last tokens)
        self.num_rows = (len(self.tokens) - 1) // seq_len
        if self.num_rows < 1:
            raise too_few_tokens("validation", len(self.tokens), seq_len)

    @property
    def max_batches(self) -> int:
        return math.ceil(self.num_rows / (self.batch_size * self.process_count))

    def __call__(self, num_batches: int) -> Iterator[Batch]:
        B, P, T = self.batch_size, self.process_count, self.seq_len
        for k in range(min(num_batches, self.max_batches)):
            rows = ((k * P + self.process_index) * B + np.arange(B)) % self.num_rows
            yield pack_rows(self.tokens[rows[:, None] * T + np.arange(T + 1)], self.eos_id,
                            self.pack_documents)


def state_ints(state: dict, *keys: str) -> list[int]:
    try:
        vals = [state[k] for k in keys]
    except (KeyError, TypeError):
        raise ValueError(f"data state {state!r} is not one this iterator saved "
                         f"(expected keys {', '.join(keys)})") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in vals):
        raise ValueError(f"data state {state!r}: {', '.join(keys)} must be non-negative integers")
    return vals
