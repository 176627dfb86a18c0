"""Docs stay true: README's config reference is the generated one, every CLI command has
--help with an example, and the "your own energy" example stays short."""
import argparse
import re
from pathlib import Path

import pytest

from train.cli import build_parser, main
from train.config import config_reference

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_config_reference_is_current():
    text = README.read_text()
    block = re.search(r"<!-- config-reference -->\n(.*?)<!-- /config-reference -->", text, re.S)
    assert block, "README.md lost its <!-- config-reference --> block"
    assert block.group(1) == config_reference(), \
        "README's config reference is stale: run `energy-attn config reference --update README.md`"


def test_config_reference_update_rewrites_only_the_block(tmp_path, capsys):
    doc = tmp_path / "doc.md"
    doc.write_text("intro\n<!-- config-reference -->\nold table\n<!-- /config-reference -->\nend\n")
    assert main(["config", "reference", "--update", str(doc)]) == 0
    assert doc.read_text() == ("intro\n<!-- config-reference -->\n" + config_reference()
                               + "<!-- /config-reference -->\nend\n")
    (tmp_path / "plain.md").write_text("no markers")
    assert main(["config", "reference", "--update", str(tmp_path / "plain.md")]) == 2
    assert "config-reference" in capsys.readouterr().err


def commands(parser, prefix=()):
    """Every command path: ('train',), ('bench', 'attention'), ..."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from commands(sub, (*prefix, name))


ALL = list(commands(build_parser()))


def test_the_command_tree_has_the_workflow_commands():
    assert {("sweep",), ("compare",), ("data", "prepare"), ("data", "bench"),
            ("config", "reference"), ("train",)} <= set(ALL)


@pytest.mark.parametrize("path", ALL, ids=" ".join)
def test_every_command_has_help_with_an_example(path, capsys):
    assert main([*path, "--help"]) == 0
    out = capsys.readouterr().out
    assert "example" in out and "energy-attn " + " ".join(path) in out


def test_user_energy_example_is_short():
    block = re.search(r"<!-- user-energy -->\s*```python\n(.*?)```", README.read_text(), re.S)
    energy = re.search(r"def my_energy.*?\n\n", block.group(1), re.S).group(0).strip().splitlines()
    assert len(energy) <= 10 and len(block.group(1).strip().splitlines()) <= 12
