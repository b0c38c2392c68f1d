"""Binary attribute metrics (CelebA style): accuracy and average precision per attribute, and their means.

Scores are logits (or any score where higher means "present"); targets are 0/1. An attribute with no
positive target has no defined AP: it gets nan and is left out of the mean AP.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mbtasks.errors import MbtasksError


@dataclass(frozen=True)
class AttributeMetrics:
    """Per-attribute accuracy and AP (arrays of length A), their means, and the attribute names."""

    names: list[str]
    accuracy: np.ndarray
    average_precision: np.ndarray
    mean_accuracy: float
    mean_average_precision: float

    def subset(self, names: Sequence[str]) -> AttributeMetrics:
        """The same metrics restricted to `names` (e.g. the attributes a data set can show)."""
        missing = [name for name in names if name not in self.names]
        if missing:
            raise MbtasksError(f"unknown attribute(s): {', '.join(missing)}")
        index = [self.names.index(name) for name in names]
        return _summarise(list(names), self.accuracy[index], self.average_precision[index])

    def as_dict(self) -> dict:
        """JSON-ready: means, then per-attribute values keyed by name (nan AP becomes None)."""
        return {
            "mean_accuracy": self.mean_accuracy,
            "mean_average_precision": _none_if_nan(self.mean_average_precision),
            "per_attribute": {
                name: {"accuracy": float(acc), "average_precision": _none_if_nan(ap)}
                for name, acc, ap in zip(self.names, self.accuracy, self.average_precision)
            },
        }


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """AP of one binary problem, equal to sklearn's average_precision_score; nan without positives.

    Sum over distinct score thresholds (highest first) of (recall step) x (precision there); tied scores
    form one threshold, so the result does not depend on the order of tied samples.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    targets = np.asarray(targets).ravel().astype(bool)
    num_positive = int(targets.sum())
    if num_positive == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    scores, targets = scores[order], targets[order]
    # The last index of each run of equal scores is where a threshold ends.
    last_of_run = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    true_positives = np.cumsum(targets)[last_of_run]
    precision = true_positives / (last_of_run + 1)
    recall_step = np.diff(np.r_[0, true_positives]) / num_positive
    return float(np.sum(recall_step * precision))


def attribute_metrics(
    scores: np.ndarray,
    targets: np.ndarray,
    names: Sequence[str] | None = None,
    threshold: float = 0.0,
) -> AttributeMetrics:
    """Accuracy (score > threshold means present; 0 suits logits) and AP per attribute, with means."""
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise MbtasksError(f"scores {scores.shape} and targets {targets.shape} must both be (images, attributes)")
    if not np.isin(targets, (0, 1)).all():
        raise MbtasksError("attribute targets must be 0 or 1")
    names = list(names) if names is not None else [f"attribute_{i}" for i in range(scores.shape[1])]
    if len(names) != scores.shape[1]:
        raise MbtasksError(f"{len(names)} attribute names for {scores.shape[1]} attribute columns")
    targets = targets.astype(bool)
    accuracy = ((scores > threshold) == targets).mean(axis=0)
    ap = np.array([average_precision(scores[:, a], targets[:, a]) for a in range(scores.shape[1])])
    return _summarise(names, accuracy, ap)


def _summarise(names: list[str], accuracy: np.ndarray, ap: np.ndarray) -> AttributeMetrics:
    defined = ap[~np.isnan(ap)]
    # An explicit nan rather than np.nanmean's RuntimeWarning when no attribute has positives.
    mean_ap = float(defined.mean()) if defined.size else float("nan")
    mean_accuracy = float(accuracy.mean()) if accuracy.size else float("nan")
    return AttributeMetrics(names, accuracy, ap, mean_accuracy, mean_ap)


def _none_if_nan(value: float) -> float | None:
    return None if np.isnan(value) else float(value)
