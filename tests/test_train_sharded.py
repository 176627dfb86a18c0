"""Sequence-sharded training (mesh {data, seq}, tree-reduced attention) gives the
same losses as one device, in one process with 8 simulated devices and across two
processes joined by jax.distributed on 127.0.0.1."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from train.config import load_config
from train.loop.distributed import distributed_settings

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.num_layers=2", "model.d_model=32", "model.num_heads=2", "model.max_seq_len=64",
        "data.seq_len=64", "train.batch_size=4", "train.eval_batches=1", "optim.warmup_steps=1",
        "logging.progress_bar=false", "logging.wandb=disabled", "train.sample_tokens=8",
        "train.steps=2", "logging.log_every=1", "train.eval_every=2", "checkpoint.every=2"]


def losses(run_dir):
    rows = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return np.array([r["loss"] for r in rows])        # train step 1, step 2, then val


def train_losses(overrides, run_dir):
    """Train TINY + overrides in-process; the losses it logged."""
    from train.loop.trainer import train
    train(load_config(None, [*TINY, *overrides, f"train.run_dir={run_dir}"]), log=lambda *_: None)
    return losses(run_dir)


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    from train.loop.trainer import train
    run = tmp_path_factory.mktemp("one") / "run"
    train(load_config(None, [*TINY, f"train.run_dir={run}"]), log=lambda *_: None)
    return losses(run)


@pytest.mark.parametrize("mesh", [["mesh.data=2", "mesh.seq=4"],                   # dual-chunk layout
                                  ["mesh.seq=8", "mesh.seq_layout=contiguous"]])
def test_sequence_sharded_training_matches_one_device(tmp_path, one_device, mesh):
    from train.loop.trainer import train
    train(load_config(None, [*TINY, *mesh, f"train.run_dir={tmp_path}"]), log=lambda *_: None)
    got = losses(tmp_path)
    assert len(got) == len(one_device) == 3
    np.testing.assert_allclose(got, one_device, rtol=0, atol=1e-5)


def test_two_processes_train_like_one_device(tmp_path, one_device):
    with socket.socket() as s:                      # a free port for the coordinator
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu"}
    args = [*TINY, "mesh.data=2", "mesh.seq=4", f"train.run_dir={tmp_path}"]
    procs = [subprocess.Popen(
        [sys.executable, "-m", "train.cli", "train", *args, "--coordinator", f"127.0.0.1:{port}",
         "--num-processes", "2", "--process-id", str(i)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    assert "done: step 2" in outs[0] and "done:" not in outs[1]   # process 0 speaks for the run
    np.testing.assert_allclose(losses(tmp_path), one_device, rtol=0, atol=1e-5)


def test_sequence_length_must_split_into_chunks():
    with pytest.raises(ValueError, match=r"data.seq_len=60 is not divisible by 8.*mesh.seq=4"):
        load_config(None, ["data.seq_len=60", "model.max_seq_len=64", "mesh.seq=4"])
    load_config(None, ["data.seq_len=60", "model.max_seq_len=64", "mesh.seq=4",
                       "mesh.seq_layout=contiguous"])      # 60 = 4 x 15: fine without dual chunks


def test_distributed_settings_from_flags_and_environment(monkeypatch):
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(var, raising=False)
    assert distributed_settings() is None
    assert distributed_settings("127.0.0.1:1234", 2, 1) == {
        "coordinator_address": "127.0.0.1:1234", "num_processes": 2, "process_id": 1}
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:99")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAX_PROCESS_ID", "3")
    assert distributed_settings()["process_id"] == 3
    assert distributed_settings(process_id=0)["process_id"] == 0          # a flag beats the env
    with pytest.raises(ValueError, match="must be in"):
        distributed_settings(process_id=4)
    monkeypatch.delenv("JAX_NUM_PROCESSES")
    with pytest.raises(ValueError, match="missing --num-processes"):
        distributed_settings()
    with pytest.raises(ValueError, match="host:port"):
        distributed_settings("localhost", 2, 0)


def test_train_cli_rejects_incomplete_distributed_flags(capsys):
    from train.cli import main
    code = main(["train", "train.steps=1", "optim.warmup_steps=0", "--coordinator", "127.0.0.1:1"])
    assert code == 2
    assert "missing --num-processes" in capsys.readouterr().err


def test_sharded_step_benchmark_compares_like_with_like():
    from train.bench.sharded import bench_sharded_step, format_report
    res = bench_sharded_step(["data.seq_len=64", "model.max_seq_len=64", "model.d_model=32",
                              "model.num_heads=2", "mesh.seq=4"], steps=2, log=lambda *_: None)
    assert res["loss_gap"] < 1e-5                  # same init, same batches, same losses
    assert res["names"] == ["one device", "seq-sharded x4"]
    assert "ratio" in format_report(res)


def test_bench_decode_cli_small(capsys):
    from train.cli import main
    assert main(["bench", "decode", "--tokens", "256", "--heads", "2", "--head-dim", "8",
                 "--devices", "4", "--rounds", "1", "--skip-train"]) == 0
    out = capsys.readouterr().out
    assert "tree" in out and "ring" in out and "constant in T" in out and "Not a target" in out
