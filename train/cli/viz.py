"""`energy-attn viz ...`: energy-landscape pictures (toy patterns and trained runs)."""
from __future__ import annotations

import difflib
import os
import sys

from train.cli.args import CLIError, command, name_list, positive_float, positive_float_list, positive_int


def add_parser(sub):
    p = command(sub, "viz", help="pictures of energy landscapes, basins, retrieval and trained heads",
                description=(
                    "Energy-landscape pictures (PNG). `report` writes all of them plus index.html;\n"
                    "the other subcommands write one picture each. The retrieval energy of an energy\n"
                    "F is E(ξ) = −F(ξ; keys = values = patterns)/β + ½‖ξ‖² (see energy_attn.landscape)."),
                example="energy-attn viz report --run runs/default --out report/")
    viz = p.add_subparsers(dest="picture", metavar="PICTURE", required=True)

    def common(q, out, *, grid=True):
        q.add_argument("--out", default=out, metavar="PATH", help=f"output (default {out})")
        q.add_argument("--seed", type=int, default=0, help="toy patterns and start points (default 0)")
        if grid:
            q.add_argument("--grid", type=positive_int, default=60,
                           help="grid points per side (default 60)")

    q = command(viz, "report", help="every picture plus index.html",
                description=("Writes the toy pictures (landscapes, basins, energy curves, beta sweep)\n"
                             "and, with --run, the trained-model pictures (attention maps, head\n"
                             "classes, one head's landscape), plus index.html gathering them."),
                example="energy-attn viz report --run runs/default --out report/\n"
                        "  energy-attn viz report --out report/          # toy pictures only")
    q.add_argument("--run", default=None, metavar="DIR", help="trained run directory (optional)")
    _model_options(q)
    common(q, "report")
    q.set_defaults(handler=_viz_picture, prog=q.prog)

    q = command(viz, "landscape", help="filled contours of the retrieval energy, with trajectories",
                description=("Contours of E(ξ) over a plane for each energy: 2-D toy patterns, or with\n"
                             "--dim > 2 the plane through the origin and stored patterns 0 and 1.\n"
                             "Retrieval trajectories ξ ← ∂F/∂ζ are drawn from a few start points."),
                example="energy-attn viz landscape --energy softmax,sparsemax --beta 4 --out landscape.png\n"
                        "  energy-attn viz landscape --energy softmax --dim 16 --beta 1 --out plane.png")
    q.add_argument("--energy", type=name_list, default=["softmax", "sparsemax", "entmax"],
                   metavar="A,B,...", help="energies, one panel each (default softmax,sparsemax,entmax)")
    q.add_argument("--beta", type=positive_float, default=2.0, help="inverse temperature (default 2)")
    q.add_argument("--patterns", type=positive_int, default=5, help="stored patterns (default 5)")
    q.add_argument("--dim", type=positive_int, default=2, help="pattern width (default 2)")
    common(q, "landscape.png")
    q.set_defaults(handler=_viz_picture, prog=q.prog)

    q = command(viz, "basins", help="basins of attraction: the pattern each start converges to",
                description=("A grid of initial states run to convergence, coloured by the stored\n"
                             "pattern reached (grey: metastable mixture or not converged). One panel per\n"
                             "(energy, beta); default: softmax at 0.5,1,2,8 and sparsemax, entmax at 0.5."),
                example="energy-attn viz basins --energy softmax,entmax --beta 0.5,2 --grid 80")
    q.add_argument("--energy", type=name_list, default=None, metavar="A,B,...",
                   help="energies (panels: every energy at every --beta)")
    q.add_argument("--beta", type=positive_float_list, default=None, metavar="B1,B2,...",
                   help="inverse temperatures (default with --energy: 0.5,1,2,8)")
    q.add_argument("--patterns", type=positive_int, default=5, help="stored patterns (default 5)")
    common(q, "basins.png")
    q.set_defaults(handler=_viz_picture, prog=q.prog)

    q = command(viz, "curves", help="energy against iteration (Hopfield, other energies, ET)",
                description=("Retrieval energy along the updates: softmax (hopfield.retrieve) at each\n"
                             "--beta, the other --energy at --other-beta, and an Energy Transformer block."),
                example="energy-attn viz curves --beta 0.5,2 --energy sparsemax,entmax --out curves.png")
    q.add_argument("--beta", type=positive_float_list, default=[0.5, 1.0, 2.0, 4.0], metavar="B1,B2,...",
                   help="softmax inverse temperatures (default 0.5,1,2,4)")
    q.add_argument("--energy", type=name_list, default=["sparsemax", "entmax", "sigmoid", "distance"],
                   metavar="A,B,...", help="other energies (default sparsemax,entmax,sigmoid,distance)")
    q.add_argument("--other-beta", type=positive_float, default=0.5,
                   help="inverse temperature of the other energies (default 0.5)")
    q.add_argument("--steps", type=positive_int, default=15, help="updates (default 15)")
    common(q, "curves.png", grid=False)
    q.set_defaults(handler=_viz_picture, prog=q.prog)

    q = command(viz, "beta-sweep", help="retrieval quality and metastable states against beta",
                description=("Noisy copies of clustered stored patterns are retrieved at log-spaced\n"
                             "betas; plots accuracy, mean cosine to the target, and metastable mixtures."),
                example="energy-attn viz beta-sweep --beta-min 0.1 --beta-max 100 --num-betas 20")
    q.add_argument("--energy", default="softmax", help="energy to iterate (default softmax)")
    q.add_argument("--beta-min", type=positive_float, default=0.5, help="smallest beta (default 0.5)")
    q.add_argument("--beta-max", type=positive_float, default=200.0, help="largest beta (default 200)")
    q.add_argument("--num-betas", type=positive_int, default=16, help="betas (default 16)")
    q.add_argument("--noise", type=float, default=0.5,
                   help="query noise relative to the pattern norm (default 0.5)")
    q.add_argument("--queries-per-pattern", type=positive_int, default=8, help="(default 8)")
    common(q, "beta_sweep.png", grid=False)
    q.set_defaults(handler=_viz_picture, prog=q.prog)

    q = command(viz, "model", help="a trained run: attention maps, head classes, a head's landscape",
                description=("Writes model_attention.png, model_heads.png and model_landscape.png for\n"
                             "a prompt and any zoo model (transformer, hybrid, BST, energy transformer):\n"
                             "the attention map of every attention call and head, each head's class\n"
                             "(global / metastable / single), and one head's energy landscape in the\n"
                             "plane of its two strongest keys."),
                example='energy-attn viz model --run runs/default --prompt "The energy of" --layer 1 --head 0')
    q.add_argument("--run", required=True, metavar="DIR", help="trained run directory")
    _model_options(q)
    common(q, "viz-model", grid=True)
    q.set_defaults(handler=_viz_picture, prog=q.prog)


