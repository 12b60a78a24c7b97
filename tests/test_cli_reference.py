"""docs/cli.md is what the generator writes from the argparse parsers, and it lists every flag."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from w2v_serve.cli import build_parser
from w2v_serve.cli.reference import environment_variables, render

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "cli.md"


def _all_parsers(parser: argparse.ArgumentParser, path: tuple = ("w2v",)):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _all_parsers(sub, path + (name,))


def test_docs_cli_md_is_up_to_date():
    assert PAGE.read_text(encoding="utf-8") == render(), (
        "docs/cli.md is out of date with the argparse parsers: run `make cli-docs`")


def test_the_reference_names_every_subcommand_and_flag():
    text = render()
    for path, parser in _all_parsers(build_parser()):
        section = text.split(f"`{' '.join(path)}`\n", 1)
        assert len(section) == 2, f"no section for {' '.join(path)}"
        body = section[1].split("\n#", 1)[0]
        for action in parser._actions:
            for flag in action.option_strings:
                assert f"`{flag}`" in body, f"{' '.join(path)} {flag} is missing from its section"


def test_environment_variables_are_found_in_the_source():
    found = environment_variables()
    assert "W2V_AUTH_TOKEN" in found and "w2v_serve/cli/serve.py" in found["W2V_AUTH_TOKEN"]
    assert "PATH" not in found
    assert "`W2V_NO_PROGRESS`" in render()


def test_the_generator_writes_the_file(tmp_path):
    out = tmp_path / "cli.md"
    subprocess.run([sys.executable, "-m", "w2v_serve.cli.reference", "--out", str(out)], check=True, cwd=ROOT,
                   timeout=120)
    assert out.read_text(encoding="utf-8") == render()
