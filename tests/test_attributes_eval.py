import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from mbtasks.errors import MbtasksError
from mbtasks.evaluation.attributes import attribute_metrics, average_precision


@pytest.mark.parametrize("levels", [None, 5, 2])
def test_average_precision_matches_sklearn(levels):
    rng = np.random.default_rng(levels or 0)
    scores = rng.normal(size=(300, 12))
    if levels is not None:  # few distinct values: many ties across positives and negatives
        scores = np.round(scores * levels / 4)
    targets = (rng.random((300, 12)) < rng.uniform(0.05, 0.9, 12)).astype(int)
    metrics = attribute_metrics(scores, targets)
    for a in range(12):
        expected = average_precision_score(targets[:, a], scores[:, a])
        assert metrics.average_precision[a] == pytest.approx(expected, abs=1e-6)
        assert average_precision(scores[:, a], targets[:, a]) == pytest.approx(expected, abs=1e-6)
    assert metrics.mean_average_precision == pytest.approx(metrics.average_precision.mean())


def test_average_precision_known_values():
    assert average_precision([0.9, 0.8, 0.1], [1, 1, 0]) == 1.0
    # Ranking: pos, neg, pos -> precisions 1 and 2/3 at the two recall steps.
    assert average_precision([3, 2, 1], [1, 0, 1]) == pytest.approx((1 + 2 / 3) / 2)
    # All tied: one threshold, precision = positive rate.
    assert average_precision([1, 1, 1, 1], [1, 0, 0, 0]) == pytest.approx(0.25)


def test_attribute_without_positives_is_nan_and_skipped_in_mean():
    scores = np.array([[2.0, 1.0], [-1.0, 0.5], [0.5, -2.0]])
    targets = np.array([[1, 0], [0, 0], [1, 0]])
    metrics = attribute_metrics(scores, targets, names=["a", "b"])
    assert metrics.average_precision[0] == 1.0
    assert math.isnan(metrics.average_precision[1])
    assert metrics.mean_average_precision == 1.0
    assert metrics.as_dict()["per_attribute"]["b"]["average_precision"] is None
    only_b = metrics.subset(["b"])
    assert math.isnan(only_b.mean_average_precision) and only_b.mean_accuracy == pytest.approx(1 / 3)


def test_accuracy_thresholds_logits_at_zero():
    scores = np.array([[2.0, -1.0, 0.0], [-0.5, 3.0, 0.1], [1.0, 1.0, -1.0], [-2.0, -2.0, 0.2]])
    targets = np.array([[1, 0, 1], [0, 1, 1], [0, 1, 0], [0, 0, 0]])
    metrics = attribute_metrics(scores, targets, names=["x", "y", "z"])
    # 0.0 is not above the threshold, so the first image's "z" counts as absent (wrong).
    np.testing.assert_allclose(metrics.accuracy, [0.75, 1.0, 0.5])
    assert metrics.mean_accuracy == pytest.approx(0.75)
    probabilities = 1 / (1 + np.exp(-scores))
    np.testing.assert_allclose(attribute_metrics(probabilities, targets, threshold=0.5).accuracy, metrics.accuracy)
    assert metrics.subset(["y", "x"]).mean_accuracy == pytest.approx(0.875)


def test_bad_inputs_raise():
    with pytest.raises(MbtasksError, match="must both be"):
        attribute_metrics(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(MbtasksError, match="0 or 1"):
        attribute_metrics(np.zeros((2, 2)), np.array([[1, -1], [0, 1]]))
    with pytest.raises(MbtasksError, match="unknown attribute"):
        attribute_metrics(np.zeros((2, 1)), np.zeros((2, 1)), names=["a"]).subset(["b"])
