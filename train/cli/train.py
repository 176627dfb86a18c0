"""`energy-attn train`: train a model from a config plus dotted overrides (resumable,
multi-process)."""
from __future__ import annotations

import sys

from train.cli.args import command, positive_int, resolve_config


def add_parser(sub):
    p = command(sub, "train", help="train a language model (default: built-in corpus, a few minutes on CPU)",
                description=(
                    "Train a model from a YAML config plus dotted overrides. With no arguments it trains\n"
                    "the default config on the built-in corpus (CPython's own documentation).\n"
                    "The run directory is train.run_dir, or runs/<config name> plus the experiment keys\n"
                    "the overrides change (model.attention.energy=sigmoid -> runs/default__energy-sigmoid).\n"
                    "Running the same command again resumes from its latest verified checkpoint; a finished\n"
                    "run says so and exits. A run directory holds one experiment: a changed model, data,\n"
                    "optim, seed or batch size is refused (see --allow-config-change); raising train.steps\n"
                    "trains a finished run longer. One process writes a run directory at a time.\n"
                    "--debug (any command) shows tracebacks instead of one-line errors.\n\n"
                    "Sequence sharding: mesh.seq=S splits every sequence over S devices (attention is\n"
                    "tree-reduced across them; Mamba and BST carry their SSM state across them);\n"
                    "mesh.data=D splits the batch. Several processes (hosts):\n"
                    "start one per host with the same command plus --coordinator/--num-processes/\n"
                    "--process-id, or set JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID.\n"
                    "On one machine, XLA_FLAGS=--xla_force_host_platform_device_count=N simulates N CPU devices."),
                example="energy-attn train configs/shakespeare_char.yaml model.attention.energy=sigmoid "
                        "train.steps=500\n  XLA_FLAGS=--xla_force_host_platform_device_count=8 "
                        "energy-attn train mesh.data=2 mesh.seq=4\n  energy-attn train mesh.seq=8 "
                        "--coordinator 127.0.0.1:1234 --num-processes 2 --process-id 0   # and id 1")
    p.add_argument("config", nargs="?", default=None, help="YAML config (default: built-in defaults)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides, e.g. model.num_layers=2 data.seq_len=128")
    p.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="multi-process: address of process 0 (env JAX_COORDINATOR_ADDRESS)")
    p.add_argument("--num-processes", type=positive_int, default=None,
                   help="multi-process: number of processes (env JAX_NUM_PROCESSES)")
    p.add_argument("--process-id", type=int, default=None,
                   help="multi-process: this process's id, 0-based (env JAX_PROCESS_ID)")
    p.add_argument("--allow-config-change", action="store_true",
                   help="continue a run whose config.yaml differs in what defines the experiment "
                        "(model, data, optim, seed, batch size); the change is recorded in "
                        "RUN_DIR/config_history.jsonl with the step it took effect")
    p.set_defaults(handler=_train, prog=p.prog)


def _train(args):
    cfg = resolve_config(args.config, args.overrides)
    from train.loop import distributed
    distributed.initialize(distributed.distributed_settings(
        args.coordinator, args.num_processes, args.process_id))
    from dataclasses import asdict

    from train.loop.trainer import TrainingDiverged, train
    from train.workflows.sweep import write_done
    try:
        result = train(cfg, allow_config_change=args.allow_config_change)
        import jax
        # Peak memory: this process ran only this run. A finished run rerun is left untouched.
        if jax.process_index() == 0 and not result.already_complete:
            write_done(cfg.train.run_dir, asdict(result), own_process=True)
    except TrainingDiverged as e:
        print(f"{args.prog}: {e}", file=sys.stderr)
        return 1
    return 0
