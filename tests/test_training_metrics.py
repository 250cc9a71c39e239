"""Metrics against values computed by hand."""
import math

import numpy as np
import pytest

from training.metrics import auc, gauc, logloss


def test_auc_counts_correctly_ordered_pairs():
    # pairs (pos, neg): (0.35 > 0.1) yes, (0.35 > 0.4) no, (0.8 > 0.1) yes, (0.8 > 0.4) yes -> 3/4
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)


def test_gauc_weights_users_by_impressions_and_skips_one_class_users():
    labels = np.array([0, 1, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.2, 0.9, 0.1, 0.4, 0.35, 0.8, 0.5, 0.1])
    users = np.array([7, 7, 3, 3, 3, 3, 9, 9])  # user 9: positives only -> skipped
    # user 7: AUC 1 over 2 impressions, user 3: AUC 0.75 over 4 -> (2 * 1 + 4 * 0.75) / 6
    assert gauc(labels, scores, users) == pytest.approx(5 / 6)


def test_gauc_differs_from_auc_when_users_differ_in_base_rate():
    # Within each user the ranking is perfect, across users it is not.
    labels = np.array([0, 1, 0, 1])
    scores = np.array([0.8, 0.9, 0.1, 0.2])
    users = np.array([1, 1, 2, 2])
    assert gauc(labels, scores, users) == pytest.approx(1.0)
    assert auc(labels, scores) == pytest.approx(0.75)


def test_logloss_matches_formula():
    expected = -(math.log(0.8) + math.log(0.7)) / 2
    assert logloss(np.array([1, 0]), np.array([0.8, 0.3])) == pytest.approx(expected)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="both classes"):
        auc(np.array([1, 1]), np.array([0.2, 0.3]))
    with pytest.raises(ValueError, match="0 or 1"):
        logloss(np.array([2, 0]), np.array([0.2, 0.3]))
    with pytest.raises(ValueError, match="at least one user"):
        gauc(np.array([1, 0]), np.array([0.2, 0.3]), np.array([1, 2]))
