"""An ablation's outputs from its results rows: results.csv, results.md (the papers' table) and the plots, each
replaced whole (a kill while writing leaves the previous file)."""

import csv
from pathlib import Path

import torch

from ..backbones import BACKBONES
from ..io.outputs import replaced_atomically, write_text_atomically
from ..reference import DETECTOR_PAPER_NOTES

COLUMNS = [
    "task",
    "version",
    "width",
    "resolution",
    "model",
    "params",
    "madds",
    "latency_ms",
    "paper_params",
    "paper_madds",
    "metric_name",
    "metric",
    "status",
    "error",
    "run",
]


def write_csv(rows: list[dict], path: Path) -> None:
    with replaced_atomically(path) as temporary, open(temporary, "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in COLUMNS})


def _sorted(rows: list[dict]) -> list[dict]:
    order = [v.removeprefix("mobilenet_") for v in BACKBONES]
    return sorted(rows, key=lambda r: (order.index(r["version"]), r.get("madds") or 0, r["width"]))


def write_markdown(rows: list[dict], path: Path, profile_only: bool, latency_runs: int) -> None:
    """The papers' table (model, multiply-adds, parameters, latency, metric), sorted by version then MAdds."""
    done = _sorted([r for r in rows if r["status"] == "ok"])
    metric = next((r["metric_name"] for r in done), "metric")
    header = ["model", "width", "input", "MAdds", "paper", "params", "paper", "latency (ms)"]
    header += [] if profile_only else [metric]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in done:
        cells = [
            r["model"],
            f"{r['width']:g}",
            r["resolution"],
            f"{r['madds'] / 1e6:.1f}M",
            _paper(r.get("paper_madds")),
            f"{r['params'] / 1e6:.2f}M",
            _paper(r.get("paper_params")),
            "" if r.get("latency_ms") is None else f"{r['latency_ms']:.1f}",
        ]
        if not profile_only:
            cells.append("" if r.get("metric") is None else f"{r['metric']:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if latency_runs > 0:
        lines.append(
            f"Latency: median of {latency_runs} runs at batch 1 of the inference copy (batch norm folded, "
            f"channels-last), {torch.get_num_threads()} CPU thread(s), on the machine that ran this table."
        )
    lines.append("paper: the papers' figures (mbtasks/reference.py) where they list this network.")
    for r in done:
        note = DETECTOR_PAPER_NOTES.get((r["model"], r["width"], _side(r["resolution"])))
        if note and r.get("paper_madds") is not None:
            lines.append(f"Note on {r['model']} at {r['resolution']}: {note}.")
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        lines += ["", "Failed runs:", ""] + [f"- {r['run']}: {r['error']}" for r in failed]
    write_text_atomically(path, "\n".join(lines) + "\n")


def _side(resolution: str) -> int | str:
    """A square resolution's side as the reference keys it ("600" -> 600); others as written."""
    return int(resolution) if str(resolution).isdigit() else resolution


def _paper(value: float | None) -> str:
    return "" if value is None else f"{value / 1e6:g}M"


def write_plot(rows: list[dict], x: str, y: str, path: Path, xlabel: str, ylabel: str) -> bool:
    """One line-and-markers series per version, points labelled width-resolution; False when no row has both."""
    from matplotlib.figure import Figure

    points = [r for r in rows if r["status"] == "ok" and r.get(x) is not None and r.get(y) is not None]
    if not points:
        return False
    figure = Figure(figsize=(7, 5), dpi=120)
    axes = figure.subplots()
    for version in dict.fromkeys(r["version"] for r in _sorted(points)):
        series = sorted((r for r in points if r["version"] == version), key=lambda r: r[x])
        xs = [r[x] / 1e6 if x == "madds" else r[x] for r in series]
        axes.plot(xs, [r[y] for r in series], marker="o", label=version)
        for value, r in zip(xs, series):
            axes.annotate(
                f"{r['width']:g}-{r['resolution']}",
                (value, r[y]),
                fontsize=6,
                alpha=0.7,
                textcoords="offset points",
                xytext=(3, 3),
            )
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    axes.legend(title="version")
    figure.tight_layout()
    with replaced_atomically(path) as temporary:
        figure.savefig(temporary)
    return True


def write_outputs(rows: list[dict], out: str | Path, profile_only: bool, latency_runs: int) -> list[Path]:
    """results.csv, results.md and the plots (metric against MAdds and latency; profile-only: latency against
    MAdds); returns the files written."""
    out = Path(out)
    written = [out / "results.csv", out / "results.md"]
    write_csv(rows, written[0])
    write_markdown(rows, written[1], profile_only, latency_runs)
    metric = next((r["metric_name"] for r in rows if r.get("metric_name")), "metric")
    plots = (
        [("latency_ms", "madds", "latency_vs_madds.png")]
        if profile_only
        else [("metric", "madds", "metric_vs_madds.png"), ("metric", "latency_ms", "metric_vs_latency.png")]
    )
    labels = {"madds": "multiply-adds (M)", "latency_ms": "latency (ms, batch 1)", "metric": metric}
    for y, x, name in plots:
        if write_plot(rows, x, y, out / name, labels[x], labels[y]):
            written.append(out / name)
    return written
