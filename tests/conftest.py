"""Test setup. Eight simulated CPU devices must exist before JAX initialises, so
this runs before any test module imports jax."""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("ENERGY_ATTN_COMPILE_CACHE", "off")   # tests compile afresh; test_cli checks the cache