def _model_options(q):
    q.add_argument("--prompt", default=None,
                   help="prompt for the model pictures (default: a built-in sentence)")
    q.add_argument("--layer", type=int, default=0,
                   help="attention call of the head landscape, counted in call order as in "
                        "model_attention.png's titles: the transformer's layer; the hybrid's shared "
                        "block per site; the BST's attn/cross per layer (default 0)")
    q.add_argument("--head", type=int, default=0, help="head of the head landscape (default 0)")
    q.add_argument("--checkpoint", choices=("latest", "best"), default="latest")


def _check_energies(flag, names):
    import energy_attn as ea
    known = ea.available_energies()
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise CLIError(f"{flag}: unknown energy {name!r}.{hint} Registered: {', '.join(known)}")


def _picture_path(out, default_name):
    if out.endswith(("/", os.sep)) or os.path.isdir(out):
        return os.path.join(out, default_name)
    return out


def _run_summary(run_dir, step) -> dict:
    """What index.html says about the run: model, energy, size, checkpoint, last val loss."""
    from train.workflows.compare import summarize
    row = summarize(run_dir)
    facts = {"run": str(run_dir), "model": row["model"], "energy": row["energy"],
             "parameters": f"{row['params']:,}" if row["params"] else "unknown",
             "checkpoint step": step, "last logged step": row["step"]}
    if row["val_loss"] is not None:
        facts["last val loss"] = f"{row['val_loss']:.4f}"
    return facts


def _viz_picture(args):
    from energy_attn import landscape as ls
    say = lambda path: print(f"wrote {path}", file=sys.stderr)    # noqa: E731
    kind = args.picture
    if kind in ("report", "model"):
        prompt = args.prompt if args.prompt is not None else ls.DEFAULT_PROMPT
        model = tokenizer = step = None
        if args.run is not None:     # load first: a bad run directory fails before any plotting
            from train.checkpoints.run import load_run
            _, tokenizer, model, step = load_run(args.run, which=args.checkpoint)
        if kind == "report":
            res = ls.report(args.out, model=model, tokenizer=tokenizer, step=step, name=args.run,
                            summary=None if args.run is None else _run_summary(args.run, step),
                            seed=args.seed, grid=args.grid, prompt=prompt, index=args.layer,
                            head=args.head, log=lambda m: print(m, file=sys.stderr))
            print(res["index"])
            return 0
        res = ls.plot_model(model, tokenizer, args.out, prompt=prompt, step=step, index=args.layer,
                            head=args.head, grid=args.grid, name=args.run)
        for key in ("attention", "heads", "landscape"):
            say(res[key]["path"])
        return 0
    if kind == "landscape":
        _check_energies("--energy", args.energy)
        if args.dim == 1:
            raise CLIError("--dim must be at least 2 (the picture is a plane)")
        if args.dim > 2 and args.patterns < 2:
            raise CLIError("--dim > 2 needs --patterns >= 2 (the plane goes through patterns 0 and 1)")
        patterns = ls.toy_patterns(args.patterns, dim=args.dim, seed=args.seed,
                                   radius=2.0 if args.dim == 2 else 3.0)
        res = ls.plot_landscape(args.energy, patterns, beta=args.beta, grid=args.grid, seed=args.seed,
                                out=_picture_path(args.out, "landscape.png"))
    elif kind == "basins":
        if args.energy is None and args.beta is None:
            panels = ls.DEFAULT_BASIN_PANELS
        else:
            energies = args.energy or ["softmax"]
            _check_energies("--energy", energies)
            panels = [(e, b) for e in energies for b in (args.beta or [0.5, 1.0, 2.0, 8.0])]
        res = ls.plot_basins(ls.toy_patterns(args.patterns, seed=args.seed), panels, grid=args.grid,
                             seed=args.seed, out=_picture_path(args.out, "basins.png"))
    elif kind == "curves":
        _check_energies("--energy", args.energy)
        res = ls.plot_curves(betas=args.beta, energies=args.energy, other_beta=args.other_beta,
                             steps=args.steps, seed=args.seed, out=_picture_path(args.out, "curves.png"))
    else:  # beta-sweep
        _check_energies("--energy", [args.energy])
        if args.beta_min >= args.beta_max:
            raise CLIError(f"--beta-min ({args.beta_min}) must be below --beta-max ({args.beta_max})")
        import numpy as np
        res = ls.plot_beta_sweep(betas=np.geomspace(args.beta_min, args.beta_max, args.num_betas),
                                 seed=args.seed, noise=args.noise, energy=args.energy,
                                 queries_per_pattern=args.queries_per_pattern,
                                 out=_picture_path(args.out, "beta_sweep.png"))
    print(res["path"])
    return 0
