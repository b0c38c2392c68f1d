"""Face verification metrics: the LFW 10-fold accuracy protocol and TAR at a fixed FAR.

Scores are similarities (higher means "same person"); pass negated distances. A pair is accepted as
"same" when its score is strictly above the threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mbtasks.errors import MbtasksError


@dataclass(frozen=True)
class VerificationResult:
    """LFW accuracy (mean and std over folds), per-fold accuracies and thresholds, and TAR at `far`."""

    accuracy_mean: float
    accuracy_std: float
    fold_accuracies: np.ndarray
    fold_thresholds: np.ndarray
    far: float
    tar: float
    tar_threshold: float

    def as_dict(self) -> dict:
        """JSON-ready summary (nan TAR becomes None)."""
        return {
            "accuracy_mean": self.accuracy_mean,
            "accuracy_std": self.accuracy_std,
            "fold_accuracies": self.fold_accuracies.tolist(),
            "fold_thresholds": self.fold_thresholds.tolist(),
            "far": self.far,
            "tar": None if math.isnan(self.tar) else self.tar,
            "tar_threshold": None if math.isnan(self.tar_threshold) else self.tar_threshold,
        }


def best_threshold(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """The threshold with the highest accuracy on these pairs, and that accuracy.

    Candidates are -inf, the midpoints between consecutive distinct scores, and +inf, so every
    achievable split is tried; among equally accurate thresholds the lowest wins.
    """
    scores, same = _check_pairs(scores, same)
    values, inverse = np.unique(scores, return_inverse=True)
    same_at = np.bincount(inverse, weights=same, minlength=values.size)
    different_at = np.bincount(inverse, weights=~same, minlength=values.size)
    # Candidate k lies just below values[k]: pairs from values[k] upwards are accepted.
    different_below = np.r_[0.0, np.cumsum(different_at)]
    same_at_or_above = same.sum() - np.r_[0.0, np.cumsum(same_at)]
    correct = different_below + same_at_or_above
    candidates = np.r_[-np.inf, (values[:-1] + values[1:]) / 2, np.inf]
    best = int(np.argmax(correct))
    return float(candidates[best]), float(correct[best] / scores.size)


def tar_at_far(scores: np.ndarray, same: np.ndarray, far: float) -> tuple[float, float]:
    """True accept rate at the lowest threshold whose false accept rate is at most `far`; (tar, threshold).

    With N different-person pairs, at most floor(far * N) of them may score above the threshold, so the
    threshold is the (floor(far * N) + 1)-th highest different-person score. When far * N < 1 the FAR
    cannot be measured (one false accept already exceeds it): (nan, nan), as without pairs of either kind.
    """
    scores, same = _check_pairs(scores, same)
    if not 0.0 < far < 1.0:
        raise MbtasksError(f"false accept rate must lie in (0, 1), got {far}")
    negatives = np.sort(scores[~same])[::-1]
    positives = scores[same]
    # The tolerance keeps e.g. 1e-3 * 3000 from rounding down to 2.
    allowed = math.floor(far * negatives.size + 1e-9)
    if allowed < 1 or positives.size == 0:
        return float("nan"), float("nan")
    # allowed == N only through the rounding tolerance; then every pair may be accepted.
    threshold = float(negatives[allowed]) if allowed < negatives.size else -math.inf
    return float((positives > threshold).mean()), threshold


def roc_curve(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(false accept rate, true accept rate) at every threshold, from accepting none to accepting all (tied scores
    one step), and the area under that curve; nan rates where pairs of a kind are missing."""
    scores, same = _check_pairs(scores, same)
    order = np.argsort(-scores, kind="stable")
    scores, same = scores[order], same[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    accepted_same = np.r_[0, np.cumsum(same)[last_of_run]].astype(np.float64)
    accepted_different = np.r_[0, np.cumsum(~same)[last_of_run]].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        tar = accepted_same / same.sum()
        far = accepted_different / (~same).sum()
    area = float(np.sum(np.diff(far) * (tar[1:] + tar[:-1]) / 2))
    return far, tar, area


def lfw_protocol(scores: np.ndarray, same: np.ndarray, folds: np.ndarray, far: float = 1e-3) -> VerificationResult:
    """LFW: for each fold, the best threshold on the other folds, accuracy on it; mean, std (numpy, ddof 0).

    TAR at `far` is measured once over all pairs (see tar_at_far).
    """
    scores, same = _check_pairs(scores, same)
    folds = np.asarray(folds).ravel()
    if folds.shape != scores.shape:
        raise MbtasksError(f"{folds.size} fold ids for {scores.size} pairs")
    fold_ids = np.unique(folds)
    if fold_ids.size < 2:
        raise MbtasksError("the LFW protocol needs at least two folds")
    accuracies, thresholds = [], []
    for fold in fold_ids:
        test = folds == fold
        threshold, _ = best_threshold(scores[~test], same[~test])
        accuracies.append(float(((scores[test] > threshold) == same[test]).mean()))
        thresholds.append(threshold)
    accuracies_array = np.array(accuracies)
    tar, tar_threshold = tar_at_far(scores, same, far)
    return VerificationResult(
        accuracy_mean=float(accuracies_array.mean()),
        accuracy_std=float(accuracies_array.std()),
        fold_accuracies=accuracies_array,
        fold_thresholds=np.array(thresholds),
        far=far,
        tar=tar,
        tar_threshold=tar_threshold,
    )


def _check_pairs(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    same = np.asarray(same).ravel()
    if scores.shape != same.shape:
        raise MbtasksError(f"{scores.size} scores for {same.size} same/different labels")
    if scores.size == 0:
        raise MbtasksError("no pairs to evaluate")
    if not np.isfinite(scores).all():
        raise MbtasksError("verification scores must be finite")
    if not np.isin(same, (0, 1)).all():
        raise MbtasksError("same/different labels must be booleans or 0/1")
    return scores, same.astype(bool)
