"""Data: documents -> tokens -> packed rows -> batches, deterministic and resumable.

Sources (`data.source`):
    builtin  the English prose that ships with Python (train/data/corpus.py); no download.
    text     local files, `data.path` = a file, a directory or a glob:
             .txt      one document per file (bytes that are not UTF-8 are replaced with
                       U+FFFD, with one warning naming the file);
             .jsonl    one JSON object per line, the document in `data.text_column`;
             .parquet  the document in column `data.text_column`.
    hf       `datasets.load_dataset(hf_path, hf_name, split=hf_split, streaming=True)`,
             e.g. Zyphra/Zyda (see ZYDA). With `data.path` set it is passed as `data_files`,
             so `hf_path: parquet, path: shards/*.parquet` streams local files the same way.
    cache    a tokenized, memory-mapped cache (`data.cache_dir`) written by
             `energy-attn data prepare`; see train/data/token_cache.py.

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

import math
import weakref
from collections import deque
from typing import Iterator

import numpy as np

from train.data.batching import (Batch, BatchIterator, ValBatches, pack_rows, plural, state_ints,  # noqa: F401
                            too_few_tokens, tokenize_documents)
from train.config import DataConfig
from train.data.sources import (TEXT_SUFFIXES, ZYDA, DataWarning, is_validation, open_hf_stream,  # noqa: F401
                           read_documents, row_text)
from train.data.token_cache import build_cache_data
from train.data.tokenizer import Tokenizer, build_tokenizer


def _tail_cut(num_tokens: int, val_fraction: float) -> int:
    """Tokens the tail split keeps for training (the rest, at the end, is validation)."""
    return int(round(num_tokens * (1 - val_fraction)))


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
        f"{plural(num_tokens, 'token')} ({plural(num_docs, 'document')} plus "
        f"{'its EOS token' if num_docs == 1 else 'their EOS tokens'}, {cfg.tokenizer} tokenizer), "
        f"data.val_fraction={cfg.val_fraction} holds out "
        f"{held_out} of them, and each split needs at least 2 tokens for one sequence of "
        f"seq_len 1; use a larger corpus{hint}")


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
            text = row_text(row, self.text_column)
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
        epoch, index, offset = state_ints(state, "epoch", "index", "offset")
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
            text = row_text(row, self.text_column)
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
            raise too_few_tokens(
                "validation", self._num_tokens, self.seq_len,
                f" (or hold out more: {self._num_docs} documents found with data.val_fraction="
                f"{self.val_fraction}, data.val_max_docs={self.val_max_docs})")

    def __call__(self, num_batches: int) -> Iterator[Batch]:
        B, P, T = self.batch_size, self.process_count, self.seq_len
        self._collect(num_batches * B * P * T + 1)
        tokens = np.concatenate(self._parts) if self._parts else np.zeros(0, np.int32)
        num_rows = (len(tokens) - 1) // T
        if num_rows < 1:
            raise too_few_tokens("validation", len(tokens), T)
        # Fewer rows than asked only when the held-out slice is complete: then wrapping is stable.
        for k in range(min(num_batches, math.ceil(num_rows / (B * P)))):
            rows = ((k * P + self.process_index) * B + np.arange(B)) % num_rows
            yield pack_rows(tokens[rows[:, None] * T + np.arange(T + 1)], self.tokenizer.eos_id,
                            self.pack_documents)


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
    if cfg.source == "cache":            # a tokenized, memory-mapped cache (train/data/token_cache.py)
        return build_cache_data(cfg, batch_size=batch_size, seed=seed,
                                process_index=process_index, process_count=process_count)
    if cfg.source == "builtin":
        from train.data.corpus import builtin_documents
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
        extra = f" ({plural(len(docs), 'document')} in all"
        if by_doc - 1 == at_most > len(toks) - 1:
            extra += (f"; with seq_len at most {at_most} the split is by document "
                      f"({len(val_docs)} held out by hash) and each side has at least {by_doc} "
                      "tokens")
        raise too_few_tokens(name, len(toks), T, extra + ")", at_most=at_most)
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
