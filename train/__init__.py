"""Training stack and the `energy-attn` command line, by part:

    the loop          loop (train, the jitted step, evaluate), throughput (FLOPs, MFU)
    configuration     config (typed YAML, overrides, validation, the key reference)
    data              data (build_data), sources (files, HF streams), batching (packed rows,
                      resumable iterators), corpus (the built-in text), tokenizer, token_cache
    run directories   checkpoint (Orbax, verified restore), run_lock (one writer), run_record
                      (what changed between invocations), run (load a trained run), metrics
    workflows         evaluate (eval, sample), sweep, compare, distributed (jax.distributed)
    command line      cli (every `energy-attn` command; failures become one line in main())
    benchmarks        bench_train, bench_data, bench_checkpoint, bench_sharded
"""
