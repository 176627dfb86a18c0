"""`energy-attn sweep`: the grid, validation before any run, stable folder names, parallel
subprocess runs, skip-finished / resume-unfinished, and a failing run that does not stop
the sweep."""
import json

import pytest

from train.cli import main
from train.workflows.sweep import DONE_FILE, parse_over, plan, point_names, run_sweep, split_values

TINY = ["model.num_layers=1", "model.d_model=32", "model.num_heads=2", "data.seq_len=16",
        "train.batch_size=4", "train.steps=3", "optim.warmup_steps=1", "train.eval_every=3",
        "train.eval_batches=1", "logging.wandb=disabled", "logging.progress_bar=false",
        "train.sample_tokens=4"]


@pytest.fixture
def corpus(tmp_path):
    """A small local text file: starting a run skips building the built-in corpus."""
    docs = [f"document {i}: the energy of attention is a log-sum-exp. " * 8 for i in range(40)]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return ["data.source=text", f"data.path={tmp_path / 'corpus.jsonl'}"]


def quiet(*_):
    pass


def test_values_keys_and_names():
    assert split_values("a, b,[1, 2],{x: 1, y: 2},'c,d'") == ["a", "b", "[1, 2]", "{x: 1, y: 2}", "'c,d'"]
    assert parse_over("attention.energy=softmax,sigmoid") == ("model.attention.energy",
                                                              ["softmax", "sigmoid"])
    assert parse_over("train.seed=0,1")[0] == "train.seed"
    for bad in ("train.seed", "train.seed=", "train.seed=1,,2"):
        with pytest.raises(ValueError, match="KEY=V1,V2"):
            parse_over(bad)
    names = point_names(["model.attention.energy", "train.seed"], [("softmax", "0"), ("entmax", "1")])
    assert names == ["energy-softmax__seed-0", "energy-entmax__seed-1"]
    # Two keys with the same last part keep their full names; unsafe values collide -> hashed.
    assert point_names(["model.dropout", "data.dropout"], [("0", "1")]) == \
        ["model.dropout-0__data.dropout-1"]
    odd = point_names(["data.path"], [("a/b",), ("a b",)])
    assert len(set(odd)) == 2 and all("/" not in n and " " not in n for n in odd)


def test_every_point_is_validated_before_anything_runs(tmp_path):
    out = tmp_path / "sweep"
    with pytest.raises(ValueError, match="'sigmod'; did you mean 'sigmoid'"):
        plan(None, [parse_over("model.attention.energy=softmax,sigmod"), parse_over("train.seed=0,1")],
             TINY, out=out)
    with pytest.raises(ValueError, match="did you mean 'model.num_layers'"):
        plan(None, [parse_over("model.num_layer=1,2")], TINY, out=out)
    with pytest.raises(ValueError, match="optim.lr must be > 0"):
        plan(None, [parse_over("optim.lr=1e-3,-1")], TINY, out=out)
    with pytest.raises(ValueError, match="train.run_dir is set by the sweep"):
        plan(None, [parse_over("train.run_dir=a,b")], TINY, out=out)
    assert not out.exists()
    points = plan(None, [parse_over("attention.energy=softmax,linear"), parse_over("train.seed=0,1,2")],
                  TINY, out=out)
    assert len(points) == 6 and points[0].overrides == ["model.attention.energy=softmax", "train.seed=0"]
    assert not out.exists()


def test_cli_rejects_a_bad_grid_in_one_line(tmp_path, capsys):
    code = main(["sweep", "--over", "model.attention.energy=softmax,sigmod", "--over", "train.seed=0,1",
                 *[a for s in TINY for a in ("--set", s)], "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "sigmoid" in err[0]
    assert not (tmp_path / "s").exists()


def test_parallel_sweep_then_skip_finished_and_resume_unfinished(tmp_path, monkeypatch, corpus):
    out = tmp_path / "sweep"
    over = [parse_over("model.attention.energy=softmax,sigmoid")]
    sets = [*TINY, *corpus]
    points = plan(None, over, sets, out=out)
    lines = []
    run_sweep(points, over=over, sets=sets, processes=2, log=lines.append)
    assert [p.status for p in points] == ["done", "done"], lines
    for p in points:
        done = json.loads((p.run_dir / DONE_FILE).read_text())
        assert done["step"] == 3 and done["peak_rss_mb"] > 0
        assert (p.run_dir / "train.log").is_file()
    manifest = json.loads((out / "sweep.json").read_text())
    assert [r["status"] for r in manifest["runs"]] == ["done", "done"]
    assert manifest["over"] == {"model.attention.energy": ["softmax", "sigmoid"]}

    # A sweep killed after its second run saved its last checkpoint, before done.json:
    # the trainer finds the run complete and trains nothing.
    (points[1].run_dir / DONE_FILE).unlink()
    again = plan(None, over, sets, out=out)
    lines = []
    run_sweep(again, over=over, sets=sets, processes=1, log=lines.append, train_log=lines.append)
    text = "\n".join(lines)
    assert "[1/2] energy-softmax: finished earlier" in text
    assert "[2/2] energy-sigmoid: resuming" in text and "already complete: step 3 of 3" in text
    assert [p.status for p in again] == ["skipped", "done"]
    done = json.loads((points[1].run_dir / DONE_FILE).read_text())
    assert done["already_complete"]
    assert "peak_rss_mb" not in done         # it shared this process: its peak would include others'

    # Everything finished: a third run trains nothing.
    import train.loop.trainer
    monkeypatch.setattr(train.loop.trainer, "train", lambda *a, **k: pytest.fail("trained a finished run"))
    third = run_sweep(plan(None, over, sets, out=out), over=over, sets=sets, log=quiet)
    assert [p.status for p in third] == ["skipped", "skipped"]

    with pytest.raises(ValueError, match="different config or --set"):
        run_sweep(plan(None, over, [*sets, "train.steps=4"], out=out), over=over,
                  sets=[*sets, "train.steps=4"], log=quiet)


def test_a_failing_run_is_reported_and_the_sweep_goes_on(tmp_path):
    out = tmp_path / "sweep"
    over = [parse_over(f"data.path={tmp_path / 'missing.txt'},{tmp_path / 'gone.txt'}")]
    sets = [*TINY, "data.source=text"]
    points = plan(None, over, sets, out=out)          # valid configs; the files are missing at run time
    lines = []
    run_sweep(points, over=over, sets=sets, log=lines.append, train_log=quiet)
    assert [p.status for p in points] == ["failed", "failed"]          # the second still ran
    assert "missing.txt" in points[0].result["error"] and "gone.txt" in points[1].result["error"]
    assert sum("FAILED" in l for l in lines) == 2 and "2 failed" in lines[-1]
    manifest = json.loads((out / "sweep.json").read_text())
    assert [r["status"] for r in manifest["runs"]] == ["failed", "failed"]
    assert not any((p.run_dir / DONE_FILE).exists() for p in points)


def test_a_sweep_evaluates_each_run_several_times_unless_told_otherwise():
    over = [parse_over("train.seed=0,1")]
    points = plan(None, over, ["train.steps=100"], out="unused")
    assert all(p.overrides[-1] == "train.eval_every=20" for p in points)      # 100 // 5
    points = plan(None, over, ["train.steps=100", "train.eval_every=50"], out="unused")
    assert not any(o.startswith("train.eval_every") for p in points for o in p.overrides)
