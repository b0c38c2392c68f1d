import math

import numpy as np
import pytest

from mbtasks.errors import MbtasksError
from mbtasks.evaluation.verification import best_threshold, lfw_protocol, tar_at_far


def _folds_with(fold0_same, fold0_different):
    """Folds 1-9 separate cleanly (same 0.9, 0.7; different 0.1, 0.3); fold 0 holds the given scores."""
    scores, same, folds = [], [], []
    for fold in range(10):
        s, d = (fold0_same, fold0_different) if fold == 0 else ([0.9, 0.7], [0.1, 0.3])
        scores += s + d
        same += [True] * len(s) + [False] * len(d)
        folds += [fold] * (len(s) + len(d))
    return np.array(scores), np.array(same), np.array(folds)


def test_separable_folds_give_perfect_accuracy():
    result = lfw_protocol(*_folds_with([0.9, 0.7], [0.1, 0.3]))
    assert result.accuracy_mean == 1.0 and result.accuracy_std == 0.0
    np.testing.assert_allclose(result.fold_thresholds, 0.5)


def test_threshold_comes_from_the_other_nine_folds():
    # Fold 0 alone would split at 0.425; the other folds put the threshold at 0.5, which rejects its
    # same pair (0.45): accuracy 1/2 there. Trained with fold 0's pairs, the other folds split at 0.425.
    result = lfw_protocol(*_folds_with([0.45], [0.4]))
    np.testing.assert_allclose(result.fold_accuracies, [0.5] + [1.0] * 9)
    np.testing.assert_allclose(result.fold_thresholds, [0.5] + [0.425] * 9)
    assert result.accuracy_mean == pytest.approx(0.95)
    assert result.accuracy_std == pytest.approx(0.15)  # numpy std (ddof 0), as the LFW papers


def test_a_hard_pair_costs_its_fold():
    result = lfw_protocol(*_folds_with([0.9, 0.7, 0.2], [0.1, 0.3]))
    np.testing.assert_allclose(result.fold_accuracies, [0.8] + [1.0] * 9)
    assert result.accuracy_mean == pytest.approx(0.98)
    assert result.accuracy_std == pytest.approx(0.06)


def test_best_threshold_edges_and_ties():
    assert best_threshold([0.3, 0.5], [True, True]) == (-math.inf, 1.0)
    assert best_threshold([0.3, 0.5], [False, False]) == (math.inf, 1.0)
    # 0.3 and 0.7 are equally good (3/4); the lowest wins.
    assert best_threshold([0.2, 0.6, 0.8, 0.4], [False, False, True, True]) == (pytest.approx(0.3), 0.75)


def test_tar_at_far_picks_the_lowest_threshold_within_the_far():
    negatives = np.arange(1000) / 1000  # 0.000 .. 0.999
    positives = np.array([0.9995, 0.9985, 0.999, 0.9975, 0.5])
    scores = np.r_[negatives, positives]
    same = np.r_[np.zeros(1000, bool), np.ones(5, bool)]
    # One false accept allowed: the threshold is the second-highest negative, only 0.999 lies above it.
    assert tar_at_far(scores, same, 1e-3) == (pytest.approx(0.6), 0.998)
    assert tar_at_far(scores, same, 2e-3) == (pytest.approx(0.8), 0.997)
    assert tar_at_far(scores, same, 0.5) == (1.0, 0.499)


def test_tar_at_far_ties_and_rounding():
    negatives = np.r_[np.full(5, 0.9), np.linspace(0, 0.5, 2995)]
    scores = np.r_[negatives, [0.95, 0.9, 0.6]]
    same = np.r_[np.zeros(3000, bool), np.ones(3, bool)]
    # 3 of 3000 may pass; the tie at 0.9 must all be rejected, so FAR is 0 and 0.9 itself is rejected.
    tar, threshold = tar_at_far(scores, same, 1e-3)
    assert threshold == 0.9 and tar == pytest.approx(1 / 3)


def test_too_few_negatives_give_nan():
    scores = np.r_[np.linspace(0, 1, 999), [0.5]]
    same = np.r_[np.zeros(999, bool), [True]]
    tar, threshold = tar_at_far(scores, same, 1e-3)
    assert math.isnan(tar) and math.isnan(threshold)
    result = lfw_protocol(scores, same, np.arange(1000) % 10)
    assert math.isnan(result.tar) and result.as_dict()["tar"] is None


def test_bad_inputs_raise():
    with pytest.raises(MbtasksError, match="two folds"):
        lfw_protocol([0.1, 0.9], [False, True], [0, 0])
    with pytest.raises(MbtasksError, match="fold ids"):
        lfw_protocol([0.1, 0.9], [False, True], [0, 1, 2])
    with pytest.raises(MbtasksError, match="labels"):
        best_threshold([0.1, 0.9], [False])
    with pytest.raises(MbtasksError, match=r"\(0, 1\)"):
        tar_at_far([0.1, 0.9], [False, True], 0.0)
