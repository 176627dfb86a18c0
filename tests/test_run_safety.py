"""Fault injection on run directories: a run directory holds one experiment, verified
checkpoints, one writer at a time, and every failure is one line.

(Exact resume after kill -9 is tests/test_train.py::test_sigkill_then_rerun_resumes_exactly.)"""
import errno
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import jax.numpy as jnp
import pytest
from flax import nnx

from train.checkpoints.checkpoint import Checkpointer, CheckpointWarning, DiskFull
from train.cli import error_line, main
from train.config import load_config
from train.checkpoints.run_lock import RunLock, RunLocked, RunLockWarning, holder
from train.checkpoints.run_record import read_history

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.num_layers=1", "model.d_model=32", "model.num_heads=2", "model.max_seq_len=32",
        "data.seq_len=32", "train.batch_size=4", "train.eval_batches=2", "optim.warmup_steps=2",
        "logging.progress_bar=false", "logging.wandb=disabled", "train.sample_tokens=8",
        "train.eval_every=5", "checkpoint.every=5"]


@pytest.fixture
def corpus(tmp_path):
    """A small local corpus: starting a run skips building the built-in one."""
    docs = [f"document {i}: the energy of attention is a log-sum-exp over keys. " * 6
            for i in range(60)]
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return ["data.source=text", f"data.path={path}"]


def args(run, corpus, *extra):
    return [*TINY, *corpus, f"train.run_dir={run}", *extra]


