"""Energy-landscape pictures: the numbers behind each picture, the files, and `energy-attn viz`.

Small grids throughout; the report tests share grid 10 so they reuse compiled code.
"""
import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import energy_attn as ea
from energy_attn import hopfield
from energy_attn import landscape as ls
from train.cli import main

TINY = ["model.num_layers=1", "model.d_model=32", "model.num_heads=2", "model.max_seq_len=32",
        "data.seq_len=32", "train.batch_size=4", "train.eval_batches=2", "optim.warmup_steps=2",
        "logging.progress_bar=false", "logging.wandb=disabled", "train.sample_tokens=20"]

# Three well-separated 2-D patterns (120° apart, radius 3): Δ = 9 * 1.5 = 13.5.
SEPARATED = np.array([[3.0, 0.0], [-1.5, 2.598], [-1.5, -2.598]], np.float32)


def is_png(path):
    path = Path(path)
    return path.exists() and path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from train.config import load_config
    from train.loop.trainer import train
    run = tmp_path_factory.mktemp("tiny_run")
    train(load_config(None, [*TINY, f"train.run_dir={run}", "train.steps=2"]), log=lambda *_: None)
    return run


# ------------------------------------------------------------------ numbers


def test_landscape_values_are_the_retrieval_energy(tmp_path):
    # grid 10 and the default start points: the same shapes as the report tests (compiled once)
    res = ls.plot_landscape(["softmax", "sparsemax"], beta=2.0, grid=10, out=tmp_path / "l.png")
    soft, sparse = res["panels"]
    X = soft["patterns"]
    idx = [(0, 0), (3, 5), (9, 2)]
    pts = np.stack([soft["points"][i, j] for i, j in idx])
    # softmax: the modern-Hopfield energy −lse(β, Xᵀξ) + ½‖ξ‖² (hopfield.lse_energy).
    want = -np.asarray(hopfield.lse_energy(pts, X, 2.0)) + 0.5 * np.sum(pts ** 2, -1)
    np.testing.assert_allclose([soft["values"][i, j] for i, j in idx], want, rtol=1e-5, atol=1e-5)
    # ... which is hopfield_energy up to its constants β⁻¹ log N + ½M².
    const = np.log(len(X)) / 2.0 + 0.5 * np.max(np.sum(X ** 2, -1))
    np.testing.assert_allclose(want + const, hopfield.hopfield_energy(pts, X, 2.0), rtol=1e-5, atol=1e-5)
    # any energy: −F/β + ½‖ξ‖² with F straight from ea.attend_with_energy at that point.
    for (i, j), p in zip(idx, pts):
        _, f = ea.attend_with_energy("sparsemax", p[None, None], X[:, None], X[:, None], beta=2.0)
        np.testing.assert_allclose(sparse["values"][i, j], -float(f) / 2.0 + 0.5 * p @ p, rtol=1e-5,
                                   atol=1e-5)
    # the plane is the identity in d = 2, and the patterns sit where they are.
    np.testing.assert_allclose(soft["patterns_2d"], X, atol=1e-6)
    assert is_png(res["path"])


def test_plane_through_two_patterns_in_high_d():
    X = ls.toy_patterns(5, dim=12, seed=1, radius=2.0)
    res = ls.landscape("softmax", X, beta=1.0, grid=6, plane=(0, 1), num_starts=0)
    origin, u, v = res["plane"]
    assert abs(u @ v) < 1e-6 and abs(np.linalg.norm(u) - 1) < 1e-6
    assert not res["off_plane"][:2].any() and res["off_plane"][2:].all()
    # grid points are in d = 12 and their energies match the direct call
    direct = ls.retrieval_energy("softmax", res["points"][2, 3], X, beta=1.0)
    np.testing.assert_allclose(res["values"][2, 3], direct, rtol=1e-6)


