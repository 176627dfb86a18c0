"""`energy-attn data prepare` (tokenize a corpus into a cache) and `energy-attn data bench`
(how fast the cache feeds training)."""
from __future__ import annotations

from train.cli.args import command, positive_int, resolve_config


def add_parser(sub):
    p = command(sub, "data", help="tokenized data cache: prepare it once, train from it offline",
                description="Tokenized, memory-mapped data caches (train with data.source=cache).",
                example="energy-attn data prepare --source builtin --tokenizer byte --out data/builtin")
    data = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    q = command(
        data, "prepare", help="tokenize a corpus into a cache directory",
        description=(
            "Tokenize builtin text, local files (.txt/.jsonl/.parquet, e.g. Zyda shards) or a\n"
            "streamed Hugging Face dataset into DIR: token arrays (uint16/uint32, memory-mapped),\n"
            "document offsets, header.json, and the tokenizer. Validation documents are held out\n"
            "by the same hash rule as training from the source. Then train with\n"
            "data.source=cache data.cache_dir=DIR. --config takes defaults from a config's data section."),
        example="energy-attn data prepare --source text --path 'zyda/*.parquet' "
                "--tokenizer EleutherAI/gpt-neox-20b --out data/zyda_arxiv")
    q.add_argument("--config", default=None, help="take source/tokenizer/val settings from this config")
    q.add_argument("--source", choices=("builtin", "text", "hf"), default=None)
    q.add_argument("--path", default=None, help="file, directory or glob (text); data_files (hf)")
    q.add_argument("--hf-path", default=None, help="Hugging Face dataset, e.g. Zyphra/Zyda")
    q.add_argument("--hf-name", default=None, help="dataset config, e.g. zyda_arxiv_only")
    q.add_argument("--hf-split", default=None, help="split (default train)")
    q.add_argument("--text-column", default=None, help="document column (default text)")
    q.add_argument("--tokenizer", default=None, help="byte, char, or a Hugging Face tokenizer name/file")
    q.add_argument("--val-fraction", type=float, default=None, help="held-out share of documents")
    q.add_argument("--val-max-docs", type=positive_int, default=None,
                   help="cap on validation documents (streamed sources)")
    q.add_argument("--max-docs", type=positive_int, default=None, help="stop after this many documents")
    q.add_argument("--max-tokens", type=positive_int, default=None,
                   help="stop after this many training tokens")
    q.add_argument("--out", required=True, help="cache directory to create")
    q.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    q.set_defaults(handler=_data_prepare, prog=q.prog)
    b = command(
        data, "bench", help="cache read speed and data time as a share of training step time",
        description=("Read throughput of the cache iterator, then a short training run of CONFIG\n"
                     "from the cache: step time and the share spent fetching data (target < 5%)."),
        example="energy-attn data bench data/builtin configs/default.yaml --steps 30")
    b.add_argument("cache_dir", help="a directory written by `energy-attn data prepare`")
    b.add_argument("config", nargs="?", default="configs/default.yaml")
    b.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    b.add_argument("--steps", type=positive_int, default=30, help="timed training steps (default 30)")
    b.set_defaults(handler=_data_bench, prog=b.prog)


def _data_prepare(args):
    from train.config import load_config
    from train.data.token_cache import prepare_from_config
    flags = {"source": args.source, "path": args.path, "hf_path": args.hf_path,
             "hf_name": args.hf_name, "hf_split": args.hf_split, "text_column": args.text_column,
             "tokenizer": args.tokenizer, "val_fraction": args.val_fraction,
             "val_max_docs": args.val_max_docs}
    cfg = load_config(args.config, check=False).data
    for k, v in flags.items():
        if v is not None:
            setattr(cfg, k, v)
    if args.config is None and args.source is None:
        raise ValueError("give --source (builtin, text or hf) or --config")
    if not 0.0 < cfg.val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in (0, 1), got {cfg.val_fraction}")
    prepare_from_config(cfg, args.out, max_docs=args.max_docs, max_tokens=args.max_tokens,
                        overwrite=args.overwrite)
    return 0


def _data_bench(args):
    cfg = resolve_config(args.config, [*args.overrides, "data.source=cache",
                                       f"data.cache_dir={args.cache_dir}"])
    from train.bench.data import benchmark
    benchmark(cfg, steps=args.steps)
    return 0
