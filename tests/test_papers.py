"""The papers/ reproductions stay runnable: each script's --quick mode end to end."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_hopfield_reproduction_quick(tmp_path):
    out = tmp_path / "hopfield"
    subprocess.run([sys.executable, str(REPO / "papers" / "hopfield" / "run.py"), "--quick", "--out", str(out)],
                   check=True, cwd=REPO, capture_output=True, timeout=600)
    results = json.loads((out / "results.json").read_text())
    assert results
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert {"basins.png", "capacity.png", "digits.png"} <= set(pngs)


def test_energy_zoo_quick(tmp_path):
    """papers/energy_zoo --quick: a 2-energy sweep, its compare report and the summary table."""
    out = tmp_path / "zoo"
    subprocess.run([sys.executable, str(REPO / "papers" / "energy_zoo" / "run.py"), "--quick",
                    "--quiet", "--out", str(out), "--runs", str(tmp_path / "runs")],
                   check=True, cwd=REPO, capture_output=True, timeout=600)
    res = json.loads((out / "results.json").read_text())
    groups = {g["group"]: g for g in res["datasets"]["builtin"]["groups"]}
    assert set(groups) == {"softmax", "sigmoid"}
    assert all(g["val_loss_n"] == 1 and 0 < g["val_loss"] < 10 for g in groups.values())
    for name in ("report.html", "curves.png", "results.csv"):
        assert (out / "builtin" / name).is_file(), name
    assert "| softmax |" in (out / "results.md").read_text()


def test_model_zoo_quick(tmp_path):
    """papers/model_zoo --quick: all three zoo models train in their own processes and
    land in the table; a model that fails to train would show up as skipped."""
    out = tmp_path / "model_zoo"
    subprocess.run([sys.executable, str(REPO / "papers" / "model_zoo" / "run.py"), "--quick", "--steps", "2",
                    "--settings", "short", "--out", str(out)], check=True, cwd=REPO, capture_output=True,
                   timeout=600)
    res = json.loads((out / "results.json").read_text())
    assert set(res) >= {"short"} and "long" not in res
    models = res["short"]["models"]
    assert set(models) == {"transformer", "zamba", "bst"}
    for name, r in models.items():
        assert "skipped" not in r, f"{name}: {r.get('skipped')}"
        assert 0 < r["val_loss"] < 10 and r["params"] > 0 and r["peak_rss_bytes"] > 0
        assert len(r["val_curve"]["seconds"]) == len(r["val_curve"]["loss"]) >= 1   # the wall-clock axis
        assert all(sec > 0 for sec in r["val_curve"]["seconds"])
    readme = (out / "README.md").read_text()
    assert all(f"| {name} |" in readme for name in models) and "**short**" in readme
    assert (out / "loss_curves.png").is_file()


def test_model_zoo_overrides(tmp_path):
    """--models/--set: one model with a config override; the override is recorded in
    results.json, in the table's heading and in the command the README shows."""
    out = tmp_path / "zoo_mamba1"
    subprocess.run([sys.executable, str(REPO / "papers" / "model_zoo" / "run.py"), "--quick", "--steps", "1",
                    "--settings", "short", "--models", "zamba", "--set", "model.ssm.kind=mamba1",
                    "--out", str(out)], check=True, cwd=REPO, capture_output=True, timeout=600)
    block = json.loads((out / "results.json").read_text())["short"]
    assert block["settings"]["overrides"] == ["model.ssm.kind=mamba1"]
    assert list(block["models"]) == ["zamba"] and "val_loss" in block["models"]["zamba"]
    readme = (out / "README.md").read_text()
    assert "seed 0, model.ssm.kind=mamba1." in readme
    assert "--models zamba --set model.ssm.kind=mamba1" in readme
    run_dir_config = (out / "runs" / "short" / "zamba" / "config.yaml").read_text()
    assert "kind: mamba1" in run_dir_config


def _zoo_results(path: Path, seed: int, losses: dict, quick: bool = False, overrides=(),
                 setting: str = "short") -> None:
    path.mkdir(parents=True, exist_ok=True)
    models = {name: {"val_loss": v} for name, v in losses.items()}
    models["bst"] = {"skipped": "configs/bst_small.yaml not found"}
    path.joinpath("results.json").write_text(json.dumps(
        {setting: {"settings": {"seed": seed, "quick": quick, "overrides": list(overrides)},
                   "models": models}}))