def test_softmax_trajectories_decrease_the_energy():
    X = ls.toy_patterns(5, seed=0)
    res = ls.landscape("softmax", X, beta=2.0, grid=10, seed=3)
    assert len(res["trajectories"]) == 6
    for traj, e in zip(res["trajectories"], res["trajectory_energies"]):
        assert len(traj) >= 2 and np.all(np.diff(e) <= 1e-5)
        np.testing.assert_allclose(e, ls.retrieval_energy("softmax", traj, X, beta=2.0), rtol=1e-5,
                                   atol=1e-5)
    # the generic update is the Hopfield update for softmax
    xi = res["starts"]
    np.testing.assert_allclose(ls.update("softmax", xi, X, beta=2.0), hopfield.update(xi, X, 2.0),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("energy", ["softmax", "sparsemax", "entmax"])
def test_basin_labels_at_patterns_and_centroid(energy):
    n = len(SEPARATED)
    at_patterns = ls.converge(energy, SEPARATED, SEPARATED, beta=8.0)
    labels = ls.label_states(at_patterns.result, SEPARATED, at_patterns.weights,
                             converged=at_patterns.converged)
    assert labels.tolist() == list(range(n))
    centroid = SEPARATED.mean(0, keepdims=True) + 0.05          # near the centroid, small β
    c = ls.converge(energy, centroid, SEPARATED, beta=0.05)
    assert ls.label_states(c.result, SEPARATED, c.weights, converged=c.converged).tolist() == [n]


def test_basins_picture_numbers(tmp_path):
    res = ls.plot_basins(SEPARATED, [("softmax", 0.05), ("softmax", 8.0), ("sparsemax", 2.0)],
                         grid=10, out=tmp_path / "b.png")     # even: no cell on the x1/x2 saddle line
    small, large, sparse = res["panels"]
    n = len(SEPARATED)
    assert small["labels"].shape == (10, 10) and np.all(small["labels"] == n)   # all metastable
    assert np.all(large["labels"] < n) and set(large["labels"].ravel()) == set(range(n))
    for panel in (large, sparse):
        # each cell's label is the pattern nearest its final state
        near = np.linalg.norm(panel["final"][..., None, :] - SEPARATED, axis=-1).argmin(-1)
        np.testing.assert_array_equal(panel["labels"], near)
    assert is_png(res["path"])


def test_beta_sweep_quality_increases_with_beta(tmp_path):
    res = ls.plot_beta_sweep(betas=[0.5, 4.0, 200.0], out=tmp_path / "s.png")
    acc, cos, meta = res["accuracy"], res["cosine"], res["metastable_fraction"]
    assert acc[0] < acc[-1] and acc[-1] == 1.0 and cos[0] < cos[-1]
    assert meta[0] == 1.0 and meta[-1] == 0.0
    assert res["metastable_fixed_points"][0] == 1                 # one global average
    assert is_png(res["path"])


def test_energy_curves_fall(tmp_path):
    res = ls.plot_curves(out=tmp_path / "c.png")                   # the report's own settings
    for e in res["softmax"].values():                              # Retrieval.energies
        assert e.shape == (16, 4) and np.all(np.diff(e, axis=0) <= 1e-5)
    for name in ("sparsemax", "entmax", "sigmoid", "distance"):    # CCCP: never up
        assert np.all(np.diff(res["others"][name], axis=0) <= 1e-4), name
    et = res["energy_transformer"]
    if et is not None:                                             # non-causal ET: exact descent
        assert np.all(np.diff(et["total"]) <= 1e-3)
    assert is_png(res["path"])


# ------------------------------------------------------------------ trained model and CLI


def test_model_pictures_from_a_tiny_run(tiny_run, tmp_path):
    from train.checkpoints.run import load_run
    _, tokenizer, model, step = load_run(tiny_run)
    res = ls.plot_model(model, tokenizer, tmp_path, step=step, grid=10)
    T = len(res["tokens"])
    assert T == 32 and res["truncated"]                            # the 67-byte prompt, cut and said so
    w = res["maps"][0].weights                                     # layer 0: (H, T, T)
    assert w.shape == (2, T, T) and res["maps"][0].name == "blocks.0.attn"
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)          # softmax rows
    assert np.allclose(np.triu(w, 1), 0.0)                          # causal
    heads = res["heads"]
    assert heads["codes"].shape == (2,) and set(heads["names"]) == {"global", "metastable", "single"}
    # a map whose every row sees every key gets classify_heads' own code per head
    full = ls.AttentionMap("m", None, None, w[:, -1:, :], np.ones((2, 1, T), bool), False, "softmax", {})
    codes, _ = hopfield.classify_heads(jnp.asarray(w[:, -1]))
    np.testing.assert_array_equal(ls.classify_map(full, min_keys=1)[0], np.asarray(codes))
    land = res["landscape"]
    assert land["values"].shape == (10, 10) and np.isfinite(land["values"]).all()
    for name in ("model_attention.png", "model_heads.png", "model_landscape.png"):
        assert is_png(tmp_path / name), name


def test_model_attention_is_the_layer_attention_of_every_zoo_model():
    """Pictures read attention from the layers themselves: each recorded map is the energy's
    ∂F/∂s on the q, k the layer used, rows sum to 1 over the keys the mask allows, and the
    hybrid's shared block, the BST's block attention and the ET's descent steps all appear."""
    from flax import nnx

    from models import build_model
    from train.config import load_config
    tokens = np.arange(40) % 50 + 10
    expect = {"transformer_small": ["blocks.0.attn", "blocks.1.attn"],
              "zamba_small": ["shared.0.attn (call 1 of 2)", "shared.0.attn (call 2 of 2)"],
              "bst_small": ["layers.0.attn, 2 blocks", "layers.2.cross, 2 blocks"],
              "energy_transformer": ["block (call 1 of 12)", "block (call 12 of 12)"]}
    for name, names in expect.items():
        cfg = load_config(f"configs/{name}.yaml")
        maps = ls.model_attention(build_model(cfg.model, rngs=nnx.Rngs(0)), tokens)
        for n in names:
            assert n in [m.name for m in maps], (name, [m.name for m in maps])
        for m in maps:
            H, Tq, Tk = m.weights.shape
            assert Tq == 40 and m.allowed.shape == (H, Tq, Tk)
            assert np.all(m.weights[~m.allowed] == 0), (name, m.name)
            sums = m.weights.sum(-1)
            sees = m.allowed.any(-1)
            np.testing.assert_allclose(sums[sees], 1.0, atol=1e-5, err_msg=f"{name} {m.name}")
            if not m.cross:       # self-attention: causal, and the same map from the recorded q, k
                assert not np.any(np.triu(m.allowed, 1)), (name, m.name)
                ref = ea.attention_weights(m.energy, jnp.asarray(m.q[None]), jnp.asarray(m.k[None]),
                                           mask=ea.explicit(jnp.asarray(m.allowed[None])), **m.params)
                np.testing.assert_allclose(np.asarray(ref[0]), m.weights, atol=1e-5, err_msg=f"{name} {m.name}")
    # BST blocks of 32: the second block's queries see none of the first block's keys
    cfg = load_config("configs/bst_small.yaml")
    att = ls.model_attention(build_model(cfg.model, rngs=nnx.Rngs(0)), tokens)[0]
    assert not att.allowed[:, 32:, :32].any() and att.allowed[:, 33, 32:34].all()


