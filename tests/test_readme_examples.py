"""README code blocks, executed as written (so the README cannot drift)."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(marker):
    block = re.search(rf"<!-- {marker} -->\s*```python\n(.*?)```", README.read_text(), re.S)
    assert block, f"README.md lost its {marker} example"
    return block.group(1)


def test_user_energy_example_matches_reference():
    """The 'your own energy' snippet: attention from a function in the user's own code."""
    import jax.numpy as jnp
    import numpy as np
    from tests import reference as ref
    namespace = {}
    exec(readme_block("user-energy"), namespace)
    q, k, v = namespace["q"], namespace["k"], namespace["v"]
    allowed = jnp.asarray(ref.dense_allowed(q.shape[0], q.shape[1], k.shape[1], causal=True))
    np.testing.assert_allclose(namespace["out"], ref.softmax_attention(q, k, v, allowed, 0.5), atol=1e-5)


def test_hopfield_plain_retrieval_example(capsys):
    exec(readme_block("hopfield-retrieval"), {})     # asserts inside: noisy and half-masked queries retrieve
    assert capsys.readouterr().out.strip()


def python_blocks():
    """Every ```python block of the README, each preceded by its <!-- name --> marker."""
    text = README.read_text()
    blocks = re.findall(r"(?:<!-- ([\w-]+) -->\s*)?```python\n(.*?)```", text, re.S)
    unnamed = [code.splitlines()[0] for name, code in blocks if not name]
    assert not unnamed, f"README python blocks without a <!-- name --> marker (so no test runs them): {unnamed}"
    return dict(blocks)


def test_every_python_block_runs_and_gives_the_reference_numbers():
    import jax.numpy as jnp
    import numpy as np

    import energy_attn as ea
    blocks = python_blocks()
    assert set(blocks) >= {"attention", "user-energy", "masks", "layer", "tree", "hopfield-retrieval"}
    ns = {}
    exec(blocks["attention"], ns)
    from tests import reference as ref
    q, k, v = ns["q"], ns["k"], ns["v"]
    allowed = jnp.asarray(ref.dense_allowed(2, 128, 128, causal=True))
    visible = jnp.arange(1, 129, dtype=jnp.float32)[None, None, :, None]    # causal row i sees i + 1 keys
    np.testing.assert_allclose(ns["out"], ref.sigmoid_attention(q, k, v, allowed, 64 ** -0.5, -jnp.log(visible)),
                               atol=1e-5)                                  # `out` of its sigmoid line
    np.testing.assert_allclose(ns["w"].sum(-1), 1.0, atol=1e-5)            # entmax weights: a distribution
    assert ns["w"].shape == (2, 8, 128, 128) and ns["cov"].shape == (2, 128, 8, 64, 64)
    ns = {}
    exec(blocks["masks"], ns)
    allowed = np.asarray(ea.allowed_pairs(ns["mask"], 16, 16))[0, 0]
    assert allowed[5, 4] and not allowed[5, 3] and not allowed[13, 12]     # same document; padding
    ns = {}
    exec(blocks["layer"], ns)
    assert ns["y"].shape == (2, 16, 256) and int(ns["cache"].index) == 16     # prefilled the 16-token prompt


TREE_CHECK = """
import jax, jax.numpy as jnp, numpy as np, energy_attn as ea
{block}
assert p == 8, p
ref = ea.attend("softmax", x, x, x, mask=ea.causal())
np.testing.assert_allclose(out, ref, atol=2e-5)
np.testing.assert_allclose(cache.attend(q), ea.attend("softmax", q, k[:, :300], v[:, :300]), atol=2e-5)
print("tree block ok")
"""


def test_tree_block_on_eight_simulated_devices():
    import os
    import subprocess
    import sys
    code = TREE_CHECK.format(block=python_blocks()["tree"])
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=README.parent, timeout=600)
    assert res.returncode == 0 and "tree block ok" in res.stdout, res.stderr[-3000:]


def test_every_command_in_the_readme_parses():
    """Each `energy-attn ...` line of the README's bash blocks is a valid command line."""
    import shlex

    from train.cli import CLIError, build_parser
    text = README.read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split("#")[0].strip().removesuffix("&").strip()     # `... &`: in the background
            line = line[line.index("energy-attn"):] if "energy-attn" in line else ""
            if line.startswith("energy-attn ") and " | " not in line:
                commands.append(re.sub(r"\[[^\]]*\]", "", line))       # [--optional flags] shown in brackets
    assert len(commands) > 15, commands
    parser = build_parser()
    for cmd in commands:
        try:
            parser.parse_args(shlex.split(cmd)[1:])
        except (SystemExit, CLIError) as e:
            raise AssertionError(f"README command does not parse: {cmd} ({e})") from None
