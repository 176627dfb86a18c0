"""Data: documents -> tokens -> packed rows -> batches.

    pipeline     build_data: the source named in the config (builtin, text, hf, cache)
    sources      files (.txt, .jsonl, .parquet), Hugging Face streams, the validation hash
    batching     packed rows, resumable batch iterators
    corpus       the built-in corpus (CPython's documentation)
    tokenizer    byte, char and Hugging Face tokenizers
    token_cache  the tokenized, memory-mapped cache (`energy-attn data prepare`)
"""
