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
