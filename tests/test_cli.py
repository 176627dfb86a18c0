"""The `energy-attn` command line: help, a tiny benchmark run, and bad input.

Fast by design (a tiny shape, section d skipped); the full benchmark is run by hand.
"""
import pytest

from train.cli import main


def run(argv):
    """Exit code of `energy-attn argv`, whether main returns it or argparse exits."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("argv", [["--help"], ["bench", "--help"], ["bench", "attention", "--help"]])
def test_help_exits_0_with_an_example(argv, capsys):
    assert run(argv) == 0
    out = capsys.readouterr().out
    assert "example:" in out or ("the three jobs" in out and all(
        f"energy-attn {job} " in out for job in ("train", "sweep", "compare", "viz report")))


def test_tiny_attention_benchmark(capsys, tmp_path):
    path = tmp_path / "bench.json"
    code = run(["bench", "attention", "--batch", "1", "--heads", "2", "--seq", "128",
                "--head-dim", "16", "--repeats", "1", "--skip-long", "--energies", "softmax",
                "--json", str(path)])
    out = capsys.readouterr().out
    assert code == 0
    assert any("ratio" in line for line in out.splitlines())
    assert "dot_product_attention" in out and ("PASS" in out or "FAIL" in out)
    import json
    res = json.loads(path.read_text())
    assert {r["name"] for r in res["ratios"]} >= {"softmax energy / dpa, fwd",
                                                 "softmax energy / dpa, fwd+bwd"}


@pytest.mark.parametrize("argv, words", [
    (["bench", "attention", "--seq", "-5"], ["--seq", "-5"]),
    (["bench", "attention", "--batch", "two"], ["--batch", "two"]),
    (["bench", "attention", "--energies", "softmx", "--skip-long"], ["softmx", "softmax"]),
    (["bench", "attention", "--long-seq", "1000"], ["--long-seq", "512"]),
    (["bench", "nonsense"], ["nonsense"]),
    ([], ["COMMAND"]),
])
def test_bad_input_is_one_line_and_exit_2(argv, words, capsys):
    assert run(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert all(w in lines[0] for w in words), lines[0]
    assert "Traceback" not in captured.err + captured.out


def test_bench_train_overrides_alone_keep_the_default_recipe():
    """`energy-attn bench train data.path=X` times the shakespeare recipe with that override,
    not the built-in default model (argparse hands the first KEY=VALUE to the config slot);
    `energy-attn train key=value` still means the built-in default config."""
    from train.cli.args import config_and_overrides
    from train.cli.bench import DEFAULT_RECIPE
    assert config_and_overrides("data.path=x.txt", ["train.steps=5"], default=DEFAULT_RECIPE) == (
        DEFAULT_RECIPE, ["data.path=x.txt", "train.steps=5"])
    assert config_and_overrides("configs/default.yaml", ["a=1"], default=DEFAULT_RECIPE) == (
        "configs/default.yaml", ["a=1"])
    assert config_and_overrides("a=1", ["b=2"]) == (None, ["a=1", "b=2"])
    assert DEFAULT_RECIPE.endswith("shakespeare_char.yaml")
