"""An evaluation report a person opens in a browser: `index.html` with the headline figures, tables, charts and a
gallery, its pictures as PNG files beside it, and the tables' values in `tables.json`. The page is whole in its
folder: no script, style or font from elsewhere (its one script is inline: it marks on the page how many of its
pictures loaded, which a headless browser reads)."""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from mbtasks.io.outputs import write_text_atomically


@dataclass
class Table:
    """A table: column titles and rows of cells (numbers are shown to four decimals, nan as n/a)."""

    columns: list[str]
    rows: list[list]
    caption: str = ""


@dataclass
class Picture:
    """A picture written into the report's folder (`file`, relative to it) with its caption."""

    file: str
    caption: str = ""


@dataclass
class Gallery:
    """Rows of pictures side by side (prediction beside ground truth), each row with its caption."""

    rows: list[tuple[str, list[Picture]]]


@dataclass
class Section:
    """A titled part of the page: a note, then tables, pictures and galleries in order."""

    title: str
    parts: list[Table | Picture | Gallery] = field(default_factory=list)
    note: str = ""


STYLE = """
body { font-family: sans-serif; margin: 2em auto; padding: 0 1.5em; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
.headline { display: flex; flex-wrap: wrap; gap: 1em; }
.figure { border: 1px solid #ddd; border-radius: 6px; padding: .6em 1em; min-width: 8em; }
.figure .value { font-size: 1.8em; font-weight: bold; } .figure .name { color: #666; }
table { border-collapse: collapse; margin: 1em 0; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; } th { background: #f4f4f4; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
.pictures { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
.gallery-row { display: flex; gap: .6em; align-items: flex-start; }
.gallery-row figure { margin: .3em 0; flex: 1; max-width: 560px; } .gallery-row img { width: 100%; }
pre { background: #f8f8f8; padding: .8em; overflow-x: auto; font-size: .85em; }
"""

# Marks on <body> how many pictures loaded and how many did not, once the page has loaded (the load event waits for
# every picture): a headless browser's --dump-dom shows them.
IMAGE_CHECK = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images-loaded", String(loaded));
  document.body.setAttribute("data-images-broken", String(images.length - loaded));
});
"""


def write_report(
    folder: str | Path, title: str, headline: dict[str, float], summary: str, sections: list[Section]
) -> Path:
    """Write `folder`/index.html: the title, the headline figures (name -> value), the evaluator's printed `summary`,
    then the sections (whose pictures the caller has written into `folder`). Returns the page's path."""
    folder = Path(folder)
    body = [f"<h1>{_text(title)}</h1>", '<div class="headline">']
    for name, value in headline.items():
        body.append(
            f'<div class="figure"><div class="value">{_cell(value)}</div><div class="name">{_text(name)}</div></div>'
        )
    body.append("</div>")
    for section in sections:
        body.append(f"<h2>{_text(section.title)}</h2>")
        if section.note:
            body.append(f"<p>{_text(section.note)}</p>")
        body += _parts(section.parts)
    if summary:
        body += ["<h2>As printed</h2>", f"<pre>{_text(summary)}</pre>"]
    page = "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{_text(title)}</title>",
            f"<style>{STYLE}</style>",
            f"<script>{IMAGE_CHECK}</script>",
            "</head><body>",
            *body,
            "</body></html>",
            "",
        ]
    )
    path = folder / "index.html"
    write_text_atomically(path, page)
    # the tables' values in full, for programs (the page rounds them)
    tables = {
        section.title: [{"columns": t.columns, "rows": t.rows} for t in section.parts if isinstance(t, Table)]
        for section in sections
    }
    write_text_atomically(folder / "tables.json", json.dumps(_json_safe(tables), indent=1))
    return path


def _parts(parts: list[Table | Picture | Gallery]) -> list[str]:
    """The parts in order, pictures next to each other side by side (wrapping on a narrow window)."""
    html_parts, pictures = [], []
    for part in [*parts, None]:
        if isinstance(part, Picture):
            pictures.append(_figure(part))
            continue
        if pictures:
            html_parts.append(f'<div class="pictures">{"".join(pictures)}</div>')
            pictures = []
        if part is not None:
            html_parts.append(_part(part))
    return html_parts


def _part(part: Table | Gallery) -> str:
    if isinstance(part, Table):
        head = "".join(f"<th>{_text(c)}</th>" for c in part.columns)
        rows = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in part.rows)
        caption = f"<caption>{_text(part.caption)}</caption>" if part.caption else ""
        return f'<table class="per-class">{caption}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'
    return "\n".join(
        f'<p>{_text(caption)}</p><div class="gallery-row">{"".join(_figure(p) for p in pictures)}</div>'
        for caption, pictures in part.rows
    )


def _figure(picture: Picture) -> str:
    source = html.escape(Path(picture.file).as_posix(), quote=True)
    alt = html.escape(picture.caption or picture.file, quote=True)
    caption = f"<figcaption>{_text(picture.caption)}</figcaption>" if picture.caption else ""
    return f'<figure><img src="{source}" alt="{alt}" loading="eager">{caption}</figure>'


def _json_safe(value):
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _cell(value) -> str:
    if isinstance(value, bool) or value is None:
        return "n/a" if value is None else _text(str(value))
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return _text(str(value))


def _text(text: str) -> str:
    return html.escape(str(text), quote=False)
