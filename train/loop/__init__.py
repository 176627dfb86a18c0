"""The training loop and what runs inside it.

    trainer        train(): config -> data -> model -> optimizer -> jitted steps, evaluation,
                   checkpoints; the mesh and sequence layout, make_train_step, evaluate
    metrics        metrics.jsonl, Weights & Biases, the progress bar
    throughput     FLOPs per step, measured matmul peak, MFU
    evaluate       `energy-attn eval` and `sample` on a run directory
    compile_cache  where XLA keeps compiled programs between runs
    cpu_flags      the XLA:CPU flag that keeps column reductions off YNNPACK
    distributed    jax.distributed flags and start-up (several processes)
"""
