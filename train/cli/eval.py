"""`energy-attn eval` and `energy-attn sample`: a trained run's validation metrics, and text
generated from it."""
from __future__ import annotations

import sys

from train.cli.args import CLIError, command, positive_int


def add_parser(sub):
    _add_eval(sub)
    _add_sample(sub)


def _add_eval(sub):
    p = command(sub, "eval", help="validation loss, perplexity and bits per byte of a run",
                description="Restore a run's checkpoint and evaluate it on its validation split.",
                example="energy-attn eval --run runs/default --batches 50")
    p.add_argument("--run", required=True, help="run directory (holds config.yaml and checkpoints/)")
    p.add_argument("--batches", type=_batches, default=None,
                   help="validation batches, or 'all' for the whole validation split "
                        "(default: the run's train.eval_batches)")
    p.add_argument("--checkpoint", choices=("latest", "best"), default="latest")
    p.set_defaults(handler=_eval, prog=p.prog)


def _batches(text: str):
    return "all" if text == "all" else positive_int(text)


def _eval(args):
    from train.loop.evaluate import evaluate_run
    r = evaluate_run(args.run, batches=args.batches, which=args.checkpoint)
    covered = f"{r['tokens']:,} tokens ({r['batches']} batches)"
    if r["split_tokens"]:
        covered += f" of the validation split's {r['split_tokens']:,}"
        if r["tokens"] > r["split_tokens"]:
            covered += " (the last batch repeats rows from the start)"
    print(f"{args.run}: {r['model']} with {r['energy']} attention, {r['checkpoint']} checkpoint "
          f"(step {r['step']}), on {covered}", file=sys.stderr)
    metrics = {k: r[k] for k in ("step", "loss", "perplexity", "bits_per_byte") if k in r}
    print("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()))
    return 0


def _add_sample(sub):
    p = command(sub, "sample", help="generate text from a trained run",
                description="Restore a run's checkpoint and continue a prompt.",
                example='energy-attn sample --run runs/default --prompt "The energy of" --max-new-tokens 200')
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--prompt", default="", help="text to continue (default: start of a new document)")
    p.add_argument("--max-new-tokens", type=positive_int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 is greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=40, help="0 disables top-k filtering (default 40)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", choices=("latest", "best"), default="latest")
    p.set_defaults(handler=_sample, prog=p.prog)


def _sample(args):
    if args.temperature < 0:
        raise CLIError(f"--temperature must be >= 0, got {args.temperature}")
    if args.top_k < 0:
        raise CLIError(f"--top-k must be >= 0, got {args.top_k}")
    from train.loop.evaluate import sample_run
    text = sample_run(args.run, args.prompt, max_new_tokens=args.max_new_tokens,
                      temperature=args.temperature, top_k=args.top_k or None, seed=args.seed,
                      which=args.checkpoint, log=lambda m: print(m, file=sys.stderr))
    print(text)
    return 0
