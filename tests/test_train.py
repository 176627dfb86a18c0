"""The trainer end to end on the built-in corpus: outputs, determinism, exact resume
after SIGKILL, non-finite losses, data parallelism, and the CLI around it."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from train.cli import main
from train.config import load_config

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.num_layers=1", "model.d_model=32", "model.num_heads=2", "model.max_seq_len=32",
        "data.seq_len=32", "train.batch_size=4", "train.eval_batches=2", "optim.warmup_steps=2",
        "logging.progress_bar=false", "logging.wandb=disabled", "train.sample_tokens=20"]


def tiny(run_dir, *extra):
    return load_config(None, [*TINY, f"train.run_dir={run_dir}", *extra])


def metrics(run_dir, split="train"):
    rows = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("split", "train") == split]


def test_training_writes_everything_and_learns(tmp_path):
    from train.loop.trainer import train
    run = tmp_path / "run"
    result = train(tiny(run, "train.steps=40", "train.eval_every=20", "checkpoint.every=20",
                        "optim.lr=3e-3"), log=lambda *_: None)
    for name in ("config.yaml", "metrics.jsonl", "samples.txt", "loss.png"):
        assert (run / name).exists(), name
    assert (run / "checkpoints").is_dir()
    train_rows, val_rows = metrics(run), metrics(run, "val")
    assert train_rows[-1]["loss"] < train_rows[0]["loss"] - 0.5     # byte-level: starts near log(257)
    # the learning rate as the schedule gives it: warmup to 3e-3 over 2 steps, cosine after
    from train.loop.trainer import learning_rate_schedule
    lr_at = learning_rate_schedule(tiny(run, "optim.lr=3e-3").optim, 40)
    assert [r["lr"] for r in train_rows] == pytest.approx([float(lr_at(r["step"] - 1)) for r in train_rows])
    assert train_rows[0]["lr"] > train_rows[-1]["lr"] > 0
    # throughput: FLOP/s = XLA's FLOPs per step × steps/s, and MFU against a measured matmul
    from train.loop.throughput import matmul_peak_flops
    row = train_rows[-1]
    assert row["flop_per_s"] > 0 and 0 < row["mfu"] < 1.5
    assert row["flop_per_s"] / row["mfu"] == pytest.approx(matmul_peak_flops(), rel=1.0)   # same peak, noisy
    assert {"loss", "perplexity", "bits_per_byte"} <= set(val_rows[-1])
    assert val_rows[-1]["tokens"] == 2 * 4 * 32                       # eval_batches × batch × seq_len
    assert result.step == 40 and np.isfinite(result.val_loss)


def test_samples_during_training_say_how_they_were_drawn(tmp_path):
    from train.loop.trainer import train
    run = tmp_path / "run"
    train(tiny(run, "train.steps=4", "train.sample_every=2", "train.top_k=0"), log=lambda *_: None)
    text = (run / "samples.txt").read_text()
    headers = [line for line in text.splitlines() if line.startswith("=== step")]
    assert [h.split()[2] for h in headers] == ["2", "4"], text        # every 2 steps, and the end
    assert all("temperature 0.8" in h and "top_k all" in h and "20 tokens" in h for h in headers)


def test_a_run_shorter_than_the_warmup_warms_up_over_a_tenth_and_says_so(tmp_path, capsys):
    from train.loop.trainer import learning_rate_schedule
    cfg = load_config(None, ["train.steps=20"])                 # the default warmup is 50 steps
    lr_at = learning_rate_schedule(cfg.optim, 20)
    assert float(lr_at(2)) == pytest.approx(cfg.optim.lr)       # peak after 20 // 10 = 2 steps
    assert float(lr_at(1)) == pytest.approx(cfg.optim.lr / 2)
    assert main(["train", *TINY, "optim.warmup_steps=50", "train.steps=2",
                 f"train.run_dir={tmp_path / 'run'}"]) == 0
    assert "optim.warmup_steps=50 is longer than the 2-step run: warming up over 0 steps" in capsys.readouterr().out


def test_two_identical_runs_give_identical_losses(tmp_path):
    from train.loop.trainer import train
    a = train(tiny(tmp_path / "a", "train.steps=6", "logging.log_every=1"), log=lambda *_: None)
    b = train(tiny(tmp_path / "b", "train.steps=6", "logging.log_every=1"), log=lambda *_: None)
    assert [r["loss"] for r in metrics(tmp_path / "a")] == [r["loss"] for r in metrics(tmp_path / "b")]
    assert a.val_loss == b.val_loss


@pytest.mark.parametrize("variant", ["optim.grad_accum=2", "mesh.data=4"])
def test_same_losses_with_grad_accumulation_or_data_parallel_mesh(tmp_path, variant):
    """Two micro-batches, or the batch split over 4 devices: same step, same losses."""
    from train.loop.trainer import train
    one = train(tiny(tmp_path / "one", "train.steps=3", "logging.log_every=1"), log=lambda *_: None)
    other = train(tiny(tmp_path / "other", "train.steps=3", "logging.log_every=1", variant),
                  log=lambda *_: None)
    np.testing.assert_allclose([r["loss"] for r in metrics(tmp_path / "one")],
                               [r["loss"] for r in metrics(tmp_path / "other")], rtol=1e-5)
    np.testing.assert_allclose(one.val_loss, other.val_loss, rtol=1e-5)


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    from train.loop.trainer import TrainingDiverged, train
    run = tmp_path / "run"
    # A huge learning rate blows the parameters up within a few steps.
    cfg = tiny(run, "train.steps=200", "checkpoint.every=1", "optim.lr=1e9", "optim.min_lr=1e9",
               "optim.warmup_steps=0", "optim.grad_clip=1e9")
    with pytest.raises(TrainingDiverged, match="non-finite .*last good checkpoint"):
        train(cfg, log=lambda *_: None)
    from train.checkpoints.run import load_run
    _, _, model, step = load_run(run)
    from flax import nnx
    import jax
    assert step >= 1
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_nonfinite_skip_mode_keeps_going(tmp_path):
    from train.loop.trainer import train
    cfg = tiny(tmp_path / "run", "train.steps=8", "optim.lr=1e9", "optim.min_lr=1e9",
               "optim.warmup_steps=0", "optim.grad_clip=1e9", "train.on_nonfinite=skip")
    result = train(cfg, log=lambda *_: None)
    assert result.step == 8 and 1 <= result.skipped_steps < 8


def _cli(run_dir, steps, *extra):
    return [sys.executable, "-m", "train.cli", "train", *TINY, f"train.run_dir={run_dir}",
            f"train.steps={steps}", "checkpoint.every=5", "logging.log_every=1", *extra]


def _final_params(run_dir):
    from flax import nnx
    import jax
    from train.checkpoints.run import load_run
    _, _, model, step = load_run(run_dir)
    return step, [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


def test_sigkill_then_rerun_resumes_exactly(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    steps = 40
    straight = tmp_path / "straight"
    subprocess.run(_cli(straight, steps), check=True, env=env, cwd=REPO, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(killed, steps), env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:   # wait until a checkpoint past step 10 exists, then kill -9
        done = [p for p in (killed / "checkpoints").glob("*") if p.name.isdigit() and int(p.name) >= 15]
        if done or proc.poll() is not None:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = subprocess.run(_cli(killed, steps), env=env, cwd=REPO, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from step" in resumed.stdout + resumed.stderr

    step_a, params_a = _final_params(straight)
    step_b, params_b = _final_params(killed)
    assert step_a == step_b == steps
    for a, b in zip(params_a, params_b):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    # the last logged training loss is the same too
    assert metrics(straight)[-1]["loss"] == pytest.approx(metrics(killed)[-1]["loss"], abs=1e-6)


def test_cli_train_eval_sample(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, f"train.run_dir={run}", "train.steps=4"]) == 0
    assert json.loads((run / "done.json").read_text())["peak_rss_mb"] > 0     # its own process: measured
    assert main(["eval", "--run", str(run), "--batches", "2"]) == 0
    res = capsys.readouterr()
    assert "loss" in res.out and "bits_per_byte" in res.out
    assert "latest checkpoint (step 4)" in res.err and "256 tokens (2 batches)" in res.err   # 2 × 4 × 32
    assert main(["eval", "--run", str(run), "--batches", "all"]) == 0
    assert "of the validation split's" in capsys.readouterr().err
    assert main(["sample", "--run", str(run), "--prompt", "The energy", "--max-new-tokens", "8",
                 "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("The energy")
    # past the 32-token context the window slides, and says so
    assert main(["sample", "--run", str(run), "--prompt", "The energy", "--max-new-tokens", "60",
                 "--temperature", "0"]) == 0
    res = capsys.readouterr()
    assert "sliding window" in res.err
    assert len(res.out.rstrip("\n")) >= len("The energy") + 60 - 10, res.out   # 60 tokens, not 22


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "model.num_layer=2"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'model.num_layers'" in err and "Traceback" not in err
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    assert main(["eval", "--run", str(tmp_path / "nothing")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    small = tmp_path / "small.txt"
    small.write_text("A corpus far shorter than one block. " * 5)
    assert main(["train", *TINY, f"train.run_dir={tmp_path / 'r'}", "data.source=text",
                 f"data.path={small}", "data.seq_len=512", "model.max_seq_len=512"]) == 2
    err = capsys.readouterr().err
    assert "seq_len" in err and "Traceback" not in err


def test_bench_train_recipe_times_the_whole_command(tmp_path):
    import yaml
    from train.bench.training import bench_recipe, format_recipe
    config = tmp_path / "tiny.yaml"
    cfg = {}
    for item in TINY:
        key, value = item.split("=", 1)
        section, *rest = key.split(".")
        node = cfg.setdefault(section, {})
        for part in rest[:-1]:
            node = node.setdefault(part, {})
        node[rest[-1]] = yaml.safe_load(value)
    config.write_text(yaml.safe_dump(cfg))
    versus = f"{sys.executable} -c \"import time; time.sleep(0.2); print('step 6: val loss 2.5000')\""
    res = bench_recipe(str(config), ["train.steps=6"], versus=versus, rounds=2, log=lambda *_: None)
    assert len(res["ours"]) == len(res["versus"]) == len(res["ratios"]) == 2
    ours = res["ours"][0]
    assert ours["steps"] == 6 and 0 < ours["first_step_s"] < ours["wall_s"]
    assert np.isfinite(ours["val_loss"]) and ours["median_tokens_per_s"] > 0
    assert res["versus"][1]["val_loss"] == 2.5 and res["versus"][0]["wall_s"] >= 0.2
    assert res["ratios"][1] == res["ours"][1]["wall_s"] / res["versus"][1]["wall_s"]
    text = format_recipe(res)
    assert "first step after" in text and "last val loss 2.5000" in text
    assert f"ratio ours / versus: {res['ratio']:.2f} median of 2 round(s)" in text


def test_bench_train_pairs_identical_models(tmp_path):
    """`energy-attn bench train` compares like with like: same init and batches, so the
    energy model and the dot_product_attention model end at the same loss; the model with
    the attention core left out trains too, on a different loss, and gives the core's share."""
    from train.bench.training import bench_train, format_report
    res = bench_train(tiny(tmp_path), steps=3, rounds=2, log=lambda *_: None)
    assert (res["energy"]["steps"] == res["dot_product_attention"]["steps"]
            == res["attention_core_left_out"]["steps"] == 1 + 2 * 2)
    assert res["loss_gap"] < 1e-5
    assert np.isfinite(res["ratio"]) and res["ratio"] > 0
    # Without the core the model computes something else: its loss must differ.
    assert abs(res["attention_core_left_out"]["final_loss"] - res["energy"]["final_loss"]) > 1e-4
    assert np.isfinite(res["attention_share"]) and res["attention_share"] < 1
    report = format_report(res)
    assert "target <= 1.0" in report and "attention core's share of the energy step" in report


def test_step_flops_is_xlas_count_of_the_step():
    import jax
    import jax.numpy as jnp

    from train.loop.throughput import step_flops
    f = jax.jit(lambda a, b: a @ b)
    assert step_flops(f, jnp.ones((64, 32)), jnp.ones((32, 16))) == 2 * 64 * 32 * 16
