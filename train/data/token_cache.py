"""Tokenized data cache: tokenize a corpus once, train from a memory-mapped file offline.

    energy-attn data prepare --source text --path 'zyda/*.parquet' \\
        --tokenizer EleutherAI/gpt-neox-20b --out data/zyda_arxiv
    energy-attn train configs/zyda_small.yaml data.source=cache data.cache_dir=data/zyda_arxiv

    cache = TokenCache("data/zyda_arxiv")          # or from Python
    cache.document("val", 0)                       # token ids of the first held-out document

A cache directory holds, per split (train, val):
    <split>.bin        every document's tokens followed by EOS, back to back (uint16 when the
                       vocabulary has < 65536 ids, else uint32), read with np.memmap;
    <split>_docs.npy   int64 offsets (n_docs + 1): document i is tokens[off[i]:off[i+1]];
and header.json (format, dtype, tokenizer spec, counts, split rule, source), plus
tokenizer.json for a Hugging Face tokenizer, so training needs no network.

The validation split is pipeline.py's `is_validation` hash rule, so a cache holds out the
same documents as `data.source: text|hf` with the same val_fraction (streams: the first
val_max_docs of them). A corpus with no document hashed to validation (a single file, as
tinyshakespeare) holds out the last val_fraction of its tokens instead ("tail").

Training reads it through `CacheBatchIterator`: the in-memory BatchIterator's rows and
epoch permutations over a memmap, so batches are random access, deterministic given the
seed, and resume instantly from the state {"epoch", "index"} (no replay).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from train.config import DataConfig
from train.data.batching import BatchIterator, ValBatches, too_few_tokens
from train.data.sources import is_validation, open_hf_stream, read_jsonl, read_txt, resolve_files, text_value
from train.data.tokenizer import ByteTokenizer, CharTokenizer, HFTokenizer, Tokenizer, build_tokenizer

FORMAT, VERSION = "energy-attn-token-cache", 1
SPLITS = ("train", "val")


# =========================================================================== documents


def iter_documents(cfg: DataConfig) -> Iterator[str]:
    """Documents of `cfg` in a fixed order, streamed: builtin, local files (parquet read in
    record batches, never whole) or a Hugging Face stream (unshuffled)."""
    if cfg.source == "builtin":
        from train.data.corpus import builtin_documents
        yield from builtin_documents()
    elif cfg.source == "text":
        if not cfg.path:
            raise ValueError("--source text needs --path (a .txt/.jsonl/.parquet file, directory or glob)")
        for f in resolve_files(cfg.path):
            suffix = f.suffix.lower()
            if suffix == ".txt":
                yield read_txt(f)
            elif suffix == ".jsonl":
                yield from read_jsonl(f, cfg.text_column)
            elif suffix == ".parquet":
                yield from _iter_parquet(f, cfg.text_column)
            else:
                raise ValueError(f"{f}: unsupported file type {suffix or '(none)'!r}; "
                                 "use .txt, .jsonl or .parquet")
    elif cfg.source == "hf":
        if not cfg.hf_path:
            raise ValueError("--source hf needs --hf-path (e.g. Zyphra/Zyda)")
        for row in open_hf_stream(cfg):
            yield text_value(row.get(cfg.text_column), "streamed row", cfg.text_column)
    else:
        raise ValueError(f"source {cfg.source!r} is not one of 'builtin', 'text', 'hf'")


def _iter_parquet(f: Path, column: str) -> Iterator[str]:
    import pyarrow.parquet as pq
    pf = pq.ParquetFile(f)
    if column not in pf.schema_arrow.names:
        raise ValueError(f"{f}: no text column {column!r} (--text-column); columns present: "
                         f"{', '.join(map(repr, pf.schema_arrow.names))}")
    row = 0
    for batch in pf.iter_batches(columns=[column], batch_size=1024):
        for v in batch.column(0).to_pylist():
            yield text_value(v, f"{f} row {row}", column)
            row += 1


def _encode_many(tokenizer: Tokenizer, texts: list[str]) -> list[np.ndarray]:
    # Hugging Face tokenizers encode a batch on all cores (Rust threads); others one by one.
    hf = getattr(tokenizer, "_tok", None)
    if isinstance(tokenizer, HFTokenizer) and hf is not None:
        return [np.asarray(e.ids, np.int64) for e in hf.encode_batch(texts, add_special_tokens=False)]
    return [tokenizer.encode_array(t) for t in texts]


# =========================================================================== writing


class _SplitWriter:
    def __init__(self, folder: Path, split: str, dtype):
        self.file = open(folder / f"{split}.bin", "wb")
        self.dtype, self.offsets, self.bytes = dtype, [0], 0

    def add(self, ids: np.ndarray, eos: int, num_bytes: int) -> None:
        self.file.write(np.append(ids, eos).astype(self.dtype).tobytes())
        self.offsets.append(self.offsets[-1] + len(ids) + 1)
        self.bytes += num_bytes

    @property
    def tokens(self) -> int:
        return self.offsets[-1]


def token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 65536 else "uint32"


def tokenizer_spec(tokenizer: Tokenizer) -> dict:
    spec = {"name": tokenizer.name, "vocab_size": int(tokenizer.vocab_size),
            "eos_id": int(tokenizer.eos_id)}
    if isinstance(tokenizer, CharTokenizer):
        spec["vocab"] = tokenizer.to_dict()
    return spec


def prepare(docs: Iterable[str], tokenizer: Tokenizer, out: str | Path, *, val_fraction: float,
            val_max_docs: int | None = None, source: dict | None = None,
            max_docs: int | None = None, max_tokens: int | None = None, overwrite: bool = False,
            log=print, log_every_s: float = 2.0, chunk: int = 256) -> dict:
    """Tokenize `docs` into a cache at `out`; return its header.

    Documents hashed to validation (`is_validation`) go to the val split, at most
    `val_max_docs` of them (the rest are dropped, never trained on); empty ones are skipped.
    Stops after `max_docs` documents or `max_tokens` training tokens. The cache is written to
    `<out>.partial` and renamed at the end, so a killed prepare leaves no half cache."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    out = Path(out)
    not_empty = out.is_file() or (out.is_dir() and any(out.iterdir()))
    if not_empty and not overwrite:
        raise FileExistsError(f"--out {str(out)!r} already exists and is not empty; pick "
                                  "another directory or pass --overwrite")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    dtype = token_dtype(tokenizer.vocab_size)
    writers = {s: _SplitWriter(tmp, s, dtype) for s in SPLITS}
    eos, seen, dropped_val = tokenizer.eos_id, 0, 0
    t0 = last = time.perf_counter()
    docs = iter(docs)
    try:
        done = False
        while not done:
            texts = []
            for text in docs:
                if text.strip():
                    texts.append(text)
                if len(texts) == chunk:
                    break
            if not texts:
                break
            for text, ids in zip(texts, _encode_many(tokenizer, texts)):
                split = "val" if is_validation(text, val_fraction) else "train"
                if split == "val" and val_max_docs is not None and \
                        len(writers["val"].offsets) > val_max_docs:
                    dropped_val += 1
                else:
                    writers[split].add(ids, eos, len(text.encode("utf-8", "replace")))
                seen += 1
                if (max_docs and seen >= max_docs) or (max_tokens and writers["train"].tokens >= max_tokens):
                    done = True
                    break
            now = time.perf_counter()
            if now - last >= log_every_s:
                last = now
                log(_progress(seen, writers, now - t0))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)        # e.g. a missing file or Ctrl-C: no debris
        raise
    finally:
        for w in writers.values():
            w.file.close()
    elapsed = time.perf_counter() - t0
    split_rule = "documents"
    if writers["val"].tokens == 0:
        if writers["train"].tokens < 2:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ValueError(f"no text to cache ({seen} non-empty documents)")
        _tail_split(tmp, writers, val_fraction)
        split_rule = "tail"
    for s, w in writers.items():
        np.save(tmp / f"{s}_docs.npy", np.asarray(w.offsets, np.int64))
    if isinstance(tokenizer, HFTokenizer):
        tokenizer._tok.save(str(tmp / "tokenizer.json"))      # train offline from the cache
    header = {
        "format": FORMAT, "version": VERSION, "dtype": dtype,
        "tokenizer": tokenizer_spec(tokenizer),
        "splits": {s: {"tokens": w.tokens, "documents": len(w.offsets) - 1, "bytes": w.bytes}
                   for s, w in writers.items()},
        "val": {"rule": split_rule, "val_fraction": val_fraction, "val_max_docs": val_max_docs,
                "dropped_val_documents": dropped_val},
        "source": source or {},
        "documents_read": seen,
        "prepare_seconds": round(elapsed, 3),
        "write_tokens_per_s": round((writers["train"].tokens + writers["val"].tokens) / max(elapsed, 1e-9)),
    }
    (tmp / "header.json").write_text(json.dumps(header, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    tmp.rename(out)
    log(_progress(seen, writers, elapsed) + f"; wrote {out}")
    return header


def _progress(seen: int, writers: dict, elapsed: float) -> str:
    tokens = writers["train"].tokens + writers["val"].tokens
    return (f"docs {seen:,} ({len(writers['val'].offsets) - 1:,} val), tokens {tokens:,} "
            f"({writers['val'].tokens:,} val), {tokens / max(elapsed, 1e-9):,.0f} tok/s")


def _tail_split(folder: Path, writers: dict, val_fraction: float) -> None:
    """No validation document: move the last val_fraction of the training tokens to val."""
    train, val = writers["train"], writers["val"]
    tokens = np.fromfile(folder / "train.bin", dtype=train.dtype)
    cut = max(1, min(len(tokens) - 1, int(round(len(tokens) * (1 - val_fraction)))))
    tokens[:cut].tofile(folder / "train.bin")
    tokens[cut:].tofile(folder / "val.bin")
    bytes_per_token = train.bytes / len(tokens)
    val.offsets, val.bytes = [0, len(tokens) - cut], round(bytes_per_token * (len(tokens) - cut))
    train.offsets = [o for o in train.offsets if o < cut] + [cut]
    train.bytes -= val.bytes


def prepare_from_config(cfg: DataConfig, out: str | Path, *, max_docs: int | None = None,
                        max_tokens: int | None = None, overwrite: bool = False, log=print) -> dict:
    """`prepare` for a data section: its source, tokenizer and validation settings."""
    if cfg.source == "cache":
        raise ValueError("--source cache: a cache is prepared from builtin, text or hf")
    docs = iter_documents(cfg)
    corpus = None
    if cfg.tokenizer == "char":           # the vocabulary needs the whole corpus first
        if cfg.source == "hf":
            raise ValueError("tokenizer char builds its vocabulary from the whole corpus, which a "
                             "stream never holds; use byte or a Hugging Face tokenizer name")
        docs = list(docs)
        corpus = "".join(docs)
    tokenizer = build_tokenizer(cfg.tokenizer, corpus_text=corpus)
    keys = {"builtin": (), "text": ("path", "text_column"),
            "hf": ("hf_path", "hf_name", "hf_split", "path", "text_column")}[cfg.source]
    source = {"source": cfg.source, **{k: getattr(cfg, k) for k in keys if getattr(cfg, k) is not None}}
    return prepare(docs, tokenizer, out, val_fraction=cfg.val_fraction,
                   val_max_docs=cfg.val_max_docs if cfg.source == "hf" else None, source=source,
                   max_docs=max_docs, max_tokens=max_tokens, overwrite=overwrite, log=log)


# =========================================================================== reading


class TokenCache:
    """A prepared cache, checked on open: `tokens(split)` (memmap), `offsets(split)`,
    `document(split, i)`, `tokenizer(name)` and the `header` dict."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        hint = f"create it with `energy-attn data prepare ... --out {path}`"
        if not self.path.is_dir():
            raise FileNotFoundError(f"data.cache_dir={str(path)!r} does not exist or is not a "
                                    f"directory; {hint}")
        head = self.path / "header.json"
        if not head.is_file():
            raise ValueError(f"data.cache_dir={str(path)!r} is not a token cache (no header.json); {hint}")
        try:
            h = json.loads(head.read_text())
            ok = (h["format"] == FORMAT and h["dtype"] in ("uint16", "uint32")
                  and all(isinstance(h["splits"][s]["tokens"], int) for s in SPLITS)
                  and isinstance(h["tokenizer"]["name"], str))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{head} is corrupt ({type(e).__name__}: {str(e)[:100]}); re-create "
                             "the cache with `energy-attn data prepare`") from None
        if not ok:
            raise ValueError(f"{head} is not an {FORMAT} header; re-create the cache with "
                             "`energy-attn data prepare`")
        if h.get("version") != VERSION:
            raise ValueError(f"{head} has cache format version {h.get('version')}; this code "
                             f"reads version {VERSION}; re-create the cache")
        self.header, self.dtype = h, np.dtype(h["dtype"])
        self._tokens = {}
        for s in SPLITS:
            f = self.path / f"{s}.bin"
            want = h["splits"][s]["tokens"]
            have = f.stat().st_size // self.dtype.itemsize if f.is_file() else None
            if have != want:
                raise ValueError(f"{f} holds {have if have is not None else 'no'} tokens, header.json "
                                 f"says {want}: the cache is incomplete or corrupt; re-create it")
            self._tokens[s] = np.memmap(f, dtype=self.dtype, mode="r") if want else \
                np.zeros(0, self.dtype)

    def tokens(self, split: str) -> np.ndarray:
        return self._tokens[split]

    def offsets(self, split: str) -> np.ndarray:
        return np.load(self.path / f"{split}_docs.npy", mmap_mode="r")

    def document(self, split: str, i: int) -> np.ndarray:
        off = self.offsets(split)
        return np.asarray(self._tokens[split][off[i]:off[i + 1]], np.int32)

    def tokenizer(self, name: str) -> Tokenizer:
        """The cache's tokenizer, if `name` (data.tokenizer) is the one it was prepared with."""
        spec = self.header["tokenizer"]
        if name != spec["name"]:
            raise ValueError(f"data.tokenizer={name!r} does not match the tokenizer the cache "
                             f"{str(self.path)!r} was prepared with ({spec['name']!r}); set "
                             f"data.tokenizer={spec['name']} or prepare a new cache")
        if name == "byte":
            tok = ByteTokenizer()
        elif name == "char":
            tok = CharTokenizer.from_dict(spec.get("vocab"))
        elif (self.path / "tokenizer.json").is_file():
            tok = HFTokenizer(str(self.path / "tokenizer.json"))
            tok.name = name
        else:
            tok = build_tokenizer(name)
        if (tok.vocab_size, tok.eos_id) != (spec["vocab_size"], spec["eos_id"]):
            raise ValueError(f"tokenizer {name!r} now has vocab {tok.vocab_size} / EOS {tok.eos_id}, "
                             f"the cache was written with {spec['vocab_size']} / {spec['eos_id']}; "
                             "prepare a new cache")
        return tok


class CacheBatchIterator(BatchIterator):
    """BatchIterator over a memmapped token array: rows of seq_len+1 tokens at multiples of
    seq_len, a seeded permutation per epoch; only the rows of a batch are read from disk."""

    def __init__(self, tokens: np.ndarray, *, batch_size: int, seq_len: int, eos_id: int,
                 seed: int, pack_documents: bool = True, process_index: int = 0,
                 process_count: int = 1):
        self.tokens = tokens                     # not copied to int32: it may be gigabytes
        self.batch_size, self.seq_len, self.eos_id = batch_size, seq_len, eos_id
        self.seed, self.pack_documents = seed, pack_documents
        self.process_index, self.process_count = process_index, process_count
        self.num_rows = (len(tokens) - 1) // seq_len
        if self.num_rows < 1:
            raise too_few_tokens("training", len(tokens), seq_len)
        self.epoch, self.index = 0, 0
        self._perms = {}


def build_cache_data(cfg: DataConfig, *, batch_size: int, seed: int, process_index: int = 0,
                     process_count: int = 1):
    """(tokenizer, train_iter, val_batches) for `data.source: cache` (see data.build_data)."""
    if not cfg.cache_dir:
        raise ValueError("data.source=cache needs data.cache_dir (a directory written by "
                         "`energy-attn data prepare`)")
    cache = TokenCache(cfg.cache_dir)
    tok = cache.tokenizer(cfg.tokenizer)
    T = cfg.seq_len
    train = CacheBatchIterator(cache.tokens("train"), batch_size=batch_size, seq_len=T,
                               eos_id=tok.eos_id, seed=seed, pack_documents=cfg.pack_documents,
                               process_index=process_index, process_count=process_count)
    val_info = cache.header["splits"]["val"]
    if val_info["tokens"] < T + 1:
        raise too_few_tokens("validation", val_info["tokens"], T,
                              f" (the cache {cfg.cache_dir!r} holds {val_info['documents']} "
                              "validation documents)")
    val = ValBatches(cache.tokens("val"), batch_size=batch_size, seq_len=T, eos_id=tok.eos_id,
                     pack_documents=cfg.pack_documents,
                     bytes_per_token=val_info["bytes"] / val_info["tokens"],
                     process_index=process_index, process_count=process_count,
                     split=cache.header["val"]["rule"])
    return tok, train, val
