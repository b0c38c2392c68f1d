"""The pages' generated parts, made at build time by this mkdocs hook (mkdocs.yml `hooks:`) from the code itself.

A page asks for one with a marker line:

- `<!-- cli-reference: train -->` (or `data show`, `weights import`): that command's usage, description and every
  option of `mbtasks.cli.build_parser()`, with its default and help;
- `<!-- models-table -->`: every registered model (`mbtasks.models.list_models()`) with its kind, parameters and
  multiply-adds at its default size (counted by `mbtasks.profiling`, as `mbtasks profile` counts them) and the
  papers' figures from `mbtasks.reference`. Counting them all runs each network once (about a minute of the
  build, most of it the Faster R-CNNs at 800 pixels); `MBTASKS_DOCS_MODELS=mobilenet_v1,...` limits the table to
  those models, for a quick `mkdocs serve` while writing.

tests/test_docs.py calls the same functions and compares them with the parser and with `mbtasks profile`.
"""

import argparse
import os
import re

MARKER = re.compile(r"^<!-- (cli-reference: (?P<command>[a-z ]+)|models-table) -->$", re.M)


def commands(parser: argparse.ArgumentParser | None = None) -> dict[str, argparse.ArgumentParser]:
    """Every command of the parser by its words (`"train"`, `"data show"`), in the parser's order."""
    from mbtasks.cli import build_parser

    found: dict[str, argparse.ArgumentParser] = {}

    def walk(p: argparse.ArgumentParser, words: list[str]) -> None:
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            found[" ".join(words)] = p
            return
        for name, sub in subs[0].choices.items():
            walk(sub, [*words, name])

    walk(parser or build_parser(), [])
    return found


def _default(action: argparse.Action) -> str:
    if action.default in (None, argparse.SUPPRESS) or action.nargs == 0:
        return ""
    return f"`{action.default}`"


def _cell(text: str | None) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")


def cli_reference(command: str) -> str:
    """Markdown for one command: its usage, description and a table of its arguments, from the parser itself."""
    parser = commands()[command]
    usage = parser.format_usage().removeprefix("usage: ").strip()
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        names = ", ".join(f"`{o}`" for o in action.option_strings) or f"`{action.metavar or action.dest}`"
        if action.option_strings and action.nargs != 0:
            names += f" `{action.metavar or action.dest.upper()}`"
        choices = f" (one of: {', '.join(map(str, action.choices))})" if action.choices else ""
        rows.append(f"| {names} | {_cell(action.help)}{_cell(choices)} | {_default(action)} |")
    return "\n".join(
        [
            f"### `mbtasks {command}` reference",
            "",
            "Generated from `mbtasks.cli.build_parser()` when the site was built.",
            "",
            "```text",
            usage,
            "```",
            "",
            _cell(parser.description),
            "",
            "| argument | what it does | default |",
            "|---|---|---|",
            *rows,
            "",
        ]
    )


def _size(size: int | tuple[int, int]) -> str:
    return str(size) if isinstance(size, int) else f"{size[0]}x{size[1]}"


def model_figures(name: str) -> dict:
    """Parameters and multiply-adds of model `name` built with its defaults, at its default size: the functions and
    input `mbtasks profile --model NAME` uses."""
    from mbtasks.models import MODELS, build_model
    from mbtasks.profiling import count_madds, count_parameters, example_input

    entry = MODELS.get(name)
    model = build_model(name)
    return {
        "kind": entry.kind,
        "size": entry.size,
        "params": count_parameters(model),
        "madds": count_madds(model, example_input(entry.size)),
    }


def paper_figures(name: str) -> list[str]:
    """The published figures mbtasks is measured against for model `name`: '4.2M / 0.569G at 224 (width 1.0)'."""
    from mbtasks import reference

    shown = []
    for table in (reference.PAPER_FIGURES, reference.DETECTOR_PAPER_FIGURES):
        for (model, width, res), (params, madds) in table.items():
            if model == name:
                shown.append(f"{params / 1e6:.2f}M / {madds / 1e9:.3f}G at {_size(res)}, width {width:g}")
    for (model, options, res), (params, madds) in reference.SEGMENTER_PAPER_FIGURES.items():
        if model == name and isinstance(params, float):
            opts = ", ".join(f"{k}={v}" for k, v in options)
            shown.append(f"{params / 1e6:.2f}M / {madds / 1e9:.2f}G at {_size(res)} ({opts})")
    return shown


def models_table(names: list[str] | None = None) -> str:
    """Markdown table of the registered models (or `names`): kind, default size, parameters, multiply-adds, papers."""
    from mbtasks.models import list_models

    rows = [
        "| model | kind | default size | parameters | multiply-adds | papers' figures (params / MAdds) |",
        "|---|---|---|---|---|---|",
    ]
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one network at a time, each small: threads only spin against each other
    try:
        figures = {name: model_figures(name) for name in names or list_models()}
    finally:
        torch.set_num_threads(threads)
    for name, f in figures.items():
        papers = "; ".join(paper_figures(name)) or "-"
        rows.append(
            f"| `{name}` | {f['kind']} | {_size(f['size'])} | {f['params']:,} | {f['madds'] / 1e9:.3f}G | {papers} |"
        )
    return "\n".join(rows) + "\n"


def on_page_markdown(markdown: str, **_) -> str:
    """mkdocs hook: each marker line replaced by what it asks for."""

    def replace(match: re.Match) -> str:
        if match["command"]:
            return cli_reference(match["command"])
        only = os.environ.get("MBTASKS_DOCS_MODELS")
        return models_table(only.split(",") if only else None)

    return MARKER.sub(replace, markdown)
