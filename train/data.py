"""Data: documents -> tokens -> packed rows -> batches, deterministic and resumable.

Sources (`data.source`):
    builtin  the English prose that ships with Python (train/corpus.py); no download.
    text     local files, `data.path` = a file, a directory or a glob:
             .txt      one document per file (bytes that are not UTF-8 are replaced with
                       U+FFFD, with one warning naming the file);
             .jsonl    one JSON object per line, the document in `data.text_column`;
             .parquet  the document in column `data.text_column`.
    hf       `datasets.load_dataset(hf_path, hf_name, split=hf_split, streaming=True)`,
             e.g. Zyphra/Zyda (see ZYDA). With `data.path` set it is passed as `data_files`,
             so `hf_path: parquet, path: shards/*.parquet` streams local files the same way.
    cache    a tokenized, memory-mapped cache (`data.cache_dir`) written by
             `energy-attn data prepare`; see train/token_cache.py.

Validation split: by document, with a stable hash of the text (blake2b), so the same
document is held out on every run and machine, whatever the seed. Streams hold out the
first `val_max_docs` such documents. A text source too small to split by document (a
single file, as tinyshakespeare) holds out the last `val_fraction` of its tokens instead,
as nanoGPT does.

Packing: documents are tokenized and joined, each followed by EOS, into one token
stream. A row is seq_len + 1 consecutive tokens: inputs = row[:-1], targets = row[1:].
Within a row, `segment_ids` start at 1 and increase after every EOS, and `positions`
count from 0 at the row start and restart at 0 after every EOS, so attention can be kept
inside documents (with `pack_documents: false` they are all 1 and 0..T-1: attention
crosses documents, as in nanoGPT). A batch is a dict of int32 (B, T) numpy arrays:
inputs, targets, segment_ids, positions.

Resume: iterators expose `state()` (a small JSON-able dict) and `restore(state)`; after
a restore the next batch is exactly the one the uninterrupted iterator would have given.
"""
from __future__ import annotations

import glob as globlib
import hashlib
import json
import math
import warnings
import weakref
from collections import deque
from pathlib import Path
from typing import Iterator

import numpy as np

from train.config import DataConfig
from train.tokenizer import Tokenizer, build_tokenizer, offline_env

Batch = dict[str, np.ndarray]

# Zyda (Zyphra/Zyda): facts the loader relies on. Token counts in the paper use the
# GPT-NeoX tokenizer. Only a train split exists: validation is held out by hash.
ZYDA = {
    "hf_path": "Zyphra/Zyda",
    "splits": ("train",),
    "columns": ("text", "source", "filtering_features", "source_other"),
    "subsets": ("default", "zyda_no_starcoder", "zyda_arxiv_only", "zyda_c4-en_only",
                "zyda_peS2o_only", "zyda_pile-uncopyrighted_only", "zyda_refinedweb_only",
                "zyda_slimpajama_only", "zyda_starcoder_only"),
    "tokenizer": "EleutherAI/gpt-neox-20b",
}

TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")


class DataWarning(UserWarning):
    """Something in the data was repaired rather than rejected (e.g. non-UTF-8 bytes)."""


# =========================================================================== documents


def read_documents(path: str, text_column: str = "text") -> list[str]:
    """Documents from local files: a file, a directory (its .txt/.jsonl/.parquet files) or
    a glob. Files are read in sorted order; empty documents are dropped."""
    files = _resolve_files(path)
    docs: list[str] = []
    for f in files:
        suffix = f.suffix.lower()
        if suffix == ".txt":
            docs.append(_read_txt(f))
        elif suffix == ".jsonl":
            docs.extend(_read_jsonl(f, text_column))
        elif suffix == ".parquet":
            docs.extend(_read_parquet(f, text_column))
        else:
            raise ValueError(f"{f}: unsupported file type {suffix or '(none)'!r}; data.source=text "
                             f"reads {', '.join(TEXT_SUFFIXES)}")
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise ValueError(f"data.path={path!r}: no text ({len(files)} file(s), every document empty)")
    return docs


def _resolve_files(path: str) -> list[Path]:
    p = Path(path).expanduser()
    if globlib.has_magic(path):
        files = [Path(f) for f in sorted(globlib.glob(str(p), recursive=True)) if Path(f).is_file()]
        if not files:
            raise FileNotFoundError(f"data.path={path!r}: no files match this pattern")
        return files
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"data.path={path!r} is a directory with no "
                                    f"{'/'.join(TEXT_SUFFIXES)} files")
        return files
    if not p.exists():
        raise FileNotFoundError(f"data.path={path!r} does not exist (resolved to {p.resolve()})")
    return [p]