def files_of(run: Path) -> dict:
    """Every file's size and mtime (the lock file aside: a writer always takes it)."""
    return {str(p.relative_to(run)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in run.rglob("*") if p.is_file() and p.name != ".lock"}


# ------------------------------------------------------------------ one config per run


def test_run_dir_is_named_after_the_config_and_the_experiment_keys_changed(tmp_path):
    assert load_config(None).train.run_dir == "runs/default"
    assert load_config(None, ["model.attention.energy=sigmoid"]).train.run_dir == \
        "runs/default__energy-sigmoid"
    # what does not change the experiment, or changes nothing, keeps the name
    assert load_config(None, ["model.attention.energy=softmax", "logging.log_every=1",
                              "mesh.seq=1", "train.eval_every=50"]).train.run_dir == "runs/default"
    # the order of overrides does not matter; an explicit run_dir wins
    a = load_config(None, ["train.seed=1", "optim.lr=0.001"]).train.run_dir
    assert a == load_config(None, ["optim.lr=0.001", "train.seed=1"]).train.run_dir
    assert "lr-0.001" in a and "seed-1" in a
    assert load_config(None, ["train.run_dir=runs/default", "train.steps=1200"]).train.run_dir == \
        "runs/default"
    # a config file without train.run_dir is named after the file
    cfg = tmp_path / "mine.yaml"
    cfg.write_text("model:\n  d_model: 64\n")
    assert load_config(str(cfg)).train.run_dir == "runs/mine"
    # keys that share their last part are named in full
    assert load_config(str(cfg), ["model.name=energy_transformer", "model.energy_transformer.steps=3",
                                  "train.steps=50"]).train.run_dir == \
        "runs/mine__name-energy_transformer__model.energy_transformer.steps-3__train.steps-50"


def test_readme_sequence_keeps_each_runs_config(tmp_path, monkeypatch, capsys, corpus):
    """`energy-attn train` then `energy-attn train model.attention.energy=sigmoid` (README):
    two run directories, each with its own config; eval of the first is unaffected."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text("\n".join(
        ["model: {num_layers: 1, d_model: 32, num_heads: 2, max_seq_len: 32}",
         f"data: {{seq_len: 32, source: text, path: '{corpus[1].split('=', 1)[1]}'}}",
         "train: {batch_size: 4, eval_batches: 2, steps: 5, eval_every: 5, sample_tokens: 8}",
         "optim: {warmup_steps: 2}", "checkpoint: {every: 5}",
         "logging: {progress_bar: false, wandb: disabled}"]) + "\n")
    assert main(["train", "tiny.yaml"]) == 0
    assert main(["eval", "--run", "runs/tiny"]) == 0
    before = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["train", "tiny.yaml", "model.attention.energy=sigmoid"]) == 0
    assert "energy: softmax" in (tmp_path / "runs/tiny/config.yaml").read_text()
    assert "energy: sigmoid" in (tmp_path / "runs/tiny__energy-sigmoid/config.yaml").read_text()
    capsys.readouterr()
    assert main(["eval", "--run", "runs/tiny"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == before


def test_a_changed_experiment_is_refused_then_allowed_with_the_flag_and_recorded(tmp_path, capsys,
                                                                                 corpus):
    run = tmp_path / "run"
    assert main(["train", *args(run, corpus, "train.steps=5")]) == 0
    untouched = files_of(run)
    capsys.readouterr()
    assert main(["train", *args(run, corpus, "train.steps=5", "model.attention.energy=sigmoid")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "model.attention.energy is 'softmax' there, 'sigmoid' here" in err[0]
    assert "train.run_dir" in err[0] and "--allow-config-change" in err[0]
    assert files_of(run) == untouched

    # Training longer is a recorded change, no flag needed.
    assert main(["train", *args(run, corpus, "train.steps=10")]) == 0
    assert "energy: softmax" in (run / "config.yaml").read_text()
    assert read_history(run)[-1]["changes"] == {"train.steps": [5, 10]}
    assert read_history(run)[-1]["step"] == 5
    # An experiment change with the flag: continues, and says so in the history.
    assert main(["train", *args(run, corpus, "train.steps=15", "optim.lr=0.001"),
                 "--allow-config-change"]) == 0
    last = read_history(run)[-1]
    assert last["step"] == 10 and last["how"] == "--allow-config-change"
    assert last["changes"]["optim.lr"] == [0.002, 0.001] and last["changes"]["train.steps"] == [10, 15]
    assert "lr: 0.001" in (run / "config.yaml").read_text()
    # Going below the step the run has reached is refused.
    capsys.readouterr()
    assert main(["train", *args(run, corpus, "train.steps=12", "optim.lr=0.001")]) == 2
    assert "past train.steps=12" in capsys.readouterr().err


def test_rerunning_a_finished_run_touches_nothing(tmp_path, capsys, corpus):
    run = tmp_path / "run"
    assert main(["train", *args(run, corpus, "train.steps=5")]) == 0
    untouched = files_of(run)
    capsys.readouterr()
    # the same experiment, with other logging settings: still complete
    assert main(["train", *args(run, corpus, "train.steps=5", "logging.log_every=1")]) == 0
    out = capsys.readouterr().out
    assert "already complete: step 5 of 5, val loss" in out and "nan" not in out
    assert files_of(run) == untouched
    assert holder(run) is None                          # and the lock was given back


# ------------------------------------------------------------------ verified checkpoints


def _flip_one_bit(path: Path, offset: int) -> bytes:
    data = bytearray(path.read_bytes())
    original = bytes(data)
    data[offset % len(data)] ^= 0x08
    path.write_bytes(bytes(data))
    return original


def test_a_flipped_bit_in_a_parameter_or_optimizer_array_is_caught_and_falls_back(tmp_path, capsys,
                                                                                   corpus):
    """Orbax restores a flipped bit inside an array as another number; the checksums do not."""
    from train.loop.trainer import _checkpoint_state, make_optimizer
    from models import build_model
    run = tmp_path / "run"
    assert main(["train", *args(run, corpus, "train.steps=10")]) == 0
    cfg = load_config(str(run / "config.yaml"), check=False)
    model = build_model(cfg.model, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, make_optimizer(cfg.optim, cfg.train.steps), wrt=nnx.Param)
    target = _checkpoint_state(model, optimizer)

    # Orbax packs the arrays into a few data files: flip bits across all of them until a
    # parameter and an optimizer slot have both been hit.
    data_files = sorted((run / "checkpoints/10/state").rglob("d/*"), key=lambda p: -p.stat().st_size)
    named = set()
    for path in data_files:
        size = path.stat().st_size
        for fraction in (0.2, 0.5, 0.8):
            original = _flip_one_bit(path, int(size * fraction))
            with Checkpointer(run) as ckpt, warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                step, state, meta = ckpt.restore_latest(target)
            path.write_bytes(original)
            assert step == 5                    # fell back to the previous checkpoint
            msg = " ".join(str(w.message) for w in caught if w.category is CheckpointWarning)
            assert "checkpoint step 10" in msg
            if "does not match its checksum" in msg:
                named.add(msg.split("array ", 1)[1].split("/", 1)[0])
                silent_flip = (path, int(size * fraction))     # one Orbax would have missed
        if {"model", "optimizer"} <= named:
            break
    assert {"model", "optimizer"} <= named, named

    # The trainer resumes from the older checkpoint and the damaged one is set aside.
    _flip_one_bit(*silent_flip)
    capsys.readouterr()
    assert main(["train", *args(run, corpus, "train.steps=12")]) == 0
    out, err = capsys.readouterr()
    warned = [l for l in err.splitlines() if "does not match its checksum" in l]
    assert len(warned) == 1 and warned[0].startswith("energy-attn: warning: array ")
    assert "resumed from step 5" in out
    assert (run / "checkpoints/10.unreadable").is_dir()
    with Checkpointer(run) as ckpt:
        assert ckpt.all_steps()[-1] == 12


def test_eval_and_sample_refuse_nonfinite_parameters(tmp_path, capsys, corpus):
    from train.loop.trainer import _checkpoint_state, make_optimizer
    from models import build_model
    run = tmp_path / "run"
    assert main(["train", *args(run, corpus, "train.steps=5")]) == 0
    cfg = load_config(str(run / "config.yaml"), check=False)
    model = build_model(cfg.model, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, make_optimizer(cfg.optim, cfg.train.steps), wrt=nnx.Param)
    with Checkpointer(run) as ckpt:
        step, state, meta = ckpt.restore_latest(_checkpoint_state(model, optimizer))
        nnx.update(model, state["model"])
        model.embed.embedding[...] = model.embed.embedding[...].at[3, 1].set(jnp.inf)
        ckpt.save(6, state=_checkpoint_state(model, optimizer), meta={**meta, "step": 6})
    capsys.readouterr()
    assert main(["eval", "--run", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "non-finite parameters (embed/embedding)" in err[0]
    assert main(["sample", "--run", str(run), "--max-new-tokens", "4"]) == 2
    assert "non-finite" in capsys.readouterr().err


# ------------------------------------------------------------------ one writer


def test_a_second_writer_is_refused_and_a_dead_writers_lock_is_taken_over(tmp_path, capsys, corpus):
    run = tmp_path / "run"
    with RunLock(run):                         # a trainer at work (flock: per open file, so
        with pytest.raises(RunLocked):         # this process conflicts with itself too)
            RunLock(run).acquire()
        assert holder(run)["pid"] == os.getpid()
        assert main(["train", *args(run, corpus, "train.steps=5")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"is being written by pid {os.getpid()} since" in err[0]
        assert not (run / "checkpoints").exists()
    assert holder(run) is None

    # A writer killed with -9 leaves its record but not its lock: the next one takes over.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / ".lock").write_text(json.dumps({"pid": dead.pid, "host": "x", "since": "earlier"}))
    with pytest.warns(RunLockWarning, match=f"from pid {dead.pid} on x since earlier, which is no"):
        RunLock(run).acquire().release()


def _lock_holders(dirs):
    return [holder(d) for d in dirs]


def test_killing_a_sweep_kills_its_trainers_and_a_rerun_respects_locks(tmp_path, corpus):
    """kill -9 of `energy-attn sweep --processes 2`: no trainer outlives it."""
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "train.cli", "sweep", "--over", "train.seed=0,1",
           "--processes", "2", "--out", str(out),
           *[f"--set={a}" for a in [*TINY, *corpus, "train.steps=100000", "checkpoint.every=100000"]]]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    sweep = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = [out / "seed-0", out / "seed-1"]
    deadline = time.time() + 120
    while time.time() < deadline and not all(_lock_holders(runs)):
        time.sleep(0.2)
    pids = [h["pid"] for h in _lock_holders(runs)]
    assert len(pids) == 2, "the trainers never started"

    # A second sweep over the same folders does not start trainers on them.
    from train.workflows.sweep import parse_over, plan, run_sweep
    over = [parse_over("train.seed=0,1")]
    sets = [*TINY, *corpus, "train.steps=100000", "checkpoint.every=100000"]
    lines = []
    points = run_sweep(plan(None, over, sets, out=out), over=over, sets=sets, processes=2,
                       log=lines.append)
    assert [p.status for p in points] == ["failed", "failed"]
    assert all("is being written by pid" in p.result["error"] for p in points), lines

    sweep.send_signal(signal.SIGKILL)
    sweep.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(_lock_holders(runs)):
        time.sleep(0.2)
    assert not any(_lock_holders(runs)), "a trainer outlived its sweep"
    assert not any(_alive(pid) for pid in pids)


def _alive(pid: int) -> bool:
    """Running, not a zombie (an orphan's exit status may wait for a reaper)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# ------------------------------------------------------------------ one line per failure


def test_restoring_into_another_model_is_at_most_three_lines(tmp_path, corpus):
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    base = [sys.executable, "-m", "train.cli"]
    first = subprocess.run([*base, "train", *args(run, corpus, "train.steps=5")], env=env, cwd=REPO,
                           capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    wider = subprocess.run([*base, "train", *args(run, corpus, "train.steps=10", "model.d_model=64"),
                            "--allow-config-change"], env=env, cwd=REPO, capture_output=True, text=True)
    assert wider.returncode == 2
    lines = wider.stderr.strip().splitlines()
    assert len(lines) <= 3, wider.stderr
    assert "has shape (32, 32) there and (64, 64) here" in wider.stderr
    assert "Traceback" not in wider.stderr

    # eval of a run whose config.yaml was edited by hand
    text = (run / "config.yaml").read_text().replace("d_model: 32", "d_model: 48")
    (run / "config.yaml").write_text(text)
    ev = subprocess.run([*base, "eval", "--run", str(run)], env=env, cwd=REPO, capture_output=True,
                        text=True)
    assert ev.returncode == 2 and len(ev.stderr.strip().splitlines()) <= 3, ev.stderr
    assert "does not fit the current model" in ev.stderr and "Traceback" not in ev.stderr


def test_divergence_says_whether_a_checkpoint_exists_and_skipping_has_a_limit(tmp_path, capsys, corpus):
    blow_up = ["optim.lr=1e9", "optim.min_lr=1e9", "optim.warmup_steps=0", "optim.grad_clip=1e9"]
    assert main(["train", *args(tmp_path / "a", corpus, "train.steps=40", *blow_up)]) == 1
    err = capsys.readouterr().err
    assert "No checkpoint was saved yet" in err and "last good checkpoint" not in err

    assert main(["train", *args(tmp_path / "b", corpus, "train.steps=40", "train.on_nonfinite=skip",
                                "train.max_skipped_steps=3", *blow_up)]) == 1
    err = capsys.readouterr().err
    assert "3 steps in a row had a non-finite loss" in err and "train.max_skipped_steps=3" in err

    from train.loop.trainer import train
    res = train(load_config(None, args(tmp_path / "c", corpus, "train.steps=6",
                                       "train.on_nonfinite=skip", *blow_up)), log=lambda *_: None)
    assert res.step == 6 and res.skipped_steps >= 1


def test_an_unwritable_run_directory_is_one_line(tmp_path, capsys, corpus):
    assert main(["train", *args("/proc/energy-attn-run", corpus, "train.steps=5")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write the run directory /proc/energy-attn-run" in err[0]


def test_a_full_disk_says_what_was_kept(tmp_path, monkeypatch):
    state = {"w": jnp.ones((4, 4))}
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state=state, meta={})
        ckpt.wait()

        def full(*a, **k):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(ckpt._mngr, "save", full)
        with pytest.raises(DiskFull) as e:
            ckpt.save(2, state=state, meta={})
    msg = str(e.value)
    assert "disk full while saving checkpoint step 2" in msg and "step 1, is kept" in msg
    assert error_line(e.value) == msg
    wrapped = RuntimeError("tensorstore write failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert error_line(wrapped).startswith("disk full: ")


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    import train.cli.config as cli_config

    def boom(args):
        raise KeyError("deep inside")
    monkeypatch.setattr(cli_config, "_config_reference", boom)
    assert main(["config", "reference"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["energy-attn config reference: KeyError: 'deep inside' (rerun with --debug for the "
                   "traceback)"]
    with pytest.raises(KeyError):
        main(["--debug", "config", "reference"])


def test_bench_checkpoint_reports_the_checksum_share(tmp_path, corpus):
    from train.bench.checkpoint import bench_checkpoint, format_report
    res = bench_checkpoint(load_config(None, args(tmp_path / "r", corpus)), rounds=1, log=lambda *_: None)
    assert 0 < res["median_ms"]["manifest"] < res["median_ms"]["save"]
    assert 0 < res["median_ms"]["verify"] < res["median_ms"]["restore"]
    report = format_report(res)
    assert "ms save (" in report and "ms restore (" in report and "%)" in report
