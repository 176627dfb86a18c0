"""Pictures of energy landscapes: what an energy does when its attention is iterated.

    from energy_attn import landscape as ls
    X = ls.toy_patterns(4, seed=0)                            # stored patterns (N, 2)
    E = ls.retrieval_energy("entmax", xi, X, beta=2.0)        # any registered energy
    res = ls.plot_landscape(["softmax", "sparsemax"], X, beta=2.0, out="landscape.png")
    res = ls.plot_basins(X, out="basins.png")                 # res["labels"]: pattern per cell
    ls.plot_model(model, tokenizer, "pictures/")              # any model with energy attention
    ls.report("report/")                                      # every toy picture + index.html
    ls.report("report/", model=model, tokenizer=tokenizer, step=600, name="runs/default")

Every `plot_*` function computes the numbers behind one picture, writes it as a PNG
(matplotlib, Agg canvas, no pyplot state) and returns those numbers as a dict.
Pictures take arrays or a model object, never a run directory (`energy-attn viz`
loads runs).

    retrieval.py   the retrieval energy of any energy; its update, iterates, fixed points
    toy.py         landscapes, basins, energy against iteration, β sweeps on toy patterns
    model.py       a trained model's attention maps, head classes and one head's landscape
    report.py      all of them plus index.html
    figures.py     shared drawing helpers
"""
from .model import (DEFAULT_PROMPT, AttentionMap, check_head, classify_map, model_attention,
                    plot_attention_maps, plot_head_classes, plot_head_landscape, plot_model,
                    prompt_ids, token_labels)
from .report import report, write_index
from .retrieval import (Energy, associations, clustered_patterns, converge, energy_formula,
                        energy_scaling, iterate, label_states, min_separation, plane_through,
                        retrieval_energy, takes_beta, toy_patterns, update)
from .toy import (DEFAULT_BASIN_PANELS, NOT_RETRIEVAL_ENERGIES, basins, beta_sweep, landscape,
                  plot_basins, plot_beta_sweep, plot_curves, plot_landscape)

__all__ = [
    "DEFAULT_PROMPT", "AttentionMap", "check_head", "classify_map", "model_attention",
    "plot_attention_maps", "plot_head_classes", "plot_head_landscape", "plot_model", "prompt_ids",
    "token_labels", "report", "write_index", "Energy", "associations", "clustered_patterns",
    "converge", "energy_formula", "energy_scaling", "iterate", "label_states", "min_separation",
    "plane_through", "retrieval_energy", "takes_beta", "toy_patterns", "update",
    "DEFAULT_BASIN_PANELS", "NOT_RETRIEVAL_ENERGIES", "basins", "beta_sweep", "landscape",
    "plot_basins", "plot_beta_sweep", "plot_curves", "plot_landscape",
]
