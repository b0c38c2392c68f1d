"""The report's charts as PNG files: bars per class, curves (precision-recall, ROC), a normalised confusion matrix,
histograms. matplotlib's Figure directly (no pyplot: no global state, no display backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from mbtasks.io.outputs import replaced_atomically

DPI = 100


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(path) as temporary:
        figure.savefig(temporary, format="png")
    return path


def bar_chart(path: Path, names: Sequence[str], values: Sequence[float], title: str, label: str) -> Path:
    """Horizontal bars, one per name, highest on top (nan: no bar); the value written at each bar's end."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(np.where(np.isnan(values), -np.inf, values), kind="stable")
    figure = _figure(8, 1.2 + 0.28 * len(names))
    axes = figure.add_subplot()
    shown = np.nan_to_num(values[order], nan=0.0)
    bars = axes.barh(range(len(order)), shown, color="#4c72b0")
    axes.set_yticks(range(len(order)), [names[i] for i in order], fontsize=8)
    axes.bar_label(bars, [("n/a" if np.isnan(values[i]) else f"{values[i]:.3f}") for i in order], fontsize=7, padding=2)
    axes.set_xlim(0, max(1.0, float(shown.max(initial=0)) * 1.12))
    axes.set_xlabel(label)
    axes.set_title(title)
    axes.margins(y=0.01)
    return _save(figure, path)


def curves(
    path: Path,
    lines: Mapping[str, tuple[np.ndarray, np.ndarray]],
    title: str,
    x_label: str,
    y_label: str,
    diagonal: bool = False,
) -> Path:
    """One line per label (x, y), in [0, 1] x [0, 1]; `diagonal`: the chance line (a ROC curve's)."""
    figure = _figure(5.4, 4.2)
    axes = figure.add_subplot()
    for label, (x, y) in lines.items():
        axes.plot(x, y, label=label, linewidth=1.4)
    if diagonal:
        axes.plot([0, 1], [0, 1], color="#999", linestyle="--", linewidth=1)
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel(x_label)
    axes.set_ylabel(y_label)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    if lines:
        axes.legend(fontsize=7, loc="lower left" if not diagonal else "lower right")
    return _save(figure, path)


def confusion_matrix(path: Path, matrix: np.ndarray, names: Sequence[str], title: str) -> Path:
    """A row-normalised confusion matrix (rows: ground truth, columns: prediction) with the class names on both axes
    and each cell's share written where the matrix is small enough to read."""
    matrix = np.asarray(matrix, dtype=np.float64)
    side = max(4.0, 1.5 + 0.38 * len(names))
    figure = _figure(side + 1.2, side)
    axes = figure.add_subplot()
    image = axes.imshow(matrix, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    axes.set_yticks(range(len(names)), names, fontsize=8)
    axes.set_xlabel("prediction")
    axes.set_ylabel("ground truth")
    axes.set_title(title)
    if len(names) <= 30:
        for row in range(matrix.shape[0]):
            for column in range(matrix.shape[1]):
                value = matrix[row, column]
                if value >= 0.005:
                    colour = "white" if value > 0.6 else "black"
                    axes.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=6, color=colour)
    figure.colorbar(image, ax=axes, shrink=0.8, label="share of the row")
    return _save(figure, path)


def histograms(path: Path, groups: Mapping[str, np.ndarray], title: str, x_label: str, bins: int = 40) -> Path:
    """Overlaid histograms of each group's values (as densities: groups of different sizes compare)."""
    figure = _figure(6, 4)
    axes = figure.add_subplot()
    values = [np.asarray(v, dtype=np.float64) for v in groups.values()]
    everything = np.concatenate(values) if values else np.zeros(1)
    edges = np.linspace(float(everything.min()), float(everything.max()) + 1e-9, bins + 1)
    for label, group in zip(groups, values):
        axes.hist(group, bins=edges, alpha=0.55, density=True, label=f"{label} ({len(group)})")
    axes.set_xlabel(x_label)
    axes.set_ylabel("density")
    axes.set_title(title)
    axes.legend(fontsize=8)
    return _save(figure, path)
