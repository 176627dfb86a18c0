"""Training stack and the `energy-attn` command line, by part:

    config        typed YAML, overrides, validation, the key reference (every part reads it)
    loop/         the training loop and what runs inside it: trainer (train, the jitted step,
                  evaluate), metrics, throughput (FLOPs, MFU), evaluate (eval, sample),
                  compile_cache, distributed (jax.distributed)
    data/         pipeline (build_data), sources (files, HF streams), batching (packed rows,
                  resumable iterators), corpus (the built-in text), tokenizer, token_cache
    checkpoints/  run directories: checkpoint (Orbax, verified restore), run_lock (one writer),
                  run_record (what changed between invocations), run (load a trained run)
    workflows/    sweep, compare, paired_stats
    bench/        training, data, checkpoint, sharded
    cli/          every `energy-attn` command, one module per command group; failures become
                  one line in main()
"""
