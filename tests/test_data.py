"""Data pipeline: corpus, tokenizers, packing, split, determinism, resume, streaming
(on local parquet in Zyda's schema), and the error messages for bad input."""
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import types

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from train.config import DataConfig
from train.data.corpus import builtin_documents
from train.data.pipeline import (DataWarning, ZYDA, build_data, is_validation, pack_rows,
                        read_documents)
from train.data.tokenizer import ByteTokenizer, CharTokenizer, build_tokenizer

WORDS = ("the energy of attention is a log partition function whose gradient with respect "
         "to a source term gives the output of every query over all keys and values").split()


def _text(rng, n_words):
    return " ".join(rng.choice(WORDS, n_words))


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _differ(a, b):
    return any(not np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(a, b))


@pytest.fixture(autouse=True)
def _no_thread_shutdown_sleep(monkeypatch):
    # `datasets` sleeps 5 s whenever a shuffled multi-shard parquet stream is closed
    # (a workaround for apache/arrow#45214); tests close many. Timing only.
    import datasets
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0.01)


@pytest.fixture(scope="module")
def small_txt(tmp_path_factory):
    """One small .txt file (so the split falls back to the tail, and epochs are short)."""
    path = tmp_path_factory.mktemp("txt") / "small.txt"
    path.write_text(_text(np.random.default_rng(0), 200) + "\nnaïve café — ünïcödé\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def many_txt(tmp_path_factory):
    """60 small documents, one per file: enough to split by document."""
    d = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(1)
    for i in range(60):
        (d / f"doc{i:03d}.txt").write_text(f"doc-{i:05d}: " + _text(rng, int(rng.integers(20, 80))))
    return d


@pytest.fixture(scope="module")
def zyda_parquet(tmp_path_factory):
    """3 parquet shards in Zyda's exact schema; doc i's text starts with 'doc-{i:05d}:'."""
    d = tmp_path_factory.mktemp("zyda")
    rng = np.random.default_rng(2)
    i = 0
    for shard in range(3):
        texts = []
        for _ in range(40):
            texts.append(f"doc-{i:05d}: " + _text(rng, int(rng.integers(3, 25))))
            i += 1
        table = pa.table({
            "text": texts,
            "source": ["arxiv"] * len(texts),
            "filtering_features": [json.dumps({"num_words": len(t.split())}) for t in texts],
            "source_other": [json.dumps({"id": f"arxiv-{k}"}) for k in range(len(texts))],
        })
        pq.write_table(table, d / f"train-{shard:05d}-of-00003.parquet")
    return d


def _hf_cfg(zyda_parquet, **kw):
    base = dict(source="hf", hf_path="parquet", path=str(zyda_parquet / "*.parquet"),
                tokenizer="byte", seq_len=32, val_fraction=0.2, val_max_docs=50, shuffle_buffer=16)
    return DataConfig(**{**base, **kw})


def _doc_ids(batches, tok):
    """IDs of documents whose 'doc-NNNNN:' tag appears whole in some row."""
    ids = set()
    for b in batches:
        for row in b["inputs"]:
            ids.update(int(m) for m in re.findall(r"doc-(\d{5}):", tok.decode(row)))
    return ids


# ------------------------------------------------------------------ built-in corpus


def test_builtin_corpus_is_real_text_and_deterministic():
    docs = builtin_documents()
    assert builtin_documents() is docs                 # cached in-process
    assert len(docs) > 100 and all(isinstance(d, str) and d.strip() for d in docs)
    size = sum(len(d.encode()) for d in docs)
    assert size > 1_000_000
    assert any("for_stmt" in d or "The \"for\" statement" in d for d in docs)   # pydoc topics
    digest = hashlib.sha256("\0".join(docs).encode()).hexdigest()
    # Another process, another hash seed (set/dict order), same corpus.
    code = ("import hashlib; from train.data.corpus import builtin_documents as b; "
            "print(hashlib.sha256('\\0'.join(b()).encode()).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert out.stdout.strip() == digest               # and it printed nothing else
    assert out.stderr == ""


# ------------------------------------------------------------------ tokenizers


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    text = "héllo wörld — 日本語 🎉 \n\t\x00"
    ids = tok.encode(text)
    assert max(ids) < 256 and tok.vocab_size == 257 and tok.eos_id == 256
    assert tok.decode(ids) == text
    assert tok.decode([tok.eos_id] + ids + [tok.eos_id]) == text     # EOS is dropped
    np.testing.assert_array_equal(tok.encode_array(text), ids)
    assert tok.decode([0xE6, 0x97]) == "\ufffd"                     # cut UTF-8: replaced, no error


def test_char_tokenizer_save_restore_and_unknown_char():
    tok = build_tokenizer("char", corpus_text="hello world")
    assert tok.vocab_size == len(set("hello world")) + 1 and tok.eos_id == tok.vocab_size - 1
    assert tok.decode(tok.encode("low hold") + [tok.eos_id]) == "low hold"
    again = CharTokenizer.from_dict(json.loads(json.dumps(tok.to_dict())))
    assert again.encode("hello") == tok.encode("hello") and again.vocab_size == tok.vocab_size
    with pytest.raises(ValueError, match=r"character 'Z' \(U\+005A\) is not in the character vocabulary"):
        tok.encode("hello Zoe")
    with pytest.raises(ValueError, match="corpus_text"):
        build_tokenizer("char")
    with pytest.raises(ValueError, match="not a saved character vocabulary"):
        CharTokenizer.from_dict({"type": "byte"})


def test_hf_tokenizer_offline_is_one_clear_error():
    t0 = time.perf_counter()
    # Without the `tokenizers` package: ImportError saying what to install; with it: the hub error.
    with pytest.raises((RuntimeError, ImportError), match="EleutherAI/gpt-neox-20b"):
        build_tokenizer("EleutherAI/gpt-neox-20b")
    assert time.perf_counter() - t0 < 10


def test_hf_tokenizer_hub_failure_message(monkeypatch):
    class LocalEntryNotFoundError(FileNotFoundError):
        pass

    class FakeTokenizer:
        @staticmethod
        def from_pretrained(name):
            raise LocalEntryNotFoundError("cannot find the requested files in the local cache")

    monkeypatch.setitem(sys.modules, "tokenizers", types.SimpleNamespace(Tokenizer=FakeTokenizer))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match=r"could not load tokenizer 'EleutherAI/gpt-neox-20b' from "
                       r"the Hugging Face hub \(offline or unreachable\): HF_HUB_OFFLINE is set; use "
                       r"tokenizer: byte or char, or run where the hub is reachable"):
        build_tokenizer("EleutherAI/gpt-neox-20b")
    monkeypatch.setitem(sys.modules, "tokenizers", None)            # not installed
    with pytest.raises(ImportError, match="pip install tokenizers"):
        build_tokenizer("EleutherAI/gpt-neox-20b")


def test_hf_tokenizer_from_local_json(tmp_path):
    import tokenizers                                       # a project dependency
    from tokenizers import decoders, models, pre_tokenizers, trainers
    tk = tokenizers.Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator([" ".join(WORDS)] * 20, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tk.save(str(tmp_path / "tokenizer.json"))
    tok = build_tokenizer(str(tmp_path / "tokenizer.json"))
    assert tok.eos_id == 0 and tok.decode(tok.encode("the energy") + [tok.eos_id]) == "the energy"


# ------------------------------------------------------------------ packing


def test_pack_rows_known_example():
    E = 9
    rows = np.array([[1, 2, E, 3, 4, E, E, 5, 6]])
    b = pack_rows(rows, E)
    np.testing.assert_array_equal(b["inputs"], [[1, 2, E, 3, 4, E, E, 5]])
    np.testing.assert_array_equal(b["targets"], [[2, E, 3, 4, E, E, 5, 6]])
    np.testing.assert_array_equal(b["segment_ids"], [[1, 1, 1, 2, 2, 2, 3, 4]])
    np.testing.assert_array_equal(b["positions"], [[0, 1, 2, 0, 1, 2, 0, 0]])
    flat = pack_rows(rows, E, pack_documents=False)
    np.testing.assert_array_equal(flat["segment_ids"], np.ones((1, 8)))
    np.testing.assert_array_equal(flat["positions"], [np.arange(8)])


def test_packing_invariants_on_builtin():
    tok, it, _ = build_data(DataConfig(seq_len=512), batch_size=8, seed=0)
    batches = _take(it, 4)
    eos = tok.eos_id
    assert any((b["inputs"] == eos).any() for b in batches)
    for b in batches:
        assert all(v.shape == (8, 512) and v.dtype == np.int32 for v in b.values())
        np.testing.assert_array_equal(b["targets"][:, :-1], b["inputs"][:, 1:])
        x, seg, pos = b["inputs"], b["segment_ids"], b["positions"]
        assert (seg[:, 0] == 1).all() and (pos[:, 0] == 0).all()
        after = x[:, :-1] == eos
        np.testing.assert_array_equal(seg[:, 1:], seg[:, :-1] + after)
        np.testing.assert_array_equal(pos[:, 1:], np.where(after, 0, pos[:, :-1] + 1))


# ------------------------------------------------------------------ determinism + resume


def test_same_seed_same_batches_different_seed_different():
    cfg = DataConfig(seq_len=64)
    a = _take(build_data(cfg, batch_size=4, seed=3)[1], 5)
    b = _take(build_data(cfg, batch_size=4, seed=3)[1], 5)
    c = _take(build_data(cfg, batch_size=4, seed=4)[1], 5)
    _assert_same(a, b)
    assert _differ(a, c)


@pytest.mark.parametrize("source", ["builtin", "txt"])
def test_resume_gives_the_uninterrupted_batches(source, small_txt):
    cfg = (DataConfig(seq_len=64) if source == "builtin" else
           DataConfig(source="text", path=str(small_txt), seq_len=16, val_fraction=0.1))
    ref = build_data(cfg, batch_size=8, seed=0)[1]
    uninterrupted = _take(ref, 12)
    if source == "txt":
        assert ref.state()["epoch"] >= 1          # the tiny file: resume across an epoch boundary
    it = build_data(cfg, batch_size=8, seed=0)[1]
    _take(it, 7)
    state = json.loads(json.dumps(it.state()))  # what a checkpoint stores
    assert set(state) == {"epoch", "index"}
    fresh = build_data(cfg, batch_size=8, seed=0)[1]
    fresh.restore(state)
    _assert_same(_take(fresh, 5), uninterrupted[7:])


def test_restore_rejects_foreign_state():
    it = build_data(DataConfig(seq_len=64), batch_size=2, seed=0)[1]
    with pytest.raises(ValueError, match="expected keys epoch, index"):
        it.restore({"step": 3})
    with pytest.raises(ValueError, match="did data or data.seq_len change"):
        it.restore({"epoch": 0, "index": 10**9})


def test_two_processes_take_disjoint_rows_in_lockstep():
    cfg = DataConfig(seq_len=64)
    whole = build_data(cfg, batch_size=8, seed=0)[1]
    p0 = build_data(cfg, batch_size=4, seed=0, process_index=0, process_count=2)[1]
    p1 = build_data(cfg, batch_size=4, seed=0, process_index=1, process_count=2)[1]
    for _ in range(3):
        w, a, b = next(whole), next(p0), next(p1)
        np.testing.assert_array_equal(np.concatenate([a["inputs"], b["inputs"]]), w["inputs"])
    assert p0.state() == p1.state() == whole.state()


# ------------------------------------------------------------------ split + validation


def test_split_by_document_is_disjoint_and_stable(many_txt):
    cfg = DataConfig(source="text", path=str(many_txt), seq_len=16, val_fraction=0.25)
    tok, it, val = build_data(cfg, batch_size=4, seed=0)
    assert val.split == "documents"

    def docs_of(tokens):
        text = tok.decode(tokens)       # EOS dropped: split on the tags instead
        return set(int(m) for m in re.findall(r"doc-(\d{5}):", text))

    train_ids, val_ids = docs_of(it.tokens), docs_of(val.tokens)
    assert train_ids and val_ids and not train_ids & val_ids
    assert train_ids | val_ids == set(range(60))
    docs = read_documents(str(many_txt))
    assert val_ids == {i for i, d in enumerate(docs) if is_validation(d, 0.25)}
    # Stable: another seed and another batch size hold out the same documents.
    _, _, val2 = build_data(cfg, batch_size=2, seed=7)
    np.testing.assert_array_equal(val2.tokens, val.tokens)
    # The hash split is near its nominal fraction on many documents.
    frac = np.mean([is_validation(f"document {i}", 0.05) for i in range(4000)])
    assert 0.04 < frac < 0.06


def test_val_batches_are_identical_every_call_and_report_bytes_per_token():
    _, _, val = build_data(DataConfig(seq_len=128), batch_size=4, seed=0)
    a, b = list(val(3)), list(val(3))
    assert len(a) == 3
    _assert_same(a, b)
    _assert_same(list(val(5))[:3], a)
    assert 0.9 < val.bytes_per_token <= 1.0      # byte tokens, plus one EOS per document


def test_single_file_holds_out_its_tail(small_txt):
    cfg = DataConfig(source="text", path=str(small_txt), seq_len=16, val_fraction=0.1)
    tok, it, val = build_data(cfg, batch_size=2, seed=0)
    assert val.split == "tail"
    whole = tok.decode(np.concatenate([it.tokens, val.tokens]))
    assert whole == small_txt.read_text(encoding="utf-8")
    assert abs(len(val.tokens) / (len(it.tokens) + len(val.tokens)) - 0.1) < 0.01


def test_jsonl_source(tmp_path):
    f = tmp_path / "docs.jsonl"
    f.write_text("\n".join(json.dumps({"body": f"doc-{i:05d}: " + "words " * 30, "id": i})
                           for i in range(30)) + "\n")
    cfg = DataConfig(source="text", path=str(f), text_column="body", seq_len=16)
    tok, it, _ = build_data(cfg, batch_size=2, seed=0)
    assert next(it)["inputs"].shape == (2, 16)


# ------------------------------------------------------------------ streaming (HF path, local parquet)


def test_hf_stream_on_zyda_schema_is_deterministic_and_held_out(zyda_parquet):
    cfg = _hf_cfg(zyda_parquet)
    tok, it, val = build_data(cfg, batch_size=4, seed=0)
    a = _take(it, 6)
    _assert_same(a, _take(build_data(cfg, batch_size=4, seed=0)[1], 6))
    assert _differ(a, _take(build_data(cfg, batch_size=4, seed=1)[1], 6))
    for b in a:
        np.testing.assert_array_equal(b["targets"][:, :-1], b["inputs"][:, 1:])
    # Validation: only hash-held-out documents, never trained on; same batches every call.
    docs = pq.read_table(zyda_parquet, columns=["text"]).column("text").to_pylist()
    held_out = {int(d[4:9]) for d in docs if is_validation(d, cfg.val_fraction)}
    vb = list(val(3))
    _assert_same(vb, list(val(3)))
    assert _doc_ids(vb, tok) <= held_out
    assert not _doc_ids(_take(it, 30), tok) & held_out
    assert 0.9 < val.bytes_per_token <= 1.0


def test_hf_stream_resume_across_epochs(zyda_parquet):
    cfg = _hf_cfg(zyda_parquet)
    ref = build_data(cfg, batch_size=8, seed=0)[1]
    uninterrupted = _take(ref, 35)
    assert ref.state()["epoch"] >= 1              # one epoch is ~28 batches of 8x32 tokens
    for k in (7, 26, 28, 30):                     # before, across and after the epoch boundary
        it = build_data(cfg, batch_size=8, seed=0)[1]
        _take(it, k)
        state = json.loads(json.dumps(it.state()))
        fresh = build_data(cfg, batch_size=8, seed=0)[1]
        fresh.restore(state)
        _assert_same(_take(fresh, 5), uninterrupted[k:k + 5])


def test_hf_stream_two_ranks_get_disjoint_documents(zyda_parquet):
    cfg = _hf_cfg(zyda_parquet, seq_len=512)      # long rows: most document tags survive whole
    seen = []
    for rank in range(2):
        tok, it, _ = build_data(cfg, batch_size=2, seed=0, process_index=rank, process_count=2)
        seen.append(_doc_ids(_take(it, 2), tok))
        # Within one epoch (the next one repartitions the reshuffled stream).
        assert it.state()["epoch"] == 0 and it.state()["process"] == [rank, 2]
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    with pytest.raises(ValueError, match="saved by process 1 of 2"):
        build_data(cfg, batch_size=2, seed=0)[1].restore({"epoch": 0, "index": 0, "offset": 0,
                                                           "process": [1, 2]})


def test_hf_stream_missing_text_column(zyda_parquet):
    with pytest.raises(ValueError, match=r"no text column 'body'.*'text', 'source', "
                                         r"'filtering_features', 'source_other'"):
        build_data(_hf_cfg(zyda_parquet, text_column="body"), batch_size=2, seed=0)


def test_hf_hub_offline_fails_fast_with_one_sentence():
    assert ZYDA["columns"] == ("text", "source", "filtering_features", "source_other")
    cfg = DataConfig(source="hf", hf_path="Zyphra/Zyda", hf_name="zyda_arxiv_only", tokenizer="byte")
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"could not open Hugging Face dataset "
                                           r"'Zyphra/Zyda/zyda_arxiv_only' .*offline or unreachable"):
        build_data(cfg, batch_size=2, seed=0)
    assert time.perf_counter() - t0 < 10
    with pytest.raises(ValueError, match="Zyda has only a 'train' split"):
        build_data(DataConfig(source="hf", hf_path="Zyphra/Zyda", hf_split="validation"),
                   batch_size=2, seed=0)


# ------------------------------------------------------------------ bad input


def test_nonexistent_path(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        build_data(DataConfig(source="text", path=str(missing)), batch_size=2, seed=0)
    with pytest.raises(FileNotFoundError, match="no files match"):
        build_data(DataConfig(source="text", path=str(tmp_path / "*.parquet")), batch_size=2, seed=0)
    with pytest.raises(FileNotFoundError, match="nope"):
        build_data(_hf_cfg(tmp_path, path=str(tmp_path / "nope" / "*.parquet")), batch_size=2, seed=0)


def test_empty_corpus(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="no text"):
        build_data(DataConfig(source="text", path=str(tmp_path / "empty.txt")), batch_size=2, seed=0)


def test_missing_text_column_jsonl_and_parquet(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text(json.dumps({"body": "hello", "id": 1}) + "\n")
    with pytest.raises(ValueError, match=r"a.jsonl:1: no text column 'text'.*present: 'body', 'id'"):
        build_data(DataConfig(source="text", path=str(f)), batch_size=2, seed=0)
    p = tmp_path / "a.parquet"
    pq.write_table(pa.table({"content": ["hello"], "source": ["x"]}), p)
    with pytest.raises(ValueError, match=r"no text column 'text'.*columns present: 'content', 'source'"):
        build_data(DataConfig(source="text", path=str(p)), batch_size=2, seed=0)
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(ValueError, match=r"b.jsonl:2: not a JSON object"):
        read_documents(str(bad))


def test_non_utf8_txt_is_replaced_with_a_warning(tmp_path):
    f = tmp_path / "latin1.txt"
    f.write_bytes("caf\u00e9 au lait ".encode("latin-1") * 50)
    with pytest.warns(DataWarning, match=r"latin1.txt: not valid UTF-8.*replaced with U\+FFFD"):
        docs = read_documents(str(f))
    assert docs[0].startswith("caf\ufffd au lait")


def test_seq_len_too_large(small_txt):
    cfg = DataConfig(source="text", path=str(small_txt), seq_len=100_000)
    with pytest.raises(ValueError, match=r"split has \d+ tokens, fewer than seq_len\+1 = 100001.*"
                                         r"smaller data.seq_len"):
        build_data(cfg, batch_size=2, seed=0)


def test_char_tokenizer_with_a_stream_is_refused(zyda_parquet):
    with pytest.raises(ValueError, match="tokenizer: char"):
        build_data(_hf_cfg(zyda_parquet, tokenizer="char"), batch_size=2, seed=0)
