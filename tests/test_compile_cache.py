"""Where XLA's persistent compilation cache goes (train/compile_cache.py)."""
from pathlib import Path

from train.compile_cache import DEFAULT_DIR, ENV, use_compile_cache


def test_default_directory_and_threshold():
    env = {}
    assert use_compile_cache(env) == str(DEFAULT_DIR.expanduser())
    assert env["JAX_COMPILATION_CACHE_DIR"] == str(DEFAULT_DIR.expanduser())
    assert float(env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]) > 0


def test_off_and_own_directory(tmp_path):
    for off in ("off", "0", "OFF", "none"):
        env = {ENV: off}
        assert use_compile_cache(env) is None and "JAX_COMPILATION_CACHE_DIR" not in env
    env = {ENV: str(tmp_path / "xla")}
    assert use_compile_cache(env) == str(tmp_path / "xla")


def test_jax_own_setting_wins(tmp_path):
    env = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path), ENV: "/elsewhere"}
    assert use_compile_cache(env) == str(tmp_path)
    assert env["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path)


def test_a_rerun_reads_the_cache(tmp_path):
    """Two short trainings in child processes with one cache directory: the first writes
    compiled programs there, the second finds them (no new files)."""
    import os
    import subprocess
    import sys
    cache = tmp_path / "xla"
    env = {**os.environ, ENV: str(cache), "WANDB_MODE": "disabled"}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    cmd = [sys.executable, "-m", "train.cli", "train", "model.d_model=32", "model.num_layers=1",
           "model.num_heads=2", "data.seq_len=32", "model.max_seq_len=32", "train.batch_size=2",
           "train.steps=2", "train.eval_batches=1", "train.sample_tokens=4",
           "logging.progress_bar=false"]
    repo = Path(__file__).resolve().parents[1]
    subprocess.run(cmd + [f"train.run_dir={tmp_path / 'a'}"], env=env, cwd=repo, check=True,
                   capture_output=True)
    first = sorted(p.name for p in cache.iterdir())
    assert first, "the first run cached nothing"
    subprocess.run(cmd + [f"train.run_dir={tmp_path / 'b'}"], env=env, cwd=repo, check=True,
                   capture_output=True)
    assert sorted(p.name for p in cache.iterdir()) == first
