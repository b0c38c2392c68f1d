"""Every command of `mbtasks` says what it does (in its parent's list and in its own --help), and every option has
help text."""

import argparse

from mbtasks.cli import build_parser


def _commands(parser: argparse.ArgumentParser, prog: str = "mbtasks"):
    """(name, parser, its help in the parent's list) of every command and subcommand, depth first."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            listed = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield f"{prog} {name}", sub, listed.get(name)
                yield from _commands(sub, f"{prog} {name}")


def test_every_command_and_option_has_help_text():
    parser = build_parser()
    commands = list(_commands(parser))
    names = {name for name, _, _ in commands}
    assert {"mbtasks train", "mbtasks recipes", "mbtasks weights import", "mbtasks data synth"} <= names
    missing = []
    for name, sub, listed in [("mbtasks", parser, "-"), *commands]:
        if not listed or not sub.description:
            missing.append(f"{name}: {'no help in its parent' if not listed else 'no description'}")
        for action in sub._actions:
            if not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}: no help")
    assert not missing, missing