def _read_txt(f: Path) -> str:
    data = f.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        # Real corpora have stray Latin-1 bytes: keep the document, say so once per file.
        warnings.warn(f"{f}: not valid UTF-8 (first bad byte at offset {e.start}); undecodable "
                      "bytes were replaced with U+FFFD", DataWarning, stacklevel=3)
        return data.decode("utf-8", errors="replace")


def _read_jsonl(f: Path, column: str) -> list[str]:
    docs = []
    with open(f, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{f}:{lineno}: not a JSON object ({e.msg})") from None
            if not isinstance(row, dict) or column not in row:
                present = ", ".join(map(repr, row)) if isinstance(row, dict) else type(row).__name__
                raise ValueError(f"{f}:{lineno}: no text column {column!r} (data.text_column); "
                                 f"present: {present}")
            docs.append(_text_value(row[column], f"{f}:{lineno}", column))
    return docs


def _read_parquet(f: Path, column: str) -> list[str]:
    import pyarrow.parquet as pq
    names = pq.read_schema(f).names
    if column not in names:
        raise ValueError(f"{f}: no text column {column!r} (data.text_column); columns present: "
                         f"{', '.join(map(repr, names))}")
    values = pq.read_table(f, columns=[column]).column(column).to_pylist()
    return [_text_value(v, f"{f} row {i}", column) for i, v in enumerate(values)]


def _text_value(v, where: str, column: str) -> str:
    if v is None:
        return ""                          # a missing document: dropped as empty
    if not isinstance(v, str):
        raise ValueError(f"{where}: column {column!r} holds {type(v).__name__}, not text")
    return v


def open_hf_stream(cfg: DataConfig):
    """The streaming `datasets.IterableDataset` for `data.source=hf`, text column only.
    Hub or network failures become one RuntimeError sentence."""
    import datasets

    if cfg.hf_path == ZYDA["hf_path"] and cfg.hf_split not in ZYDA["splits"]:
        raise ValueError(f"data.hf_split={cfg.hf_split!r}: Zyda has only a 'train' split; the "
                         "validation set is held out from it by hash (data.val_fraction)")
    if cfg.path and cfg.hf_path in _PACKAGED_BUILDERS:   # local files: name a missing one ourselves
        _resolve_files(cfg.path)
    where = cfg.hf_path + (f"/{cfg.hf_name}" if cfg.hf_name else "")
    kwargs = {"data_files": cfg.path} if cfg.path else {}
    try:
        ds = datasets.load_dataset(cfg.hf_path, cfg.hf_name, split=cfg.hf_split, streaming=True,
                                   **kwargs)
    except ValueError as e:                        # bad config name, bad split: the user's to fix
        raise ValueError(f"could not open Hugging Face dataset {where!r}: {e}") from e
    except Exception as e:  # noqa: BLE001 -- ConnectionError, hub HTTP errors, DatasetNotFound...
        var = offline_env("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
        why = f"{var} is set" if var else f"{type(e).__name__}: {str(e)[:200]}"
        raise RuntimeError(
            f"could not open Hugging Face dataset {where!r} split {cfg.hf_split!r} (offline or "
            f"unreachable): {why}; use data.source: builtin or text (local .txt/.jsonl/.parquet "
            "files), or run where the hub is reachable") from e
    columns = ds.column_names
    if columns is not None:
        if cfg.text_column not in columns:
            raise ValueError(f"Hugging Face dataset {where!r} has no text column {cfg.text_column!r} "
                             f"(data.text_column); columns present: {', '.join(map(repr, columns))}")
        ds = ds.select_columns([cfg.text_column])   # skip decoding Zyda's metadata columns
    return ds


_PACKAGED_BUILDERS = ("parquet", "json", "text", "csv", "arrow")


def _row_text(row: dict, column: str) -> str:
    if column not in row:
        raise ValueError(f"streamed rows have no text column {column!r} (data.text_column); "
                         f"present: {', '.join(map(repr, row))}")
    return _text_value(row[column], "streamed row", column)


# =========================================================================== split + tokens


def is_validation(text: str, val_fraction: float) -> bool:
    """Stable by-document split: the blake2b hash of the text, read as a number in [0, 1).
    Identical documents always land on the same side."""
    h = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0 ** 64 < val_fraction


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


def _too_few_tokens(split: str, n_tokens: int, seq_len: int, extra: str = "",
                    at_most: int | None = None) -> ValueError:
    """`at_most`: the largest seq_len that works (default: what this split alone allows);
    below 1 the advice to shrink seq_len would be wrong, so the message says so."""
    at_most = n_tokens - 1 if at_most is None else at_most
    if at_most < 1:
        return ValueError(
            f"the {split} split has {_plural(n_tokens, 'token')}, too few for even one sequence "
            f"(seq_len=1 needs 2 tokens){extra}")
    return ValueError(
        f"the {split} split has {_plural(n_tokens, 'token')}, fewer than seq_len+1 = {seq_len + 1} "
        f"needed for one sequence; use a smaller data.seq_len (at most {at_most}){extra}")


def _tail_cut(num_tokens: int, val_fraction: float) -> int:
    """Tokens the tail split keeps for training (the rest, at the end, is validation)."""
    return int(round(num_tokens * (1 - val_fraction)))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _corpus_too_small(cfg: DataConfig, num_docs: int, num_tokens: int) -> ValueError:
    """No seq_len >= 1 gives both splits a sequence: say so, and what would help."""
    held_out = num_tokens - _tail_cut(num_tokens, cfg.val_fraction)
    hint = ""
    for pct in range(5, 100, 5):    # the smallest round val_fraction leaving 2 tokens a side
        cut = _tail_cut(num_tokens, pct / 100)
        if cut >= 2 and num_tokens - cut >= 2:
            if pct / 100 > cfg.val_fraction:
                hint = f" or raise data.val_fraction to {pct / 100:g}"
            break
    where = f"data.path={cfg.path!r}" if cfg.source == "text" else f"data.source={cfg.source}"
    return ValueError(
        f"{where} is too small to split into training and validation data: it has "
        f"{_plural(num_tokens, 'token')} ({_plural(num_docs, 'document')} plus "
        f"{'its EOS token' if num_docs == 1 else 'their EOS tokens'}, {cfg.tokenizer} tokenizer), "
        f"data.val_fraction={cfg.val_fraction} holds out "
        f"{held_out} of them, and each split needs at least 2 tokens for one sequence of "
        f"seq_len 1; use a larger corpus{hint}")


# =========================================================================== in-memory iterators


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
            raise _too_few_tokens("training", len(self.tokens), seq_len)
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
        epoch, index = _state_ints(state, "epoch", "index")
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
            raise _too_few_tokens("validation", len(self.tokens), seq_len)

    @property
    def max_batches(self) -> int:
        return math.ceil(self.num_rows / (self.batch_size * self.process_count))

    def __call__(self, num_batches: int) -> Iterator[Batch]:
        B, P, T = self.batch_size, self.process_count, self.seq_len
        for k in range(min(num_batches, self.max_batches)):
            rows = ((k * P + self.process_index) * B + np.arange(B)) % self.num_rows
            yield pack_rows(self.tokens[rows[:, None] * T + np.arange(T + 1)], self.eos_id,
                            self.pack_documents)


def _state_ints(state: dict, *keys: str) -> list[int]:
    try:
        vals = [state[k] for k in keys]
    except (KeyError, TypeError):
        raise ValueError(f"data state {state!r} is not one this iterator saved "
                         f"(expected keys {', '.join(keys)})") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in vals):
        raise ValueError(f"data state {state!r}: {', '.join(keys)} must be non-negative integers")
    return vals


# =========================================================================== streaming iterators


class StreamingBatchIterator:
    """Batches from a streamed Hugging Face dataset, forever (epoch after epoch).

    Each epoch iterates `ds.shuffle(seed, buffer_size)` with `set_epoch(epoch)`, after
    `split_dataset_by_node` when there are several processes. Validation documents (by
    hash) are skipped. The position is ours, not the dataset's (HF resume after shuffle is
    unreliable): {"epoch", "index": documents of this epoch's stream before the first
    unconsumed token, "offset": tokens of that document already consumed}. `restore`
    re-reads and discards `index` documents, which is exact because the shuffle is seeded.
    Each process has its own position: checkpoint one per process.
    """

    def __init__(self, ds, tokenizer: Tokenizer, *, batch_size: int, seq_len: int, seed: int,
                 text_column: str, val_fraction: float, shuffle_buffer: int,
                 pack_documents: bool = True, process_index: int = 0, process_count: int = 1):
        if process_count > 1:
            from datasets.distributed import split_dataset_by_node
            ds = split_dataset_by_node(ds, rank=process_index, world_size=process_count)
        self.ds = ds.shuffle(seed=seed, buffer_size=shuffle_buffer)
        self.tokenizer = tokenizer
        self.batch_size, self.seq_len, self.text_column = batch_size, seq_len, text_column
        self.val_fraction, self.pack_documents = val_fraction, pack_documents
        self.process_index, self.process_count = process_index, process_count
        self._reader = _Reader(self)
        self._start(epoch=0, index=0, offset=0)

    def _start(self, epoch: int, index: int, offset: int) -> None:
        self._pending: deque = deque()       # [epoch, doc index, tokens, consumed] of docs in hand
        self._open_epoch(epoch, index)
        self._skip_offset = offset           # tokens to drop from document `index` (resume)

    def _open_epoch(self, epoch: int, index: int = 0) -> None:
        self.epoch = epoch
        self._next_index = index             # index of the next document to pull
        self._first_index = index
        self._pulled = 0                     # training documents pulled in this pass
        self._skip_offset = 0
        self._reader.close()                 # the stream's iterator is opened on demand

    def _pull(self) -> bool:
        """Tokenize the next training document into `_pending`; False at the end of the epoch."""
        if self._reader.it is None:
            self.ds.set_epoch(self.epoch)
            docs = self._reader.open(self.ds)
            for _ in range(self._next_index):             # resume: re-read, don't tokenize
                if next(docs, None) is None:
                    raise ValueError(f"data state index {self._next_index} is past the end of the "
                                     f"stream (epoch {self.epoch}); did the dataset change?")
        for row in self._reader.it:
            i = self._next_index
            self._next_index += 1
            text = _row_text(row, self.text_column)
            if not text.strip() or is_validation(text, self.val_fraction):
                self._skip_offset = 0
                continue
            tokens = np.concatenate([self.tokenizer.encode_array(text),
                                     np.array([self.tokenizer.eos_id], np.int32)])
            self._pending.append([self.epoch, i, tokens, self._skip_offset])
            self._skip_offset = 0
            self._pulled += 1
            return True
        return False

    def _row(self) -> np.ndarray:
        T, need = self.seq_len, self.seq_len + 1
        while sum(len(t) - c for _, _, t, c in self._pending) < need:
            if self._pull():
                continue
            if self._first_index == 0 and self._pulled == 0:
                raise ValueError("the streamed training split has no documents (all empty or "
                                 "held out for validation)")
            self._open_epoch(self.epoch + 1)   # the tokens in hand carry over
        parts, have = [], 0
        for _, _, t, c in self._pending:
            parts.append(t[c:c + need - have])
            have += len(parts[-1])
            if have == need:
                break
        # Consume T tokens: the row's last token is the next row's first input.
        left = T
        while left:
            item = self._pending[0]
            take = min(left, len(item[2]) - item[3])
            item[3] += take
            left -= take
            if item[3] == len(item[2]):
                self._pending.popleft()
        return np.concatenate(parts)

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        rows = np.stack([self._row() for _ in range(self.batch_size)])
        return pack_rows(rows, self.tokenizer.eos_id, self.pack_documents)

    def state(self) -> dict:
        if self._pending:
            epoch, index, _, offset = self._pending[0]
        else:
            epoch, index, offset = self.epoch, self._next_index, self._skip_offset
        return {"epoch": int(epoch), "index": int(index), "offset": int(offset),
                "process": [self.process_index, self.process_count]}

    def restore(self, state: dict) -> None:
        epoch, index, offset = _state_ints(state, "epoch", "index", "offset")
        proc = state.get("process", [self.process_index, self.process_count])
        if list(proc) != [self.process_index, self.process_count]:
            raise ValueError(f"data state was saved by process {proc[0]} of {proc[1]}; this is "
                             f"process {self.process_index} of {self.process_count}")
        self._start(epoch, index, offset)


class _Reader:
    """The open iterator over a stream. Closed on `close()`, when its owner is collected,
    or at exit before interpreter teardown (otherwise `datasets` generators print
    'Exception ignored' tracebacks as the interpreter shuts down)."""

    def __init__(self, owner):
        self.it = None
        weakref.finalize(owner, self.close)      # holds the reader, not the owner

    def open(self, ds):
        self.close()
        self.it = iter(ds)
        return self.it

    def close(self) -> None:
        it, self.it = self.it, None
        if it is not None:
            try:
                it.close()
            except Exception:  # noqa: BLE001 -- closing must never fail a run
                pass


class StreamingValBatches:
    """Validation batches from a stream: the documents of the unshuffled, unsplit stream
    whose hash falls below val_fraction, at most `val_max_docs` of them, read lazily (only
    as many as the requested batches need) and kept in memory, so every call yields the
    same batches."""

    def __init__(self, ds, tokenizer: Tokenizer, *, batch_size: int, seq_len: int,
                 text_column: str, val_fraction: float, val_max_docs: int,
                 pack_documents: bool, process_index: int = 0, process_count: int = 1):
        self.ds, self.tokenizer = ds, tokenizer
        self.batch_size, self.seq_len, self.text_column = batch_size, seq_len, text_column
        self.val_fraction, self.val_max_docs = val_fraction, val_max_docs
        self.pack_documents = pack_documents
        self.process_index, self.process_count = process_index, process_count
        self._parts: list[np.ndarray] = []
        self._num_tokens = self._num_bytes = self._num_docs = 0
        self._reader = _Reader(self)
        self._exhausted = False

    @property
    def bytes_per_token(self) -> float | None:
        if not self._num_tokens:
            self._collect(self.seq_len + 1)
        return self._num_bytes / self._num_tokens if self._num_tokens else None

    def _collect(self, num_tokens: int) -> None:
        if self._reader.it is None and not self._exhausted:
            self._reader.open(self.ds)
        while self._num_tokens < num_tokens and not self._exhausted:
            row = next(self._reader.it, None)
            if row is None or self._num_docs >= self.val_max_docs:
                self._exhausted = True
                self._reader.close()
                break
            text = _row_text(row, self.text_column)
            if not text.strip() or not is_validation(text, self.val_fraction):
                continue
            toks = np.concatenate([self.tokenizer.encode_array(text),
                                   np.array([self.tokenizer.eos_id], np.int32)])
            self._parts.append(toks)
            self._num_tokens += len(toks)
            self._num_bytes += len(text.encode("utf-8", "replace"))
            self._num_docs += 1

    def check(self) -> None:
        """Read enough for one sequence now, so a too-small split fails at build time."""
        self._collect(self.seq_len + 1)
        if self._num_tokens < self.seq_len + 1:
            raise _too_few_tokens(
                "validation", self._num_tokens, self.seq_len,
                f" (or hold out more: {self._num_docs} documents found with data.val_fraction="
                f"{self.val_fraction}, data.val_max_docs={self.val_max_docs})")

    def __call__(self, num_batches: int) -> Iterator[Batch]:
        B, P, T = self.batch_size, self.process_count, self.seq_len
        self._collect(num_batches * B * P * T + 1)
        tokens = np.concatenate(self._parts) if self._parts else np.zeros(0, np.int32)
        num_rows = (len(tokens) - 1) // T
        if num_rows < 1:
            raise _too_few_tokens("validation", len(tokens), T)
        # Fewer rows than asked only when the held-out slice is complete: then wrapping is stable.
        for k in range(min(num_batches, math.ceil(num_rows / (B * P)))):
            rows = ((k * P + self.process_index) * B + np.arange(B)) % num_rows
            yield pack_rows(tokens[rows[:, None] * T + np.arange(T + 1)], self.tokenizer.eos_id,
                            self.pack_documents)


# =========================================================================== build


def build_data(cfg: DataConfig, *, batch_size: int, seed: int, process_index: int = 0,
               process_count: int = 1):
    """(tokenizer, train_iter, val_batches) for `cfg`.

    `batch_size` is the number of rows this process's batches hold (with several
    processes, pass the per-process share). `train_iter` is an endless iterator of batch
    dicts with `state()`/`restore()`; `val_batches(n)` yields the same n validation batches
    on every call and has `bytes_per_token`.
    """
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count})")
    if cfg.source == "hf":
        return _build_stream(cfg, batch_size, seed, process_index, process_count)
    if cfg.source == "cache":            # a tokenized, memory-mapped cache (train/token_cache.py)
        from train.token_cache import build_cache_data
        return build_cache_data(cfg, batch_size=batch_size, seed=seed,
                                process_index=process_index, process_count=process_count)
    if cfg.source == "builtin":
        from train.corpus import builtin_documents
        docs = builtin_documents()
    elif cfg.source == "text":
        if not cfg.path:
            raise ValueError("data.source=text needs data.path (a .txt/.jsonl/.parquet file, "
                             "directory or glob)")
        docs = read_documents(cfg.path, cfg.text_column)
    else:
        raise ValueError(f"data.source={cfg.source!r} is not one of 'builtin', 'text', 'hf', 'cache'")

    tokenizer = build_tokenizer(cfg.tokenizer, corpus_text="".join(docs) if cfg.tokenizer == "char"
                                else None)
    T, eos = cfg.seq_len, tokenizer.eos_id
    is_val = [is_validation(d, cfg.val_fraction) for d in docs]
    val_docs = [d for d, v in zip(docs, is_val) if v]
    train = tokenize_documents([d for d, v in zip(docs, is_val) if not v], tokenizer)
    val = tokenize_documents(val_docs, tokenizer)
    split = "documents"
    by_doc = min(len(train), len(val))        # tokens of the smaller by-document split
    if len(train) < T + 1 or len(val) < T + 1:
        # Too few documents to split by document (one file, say): hold out the tail instead.
        stream = tokenize_documents(docs, tokenizer)
        cut = _tail_cut(len(stream), cfg.val_fraction)
        train, val, split = stream[:cut], stream[cut:], "tail"
        num_bytes, num_tokens = sum(len(d.encode("utf-8", "replace")) for d in docs), len(stream)
    else:
        num_bytes, num_tokens = sum(len(d.encode("utf-8", "replace")) for d in val_docs), len(val)
    if len(train) < T + 1 or len(val) < T + 1:
        # The largest seq_len that works: by document if both splits allow it, else by tail
        # (which does not depend on seq_len), so advice to use at most this always works.
        at_most = max(by_doc, min(len(train), len(val))) - 1
        if at_most < 1:
            raise _corpus_too_small(cfg, len(docs), len(stream))
        name, toks = ("training", train) if len(train) < len(val) else ("validation", val)
        extra = f" ({_plural(len(docs), 'document')} in all"
        if by_doc - 1 == at_most > len(toks) - 1:
            extra += (f"; with seq_len at most {at_most} the split is by document "
                      f"({len(val_docs)} held out by hash) and each side has at least {by_doc} "
                      "tokens")
        raise _too_few_tokens(name, len(toks), T, extra + ")", at_most=at_most)
    train_iter = BatchIterator(train, batch_size=batch_size, seq_len=T, eos_id=eos, seed=seed,
                               pack_documents=cfg.pack_documents, process_index=process_index,
                               process_count=process_count)
    val_batches = ValBatches(val, batch_size=batch_size, seq_len=T, eos_id=eos,
                             pack_documents=cfg.pack_documents,
                             bytes_per_token=num_bytes / num_tokens, process_index=process_index,
                             process_count=process_count, split=split)
    return tokenizer, train_iter, val_batches


def _build_stream(cfg: DataConfig, batch_size, seed, process_index, process_count):
    if cfg.tokenizer == "char":
        raise ValueError("tokenizer: char builds its vocabulary from the whole corpus, which a "
                         "stream (data.source=hf) never holds; use tokenizer: byte or a Hugging "
                         "Face tokenizer name")
    if not cfg.hf_path:
        raise ValueError("data.source=hf needs data.hf_path (e.g. Zyphra/Zyda)")
    ds = open_hf_stream(cfg)
    tokenizer = build_tokenizer(cfg.tokenizer)
    common = dict(batch_size=batch_size, seq_len=cfg.seq_len, text_column=cfg.text_column,
                  val_fraction=cfg.val_fraction, pack_documents=cfg.pack_documents,
                  process_index=process_index, process_count=process_count)
    val_batches = StreamingValBatches(ds, tokenizer, val_max_docs=cfg.val_max_docs, **common)
    val_batches.check()
    train_iter = StreamingBatchIterator(ds, tokenizer, seed=seed, shuffle_buffer=cfg.shuffle_buffer,
                                        **common)
    return tokenizer, train_iter, val_batches
