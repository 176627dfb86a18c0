"""Where XLA's persistent compilation cache goes (train/loop/compile_cache.py)."""
from pathlib import Path

from train.loop.compile_cache import DEFAULT_DIR, ENV, use_compile_cache


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
    its train step there, the second loads it (JAX's debug log says so) instead of
    compiling it again."""
    import os
    import subprocess
    import sys
    cache = tmp_path / "xla"
    env = {**os.environ, ENV: str(cache), "WANDB_MODE": "disabled",
           "JAX_DEBUG_LOG_MODULES": "jax._src.compiler"}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    cmd = [sys.executable, "-m", "train.cli", "train", "model.d_model=32", "model.num_layers=1",
           "model.num_heads=2", "data.seq_len=32", "model.max_seq_len=32", "train.batch_size=2",
           "train.steps=2", "train.eval_batches=1", "train.sample_tokens=4",
           "logging.progress_bar=false", "--debug"]       # --debug: third-party logs stay on
    repo = Path(__file__).resolve().parents[1]

    def run(name):
        return subprocess.run(cmd + [f"train.run_dir={tmp_path / name}"], env=env, cwd=repo,
                              check=True, capture_output=True, text=True).stderr
    first_log = run("a")
    first = {p.name for p in cache.iterdir()}
    assert any(name.startswith("jit_pure-") for name in first), first      # the train step
    assert "cache hit for 'jit_pure'" not in first_log
    second_log = run("b")
    assert "cache hit for 'jit_pure'" in second_log
    # Programs compiled under the threshold the first time may be added (a loaded machine
    # compiles slower); none disappears or changes its key.
    assert first <= {p.name for p in cache.iterdir()}
