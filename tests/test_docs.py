"""The docs site's generated parts (docs/generated.py, the mkdocs hook that writes them at build time): the CLI
reference lists every command and argument the parser has, and the models table's figures are `mbtasks profile`'s.
The site itself is built with `mkdocs build --strict` by .ci/run; here the generators are called directly."""

import argparse
import importlib.util
import json
import re
from pathlib import Path

import pytest

from mbtasks.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("docs_generated", ROOT / "docs" / "generated.py")
generated = importlib.util.module_from_spec(spec)
spec.loader.exec_module(generated)


def leaf_commands() -> dict[str, argparse.ArgumentParser]:
    """Every command of the parser, walked here independently of the generator."""
    found = {}
    stack = [("", build_parser())]
    while stack:
        words, parser = stack.pop()
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            found[words.strip()] = parser
        for name, sub in subs[0].choices.items() if subs else ():
            stack.append((f"{words} {name}", sub))
    return found


def test_every_command_has_a_page_asking_for_its_reference():
    pages = "".join(p.read_text() for p in (ROOT / "docs").rglob("*.md"))
    asked = set(re.findall(r"^<!-- cli-reference: ([a-z ]+) -->$", pages, re.M))
    assert asked == set(leaf_commands())


@pytest.mark.parametrize("command", sorted(leaf_commands()))
def test_the_cli_reference_lists_every_argument_of_the_command(command):
    text = generated.cli_reference(command)
    parser = leaf_commands()[command]
    assert f"`mbtasks {command}` reference" in text
    assert parser.description.split(".")[0] in text
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        names = action.option_strings or [action.metavar or action.dest]
        for name in names:
            assert f"`{name}`" in text, f"{command}: {name} missing"
        if action.help:
            assert action.help.replace("|", "\\|").split("\n")[0][:40] in text


def test_the_hook_replaces_the_markers():
    page = "# train\n\n<!-- cli-reference: data show -->\n"
    out = generated.on_page_markdown(page)
    assert "<!--" not in out and "`--n` `N`" in out


@pytest.mark.parametrize(
    "name, args",
    [
        ("mobilenet_v3_small", []),
        ("ssdlite320_mobilenet_v3_small", []),
        ("lraspp_mobilenet_v3_small", ["--resolution", "520"]),
    ],
)
def test_the_models_table_figures_are_those_of_mbtasks_profile(name, args, capsys, monkeypatch, one_thread):
    import mbtasks.profiling

    monkeypatch.setattr(mbtasks.profiling, "measure_latency", lambda *a, **k: 0.0)  # only the counts are compared
    table = generated.models_table([name])
    row = next(line for line in table.splitlines() if line.startswith(f"| `{name}` |"))
    assert main(["profile", "--model", name, "--json", "--runs", "1", *args]) == 0
    profiled = json.loads(capsys.readouterr().out)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == f"{profiled['params']:,}"
    assert cells[4] == f"{profiled['madds'] / 1e9:.3f}G"


def test_the_models_table_shows_the_papers_figures():
    table = generated.models_table(["ssdlite320_mobilenet_v3_large"])
    assert "3.22M / 0.510G at 320, width 1" in table  # the v3 paper's table 6
