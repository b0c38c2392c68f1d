"""Top-k classification accuracy (ImageNet style top-1 / top-5), and the confusion of predicted and true classes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mbtasks.errors import MbtasksError


def top_k_accuracy(scores: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Fraction of samples whose target is among the k highest scores; k above the class count is clipped.

    Ties rank the lower class index first, as a stable sort (and argmax, for k = 1) would.
    """
    return classification_accuracy(scores, targets, ks=(k,))[f"top{k}"]


def classification_accuracy(scores: np.ndarray, targets: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """{"top1": ..., "top5": ...} for scores (N, C) and integer targets (N,)."""
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    if scores.ndim != 2 or targets.shape != (scores.shape[0],):
        raise MbtasksError(f"scores {scores.shape} must be (N, classes) and targets {targets.shape} (N,)")
    if scores.shape[0] == 0:
        raise MbtasksError("no samples to evaluate")
    num_classes = scores.shape[1]
    if not np.issubdtype(targets.dtype, np.integer) or targets.min() < 0 or targets.max() >= num_classes:
        raise MbtasksError(f"targets must be class indices in [0, {num_classes})")
    target_scores = scores[np.arange(scores.shape[0]), targets][:, None]
    classes = np.arange(num_classes)[None, :]
    # Rank of the target = classes scoring higher, plus tied classes with a lower index.
    rank = (scores > target_scores).sum(axis=1) + ((scores == target_scores) & (classes < targets[:, None])).sum(axis=1)
    result = {}
    for k in ks:
        if k < 1:
            raise MbtasksError(f"top-k needs k >= 1, got {k}")
        result[f"top{k}"] = float((rank < min(k, num_classes)).mean())
    return result


def confusion_counts(predicted: np.ndarray, targets: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts of (true class, predicted class): rows ground truth, columns prediction."""
    predicted, targets = np.asarray(predicted, np.int64).ravel(), np.asarray(targets, np.int64).ravel()
    return np.bincount(targets * num_classes + predicted, minlength=num_classes**2).reshape(num_classes, num_classes)


def top_confusions(counts: np.ndarray, names: Sequence[str], n: int = 10) -> list[tuple[str, str, int, float]]:
    """The n most frequent mistakes: (true class, predicted class, images, share of the true class's images)."""
    mistakes = counts.astype(np.float64).copy()
    np.fill_diagonal(mistakes, 0)
    rows = counts.sum(1)
    order = np.argsort(-mistakes, axis=None, kind="stable")[:n]
    pairs = [divmod(int(i), counts.shape[1]) for i in order]
    return [
        (names[t], names[p], int(counts[t, p]), float(counts[t, p] / rows[t]))
        for t, p in pairs
        if t != p and counts[t, p]
    ]
