"""The tokenized cache (`energy-attn data prepare`, data.source=cache): Zyda-schema parquet
shards in, exact tokens out, the same split as training from the files, exact resume,
a short training run, and clear errors for bad input."""
import json
from pathlib import Path

import numpy as np
import pytest

from train.cli import main
from train.config import DataConfig, load_config
from train.data.pipeline import build_data, is_validation
from train.data.token_cache import (CacheBatchIterator, TokenCache, build_cache_data, prepare,
                               prepare_from_config, token_dtype)
from train.data.tokenizer import ByteTokenizer, HFTokenizer

WORDS = ("energy attention softmax gradient kernel sigmoid query key value hopfield "
         "retrieval pattern memory token layer").split()


def documents(n, seed=0):
    rng = np.random.default_rng(seed)
    return [f"doc {i}: " + " ".join(rng.choice(WORDS, size=int(rng.integers(5, 40))))
            + (" é ✓" if i % 7 == 0 else "") for i in range(n)]


def write_zyda_shards(folder: Path, docs, shards=2):
    """Parquet shards in Zyda's exact schema: text, source, filtering_features, source_other."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    folder.mkdir(parents=True, exist_ok=True)
    for s, part in enumerate(np.array_split(np.arange(len(docs)), shards)):
        table = pa.table({
            "text": [docs[i] for i in part],
            "source": ["arxiv"] * len(part),
            "filtering_features": [json.dumps({"word_count": len(docs[i].split())}) for i in part],
            "source_other": [json.dumps({"id": int(i)}) for i in part],
        })
        pq.write_table(table, folder / f"train-{s:05d}-of-{shards:05d}.parquet")
    return str(folder / "*.parquet")


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def zyda(tmp_path_factory):
    root = tmp_path_factory.mktemp("zyda")
    docs = documents(120)
    glob = write_zyda_shards(root / "shards", docs)
    cfg = DataConfig(source="text", path=glob, tokenizer="byte", val_fraction=0.2)
    prepare_from_config(cfg, root / "cache", log=quiet)
    return docs, glob, root / "cache"


def test_cache_holds_exact_tokens_and_the_hash_split(zyda):
    docs, _, path = zyda
    cache = TokenCache(path)
    tok = ByteTokenizer()
    expect = {"train": [d for d in docs if not is_validation(d, 0.2)],
              "val": [d for d in docs if is_validation(d, 0.2)]}
    assert expect["val"] and expect["train"]
    for split, texts in expect.items():
        assert cache.header["splits"][split]["documents"] == len(texts)
        assert cache.header["splits"][split]["bytes"] == sum(len(t.encode()) for t in texts)
        for i, text in enumerate(texts):
            np.testing.assert_array_equal(cache.document(split, i), [*text.encode(), tok.eos_id])
    assert cache.tokens("train").dtype == np.uint16
    assert cache.header["val"]["rule"] == "documents"
    assert cache.header["source"]["path"].endswith("*.parquet")


def test_cache_matches_training_from_the_files(zyda):
    """Same train stream and validation batches as data.source=text on the same shards."""
    _, glob, path = zyda
    kw = dict(batch_size=3, seed=5)
    _, it_text, val_text = build_data(DataConfig(source="text", path=glob, seq_len=16,
                                                 val_fraction=0.2), **kw)
    _, it_cache, val_cache = build_data(DataConfig(source="cache", cache_dir=str(path), seq_len=16,
                                                   val_fraction=0.2), **kw)
    np.testing.assert_array_equal(np.asarray(TokenCache(path).tokens("train")), it_text.tokens)
    for _ in range(5):
        a, b = next(it_text), next(it_cache)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    for a, b in zip(val_text(3), val_cache(3)):
        np.testing.assert_array_equal(a["inputs"], b["inputs"])
    assert val_cache.bytes_per_token == pytest.approx(val_text.bytes_per_token)


def test_prepare_is_deterministic(zyda, tmp_path):
    _, glob, path = zyda
    prepare_from_config(DataConfig(source="text", path=glob, val_fraction=0.2), tmp_path / "again",
                        log=quiet)
    for name in ("train.bin", "val.bin", "train_docs.npy", "val_docs.npy"):
        assert (tmp_path / "again" / name).read_bytes() == (path / name).read_bytes(), name


def test_resume_mid_epoch_and_across_epochs_gives_the_same_batches(zyda):
    _, _, path = zyda
    cfg = DataConfig(source="cache", cache_dir=str(path), seq_len=8)
    _, it, _ = build_cache_data(cfg, batch_size=4, seed=3)
    assert isinstance(it, CacheBatchIterator) and isinstance(it.tokens, np.memmap)
    k = it.num_rows // 4 + 3                           # past the first epoch boundary
    for _ in range(k):
        next(it)
    state = json.loads(json.dumps(it.state()))         # what a checkpoint stores
    expected = [next(it) for _ in range(3)]
    _, fresh, _ = build_cache_data(cfg, batch_size=4, seed=3)
    fresh.restore(state)
    for want in expected:
        got = next(fresh)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    _, other, _ = build_cache_data(cfg, batch_size=4, seed=4)
    assert not np.array_equal(next(other)["inputs"], build_cache_data(cfg, batch_size=4, seed=3)[1]
                              .__next__()["inputs"])


def test_hf_tokenizer_cache_round_trips_and_uses_uint32_for_big_vocabularies(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    docs = documents(30, seed=1)
    vocab = {"<|endoftext|>": 0, "[UNK]": 1}
    for w in sorted({w for d in docs for w in d.split()}):
        vocab.setdefault(w, len(vocab))
    for i in range(70_000):                            # push the vocabulary past uint16
        vocab[f"filler{i}"] = len(vocab)
    hf = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf.save(str(tmp_path / "tok.json"))
    tok = HFTokenizer(str(tmp_path / "tok.json"))
    header = prepare(iter(docs), tok, tmp_path / "cache", val_fraction=0.3, log=quiet)
    assert header["dtype"] == "uint32" and token_dtype(65536) == "uint16"
    assert (tmp_path / "cache" / "tokenizer.json").is_file()
    cache = TokenCache(tmp_path / "cache")
    train_docs = [d for d in docs if not is_validation(d, 0.3)]
    for i, d in enumerate(train_docs):
        np.testing.assert_array_equal(cache.document("train", i), [*tok.encode(d), 0])
    (tmp_path / "tok.json").unlink()                   # training reads the cache's own copy
    again = cache.tokenizer(str(tmp_path / "tok.json"))
    assert again.vocab_size == tok.vocab_size and again.encode(docs[0]) == tok.encode(docs[0])
    # eval/sample of a run trained on this cache find the tokenizer there too
    from train.checkpoints.run import _tokenizer
    run_cfg = load_config(None, ["data.source=cache", f"data.cache_dir={tmp_path / 'cache'}",
                                 f"data.tokenizer={tmp_path / 'tok.json'}"], check=False)
    assert _tokenizer(run_cfg, {}).encode(docs[1]) == tok.encode(docs[1])


def test_single_file_holds_out_the_tail(tmp_path):
    text = "".join(documents(40))
    (tmp_path / "one.txt").write_text(text)
    h = prepare_from_config(DataConfig(source="text", path=str(tmp_path / "one.txt"),
                                       tokenizer="char", val_fraction=0.1), tmp_path / "c", log=quiet)
    cache = TokenCache(tmp_path / "c")
    tok = cache.tokenizer("char")
    stream = [*tok.encode(text), tok.eos_id]
    both = np.concatenate([cache.tokens("train"), cache.tokens("val")])
    np.testing.assert_array_equal(both, stream)
    assert h["val"]["rule"] == "tail"
    assert h["splits"]["val"]["tokens"] == len(stream) - round(len(stream) * 0.9)


def test_short_training_run_from_the_cache(zyda, tmp_path):
    from train.loop.trainer import train
    _, _, path = zyda
    cfg = load_config(None, ["model.num_layers=1", "model.d_model=32", "model.num_heads=2",
                             "data.seq_len=16", "train.batch_size=4", "train.steps=4",
                             "optim.warmup_steps=1", "train.eval_every=2", "train.eval_batches=1",
                             "logging.wandb=disabled", "logging.progress_bar=false",
                             "train.sample_tokens=8", "data.source=cache",
                             f"data.cache_dir={path}", f"train.run_dir={tmp_path / 'run'}"])
    result = train(cfg, log=quiet)
    assert result.step == 4 and np.isfinite(result.val_loss)
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(r["split"] == "val" and "bits_per_byte" in r for r in rows)


def test_bad_caches_give_clear_errors(zyda, tmp_path):
    _, _, path = zyda
    with pytest.raises(FileNotFoundError, match="does not exist.*energy-attn data prepare"):
        TokenCache(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a token cache"):
        TokenCache(tmp_path / "empty")
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    (bad / "header.json").write_text("{not json")
    with pytest.raises(ValueError, match="header.json is corrupt"):
        TokenCache(bad)
    shutil.copy(path / "header.json", bad / "header.json")
    with open(bad / "train.bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(ValueError, match="incomplete or corrupt"):
        TokenCache(bad)
    with pytest.raises(ValueError, match="data.tokenizer='char' does not match.*'byte'"):
        build_cache_data(DataConfig(source="cache", cache_dir=str(path), tokenizer="char"),
                         batch_size=2, seed=0)
    with pytest.raises(ValueError, match="data.cache_dir"):
        load_config(None, ["data.source=cache"])


@pytest.mark.parametrize("argv, words", [
    (["data", "prepare", "--source", "text", "--path", "/no/such/file.parquet", "--out", "X"],
     ["/no/such/file.parquet", "does not exist"]),
    (["data", "prepare", "--out", "X"], ["--source"]),
    (["data", "prepare", "--source", "builtin", "--val-fraction", "1.5", "--out", "X"],
     ["--val-fraction"]),
])
def test_prepare_cli_bad_input_is_one_line(argv, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(w in err[0] for w in words), err
    assert not (tmp_path / "X").exists() and not (tmp_path / "X.partial").exists()


def test_prepare_cli_refuses_to_overwrite(zyda, capsys):
    _, glob, path = zyda
    assert main(["data", "prepare", "--source", "text", "--path", glob, "--out", str(path)]) == 2
    assert "--overwrite" in capsys.readouterr().err
