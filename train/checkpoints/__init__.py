"""Run directories: what a run leaves on disk, and how it is reopened.

    checkpoint  Orbax checkpoints with verified restore
    run_lock    one writer per run directory
    run_record  what changed between invocations of one run
    run         load a trained run (config, tokenizer, model)
"""