def _pngs_and_index(out):
    html = (out / "index.html").read_text()
    srcs = re.findall(r'<img src="([^"]+)"', html)
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert sorted(srcs) == pngs                                     # every picture, relative paths
    assert all(is_png(out / s) for s in srcs)
    return set(pngs)


def test_report_with_run_writes_every_picture_and_index(tiny_run, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["viz", "report", "--run", str(tiny_run), "--out", str(out), "--grid", "10"]) == 0
    pngs = _pngs_and_index(out)
    assert {"landscape.png", "basins.png", "curves.png", "beta_sweep.png", "model_attention.png",
            "model_heads.png", "model_landscape.png"} <= pngs


def test_report_without_run_writes_the_toy_pictures(tmp_path):
    out = tmp_path / "report"
    assert main(["viz", "report", "--out", str(out), "--grid", "10"]) == 0
    pngs = _pngs_and_index(out)
    assert {"landscape.png", "basins.png", "curves.png", "beta_sweep.png"} <= pngs
    assert not any(p.startswith("model_") for p in pngs)


def test_viz_on_a_missing_run_is_one_line_exit_2(tmp_path, tiny_run, capsys):
    missing = tmp_path / "nope"
    for argv in (["viz", "report", "--run", str(missing), "--out", str(tmp_path / "r")],
                 ["viz", "model", "--run", str(missing)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "not a run directory" in err[0], err
    assert not (tmp_path / "r" / "index.html").exists()
    # a run directory with its config but no checkpoint yet
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.yaml").write_text((tiny_run / "config.yaml").read_text())
    assert main(["viz", "model", "--run", str(empty), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint" in err[0], err
    # a head that does not exist
    assert main(["viz", "model", "--run", str(tiny_run), "--head", "5", "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--head 5" in err[0], err


@pytest.mark.parametrize("argv", [["viz", "--help"], ["viz", "report", "--help"],
                                  ["viz", "landscape", "--help"], ["viz", "basins", "--help"],
                                  ["viz", "curves", "--help"], ["viz", "beta-sweep", "--help"],
                                  ["viz", "model", "--help"]])
def test_viz_help_has_an_example(argv, capsys):
    assert main(argv) == 0
    assert "example:" in capsys.readouterr().out


@pytest.mark.parametrize("argv, words", [
    (["viz", "landscape", "--energy", "softmx"], ["softmx", "softmax"]),
    (["viz", "basins", "--beta", "-1"], ["--beta"]),
    (["viz", "beta-sweep", "--beta-min", "5", "--beta-max", "1"], ["--beta-min"]),
    (["viz", "model"], ["--run"]),
])
def test_viz_bad_input_is_one_line(argv, words, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(w in err[0] for w in words), err


def test_viz_landscape_subcommand_writes_the_png(tmp_path, capsys):
    out = tmp_path / "sub" / "plane.png"
    assert main(["viz", "landscape", "--energy", "softmax", "--dim", "8", "--beta", "1",
                 "--grid", "6", "--out", str(out)]) == 0
    assert is_png(out) and capsys.readouterr().out.strip() == str(out)


def test_captions_explain_missing_basins_and_unnormalised_weights():
    from energy_attn.landscape.toy import basin_notes, landscape_notes
    X = ls.toy_patterns(5, seed=0)
    res = ls.basins("sparsemax", X, beta=0.5, grid=12)
    notes = basin_notes([res])
    counts = np.bincount(res["labels"].ravel(), minlength=6)
    assert len(notes) == int((counts[:5] == 0).sum()) >= 1, (notes, counts)
    assert all("has no basin" in n for n in notes)
    assert basin_notes([ls.basins("softmax", X, beta=8.0, grid=12)]) == []       # every pattern retrieved
    panels = [ls.landscape(e, X, beta=2.0, grid=8) for e in ("softmax", "sigmoid")]
    notes = landscape_notes(panels)
    assert len(notes) == 1 and notes[0].startswith("sigmoid:")
