"""Where documents come from: local files (.txt, .jsonl, .parquet), a streamed Hugging
Face dataset, and the stable by-document validation rule. Used by train/data/pipeline.py (batches
for training) and train/data/token_cache.py (`energy-attn data prepare`).

    docs = read_documents("shards/*.jsonl", text_column="text")
    ds = open_hf_stream(cfg.data)                  # datasets.IterableDataset, text column only
    is_validation(text, 0.05)                      # same answer on every run and machine
"""
from __future__ import annotations

import glob as globlib
import hashlib
import json
import warnings
from pathlib import Path

from train.config import DataConfig
from train.data.tokenizer import offline_env


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


def read_documents(path: str, text_column: str = "text") -> list[str]:
    """Documents from local files: a file, a directory (its .txt/.jsonl/.parquet files) or
    a glob. Files are read in sorted order; empty documents are dropped."""
    files = resolve_files(path)
    docs: list[str] = []
    for f in files:
        suffix = f.suffix.lower()
        if suffix == ".txt":
            docs.append(read_txt(f))
        elif suffix == ".jsonl":
            docs.extend(read_jsonl(f, text_column))
        elif suffix == ".parquet":
            docs.extend(read_parquet(f, text_column))
        else:
            raise ValueError(f"{f}: unsupported file type {suffix or '(none)'!r}; data.source=text "
                             f"reads {', '.join(TEXT_SUFFIXES)}")
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise ValueError(f"data.path={path!r}: no text ({len(files)} file(s), every document empty)")
    return docs


def resolve_files(path: str) -> list[Path]:
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


def read_txt(f: Path) -> str:
    data = f.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        # Real corpora have stray Latin-1 bytes: keep the document, say so once per file.
        warnings.warn(f"{f}: not valid UTF-8 (first bad byte at offset {e.start}); undecodable "
                      "bytes were replaced with U+FFFD", DataWarning, stacklevel=3)
        return data.decode("utf-8", errors="replace")


def read_jsonl(f: Path, column: str) -> list[str]:
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
            docs.append(text_value(row[column], f"{f}:{lineno}", column))
    return docs


def read_parquet(f: Path, column: str) -> list[str]:
    import pyarrow.parquet as pq
    names = pq.read_schema(f).names
    if column not in names:
        raise ValueError(f"{f}: no text column {column!r} (data.text_column); columns present: "
                         f"{', '.join(map(repr, names))}")
    values = pq.read_table(f, columns=[column]).column(column).to_pylist()
    return [text_value(v, f"{f} row {i}", column) for i, v in enumerate(values)]


def text_value(v, where: str, column: str) -> str:
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
    if cfg.path and cfg.hf_path in PACKAGED_BUILDERS:   # local files: name a missing one ourselves
        resolve_files(cfg.path)
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


PACKAGED_BUILDERS = ("parquet", "json", "text", "csv", "arrow")


def row_text(row: dict, column: str) -> str:
    if column not in row:
        raise ValueError(f"streamed rows have no text column {column!r} (data.text_column); "
                         f"present: {', '.join(map(repr, row))}")
    return text_value(row[column], "streamed row", column)


def is_validation(text: str, val_fraction: float) -> bool:
    """Stable by-document split: the blake2b hash of the text, read as a number in [0, 1).
    Identical documents always land on the same side."""
    h = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0 ** 64 < val_fraction