def test_model_zoo_seed_table(tmp_path):
    """papers/model_zoo/seeds.py: per-seed losses, mean ± std and the paired difference to
    the transformer, from the main results.json and seeds/*/results.json, one table per
    setting; quick runs and skipped models left out; the same seed twice is refused."""
    sys.path.insert(0, str(REPO / "papers" / "model_zoo"))
    try:
        import seeds
    finally:
        sys.path.pop(0)
    _zoo_results(tmp_path, 0, {"transformer": 1.20, "zamba": 1.21})
    _zoo_results(tmp_path / "seeds" / "seed1", 1, {"transformer": 1.22, "zamba": 1.24})
    _zoo_results(tmp_path / "seeds" / "seed2", 2, {"transformer": 1.18, "zamba": 1.18})
    _zoo_results(tmp_path / "seeds" / "quick", 3, {"transformer": 9.0, "zamba": 9.0}, quick=True)
    _zoo_results(tmp_path / "seeds" / "mamba1", 0, {"zamba": 8.0}, overrides=["model.ssm.kind=mamba1"])
    _zoo_results(tmp_path / "seeds" / "seed1_long", 1, {"transformer": 1.40, "zamba": 1.30}, setting="long")
    (tmp_path / "README.md").write_text("# zoo\n\n<!-- seeds short -->\nold\n<!-- /seeds short -->\n"
                                        "middle\n<!-- seeds long -->\nold\n<!-- /seeds long -->\ntail\n")
    assert seeds.main(["--dir", str(tmp_path)]) == 0
    text = (tmp_path / "README.md").read_text()
    assert "old" not in text and "\nmiddle\n" in text and text.endswith("tail\n")
    short, long = text.split("middle")
    # The long table holds only the long-setting file, one seed: no paired test.
    assert "seeds/seed1_long" not in short and "1 results file: seeds/seed1_long/results.json" in long
    assert "| zamba | 1 | 1.3000 | 1.3000 | fewer than 2 shared seeds |" in long
    text = short
    row = next(line for line in text.splitlines() if line.startswith("| zamba"))
    assert "1.2100, 1.2400, 1.1800" in row and "1.2100 ± 0.0300" in row
    assert "+0.0100 (per seed +0.0100, +0.0200, +0.0000" in row      # zamba - transformer, paired
    assert "bst" not in text and "9.0" not in text and "8.0" not in text
    _zoo_results(tmp_path / "seeds" / "again", 1, {"transformer": 1.0, "zamba": 1.0})
    with pytest.raises(ValueError, match="seed 1 of transformer"):
        seeds.main(["--dir", str(tmp_path), "--no-write"])


def test_tree_attention_quick(tmp_path):
    """papers/tree_attention --quick: every method at every (devices, tokens) of the small
    grid, with a time, communication read from the HLO, and the figures."""
    out = tmp_path / "tree"
    subprocess.run([sys.executable, str(REPO / "papers" / "tree_attention" / "run.py"), "--quick", "--out", str(out)],
                   check=True, cwd=REPO, capture_output=True, timeout=600)
    res = json.loads((out / "results.json").read_text())
    assert res["quick"] is True
    cells = {(r["devices"], r["tokens"], r["method"]) for r in res["rows"]}
    assert cells == {(p, t, m) for p in (2, 4) for t in (4096, 16384) for m in ("tree", "ring", "allgather")}
    assert all(r["median_s"] > 0 and r["comm_count"] > 0 for r in res["rows"])
    # The tree's bytes on the wire do not depend on the KV length (its point).
    tree = {(r["devices"], r["tokens"]): r["comm_wire_bytes"] for r in res["rows"] if r["method"] == "tree"}
    assert tree[2, 4096] == tree[2, 16384] and tree[4, 4096] == tree[4, 16384]
    assert all((out / png).is_file() for png in res["figures"])
    assert "tree" in (out / "results.md").read_text()


def test_tree_attention_stability_smoke(tmp_path):
    """papers/tree_attention/stability.py at one small setting, 2 rounds: tree and all-gather
    take turns and every round gives a ratio."""
    subprocess.run([sys.executable, str(REPO / "papers" / "tree_attention" / "stability.py"), "--rounds", "2",
                    "--reruns", "1", "--settings", "2:4096", "--out", str(tmp_path)],
                   check=True, cwd=REPO, capture_output=True, timeout=600)
    res = json.loads((tmp_path / "stability.json").read_text())
    [row] = res["rows"]
    assert (row["devices"], row["tokens"], row["rounds"]) == (2, 4096, 2)
    assert len(row["ratios"]) == 2 and all(r > 0 for r in row["ratios"])
    assert "| 2 | 4,096 |" in (tmp_path / "stability.md").read_text()
