"""`energy-attn compare`: table, CSV, curves and HTML from run directories, with crashed
runs and runs that logged different metrics reported per run, not fatal."""
import csv
import json
import statistics

import pytest

from train.cli import main
from train.workflows.compare import aggregate, compare, expand, summarize
from train.config import dump_yaml, load_config

TINY = ["model.num_layers=1", "model.d_model=32", "model.num_heads=2", "data.seq_len=16",
        "train.steps=20", "optim.warmup_steps=2"]


def fake_run(root, name, *, energy="softmax", seed=0, val=None, train=None, done=None,
             metrics=True, wandb=None):
    """A run directory as the trainer leaves it (config.yaml, metrics.jsonl, ...)."""
    run = root / name
    dump_yaml(load_config(None, [*TINY, f"model.attention.energy={energy}", f"train.seed={seed}",
                                 f"train.run_dir={run}"]), run / "config.yaml")
    if metrics:
        rows = [{"step": s, "split": "train", "loss": l, "tokens_per_s": t}
                for s, l, t in (train or [])]
        rows += [{"step": s, "split": "val", **m} for s, m in (val or [])]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if done is not None:
        (run / "done.json").write_text(json.dumps(done))
    if wandb is not None:
        (run / "wandb_run.json").write_text(json.dumps(wandb))
    return run


@pytest.fixture
def runs(tmp_path):
    train = [(1, 5.0, 100.0), (10, 4.0, 2000.0), (20, 3.0, 3000.0)]
    a = fake_run(tmp_path, "a", seed=0, train=train,
                 val=[(10, {"loss": 3.5, "bits_per_byte": 5.0}), (20, {"loss": 3.1, "bits_per_byte": 4.5})],
                 done={"params": 12345, "peak_rss_mb": 512.0},
                 wandb={"id": "abc123", "mode": "offline", "offline_dir": "/x/wandb/offline-run-1"})
    b = fake_run(tmp_path, "b", seed=1, train=train,
                 val=[(20, {"loss": 3.3, "bits_per_byte": 4.7})], done={"params": 12345},
                 wandb={"id": "def456", "mode": "online", "url": "https://wandb.ai/u/p/runs/def456"})
    crashed = fake_run(tmp_path, "crashed", energy="sigmoid", metrics=False)
    partial = fake_run(tmp_path, "partial", energy="sigmoid", train=train[:2],
                       val=[(10, {"loss": 3.9})])          # stopped at step 10; no bits_per_byte
    return [a, b, crashed, partial]


def test_report_files_and_values(runs, tmp_path):
    out = tmp_path / "cmp"
    rows = compare(runs, out, group_by="model.attention.energy", log=lambda *_: None)
    for name in ("results.md", "results.csv", "curves.png", "report.html"):
        assert (out / name).stat().st_size > 0, name
    by = {r["run"]: r for r in rows}
    assert by["a"]["val_loss"] == 3.1 and by["a"]["bits_per_byte"] == 4.5
    assert by["a"]["tokens_per_s"] == statistics.median([2000.0, 3000.0])   # step 1 = compile
    assert by["a"]["peak_mem_mb"] == 512.0 and by["a"]["params"] == 12345
    assert by["crashed"]["val_loss"] is None
    assert any("metrics.jsonl" in m for m in by["crashed"]["missing"])
    assert any("final val loss" in m for m in by["crashed"]["missing"])
    assert any("step 10 of 20" in m for m in by["partial"]["missing"])
    assert any("bits_per_byte" in m for m in by["partial"]["missing"])       # others logged it
    assert not any("val" in m for m in by["a"]["missing"])

    with open(out / "results.csv") as f:
        table = {r["run"]: r for r in csv.DictReader(f)}
    assert float(table["b"]["val_loss"]) == 3.3 and table["crashed"]["val_loss"] == ""
    md = (out / "results.md").read_text()
    assert "| crashed | sigmoid |" in md and "Missing" in md
    assert md.count("peak memory (measured only") == 1                    # one line per reason
    assert "`b`, `crashed`, `partial`" in md
    html = (out / "report.html").read_text()
    assert 'href="https://wandb.ai/u/p/runs/def456"' in html
    assert "wandb sync /x/wandb/offline-run-1" in html and "curves.png" in html

    assert "abc123" not in md.split("Missing")[0]                          # W&B runs below the table
    assert html.index("Weights &amp; Biases") > html.index("Loss curves")

    groups = {g["group"]: g for g in aggregate(rows, "model.attention.energy")}
    assert groups["softmax"]["val_loss"] == pytest.approx(statistics.fmean([3.1, 3.3]))
    assert groups["softmax"]["val_loss_std"] == pytest.approx(statistics.stdev([3.1, 3.3]))
    assert groups["sigmoid"]["val_loss_n"] == 1 and groups["sigmoid"]["runs"] == 2


def test_parameter_count_from_the_config_matches_the_built_model(runs):
    from flax import nnx

    from models import build_model, num_params
    from train.config import load_config
    row = summarize(runs[2])                                   # no done.json: counted from config
    cfg = load_config(str(runs[2] / "config.yaml"), check=False)
    assert row["params"] == num_params(build_model(cfg.model, rngs=nnx.Rngs(0)))


def test_sweep_folder_expands_to_its_runs(runs, tmp_path):
    (tmp_path / "sweep.json").write_text(json.dumps({"runs": [{"name": "a"}, {"name": "b"},
                                                              {"name": "not-started"}]}))
    assert [p.name for p in expand([tmp_path])] == ["a", "b"]


def test_not_a_run_directory_is_one_clear_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a run directory" in err[0]
    assert main(["compare", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no run directories"):
        expand([])


def test_group_mean_curve_is_over_the_steps_every_run_logged():
    from train.workflows.compare import mean_curve
    steps, mean, std = mean_curve([[(1, 2.0), (2, 4.0)], [(1, 4.0), (2, 6.0), (3, 1.0)]])
    assert list(steps) == [1, 2] and list(mean) == [3.0, 5.0]
    assert std == pytest.approx([2 ** 0.5, 2 ** 0.5])                      # sample std
    steps, mean, std = mean_curve([[(5, 1.0)]])
    assert list(steps) == [5] and list(std) == [0.0]
