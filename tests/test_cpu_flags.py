"""The XLA:CPU flag the CLI adds (train/loop/cpu_flags.py): when it is added, and that this
jaxlib accepts it (XLA aborts the process on an unknown flag)."""
import os
import subprocess
import sys
from importlib import metadata

from train.loop.cpu_flags import ENV, SETTING, use_cpu_flags


def test_added_once_and_only_where_measured():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    assert use_cpu_flags(env, jaxlib_version="0.10.2") == SETTING
    assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=4 {SETTING}"
    assert use_cpu_flags(env, jaxlib_version="0.10.2") is None          # already there
    assert env["XLA_FLAGS"].count("ynn_fusion_type") == 1
    for version in ("0.9.1", "0.12.0", "1.0"):                          # not measured: untouched
        env = {}
        assert use_cpu_flags(env, jaxlib_version=version) is None and env == {}


def test_user_choices_win():
    env = {ENV: "off"}
    assert use_cpu_flags(env, jaxlib_version="0.10.2") is None and "XLA_FLAGS" not in env
    env = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot"}
    assert use_cpu_flags(env, jaxlib_version="0.10.2") is None
    assert env["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=dot"


def test_this_jaxlib_accepts_the_flag():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env.pop(ENV, None)
    added = use_cpu_flags(env)
    if added is None:         # a jaxlib outside the measured range: nothing is added, nothing to run
        assert not env.get("XLA_FLAGS"), metadata.version("jaxlib")
        return
    code = "import jax.numpy as jnp; print(float(jnp.ones((64, 8)).sum(0).sum()))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "512.0"
