"""Offline CTR metrics: AUC, GAUC (the paper's Table 4 pair) and log-loss."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels, scores = np.asarray(labels, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    if labels.shape != scores.shape or labels.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D of one length, got {labels.shape} and {scores.shape}")
    if not np.isin(labels, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    return labels, scores


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    labels, scores = _check(labels, scores)
    if labels.min(initial=1) == labels.max(initial=0):
        raise ValueError("AUC needs both classes among the labels")
    return float(roc_auc_score(labels, scores))


def gauc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    """Per-user AUC averaged with weights = the user's impressions; users whose samples are all of
    one class have no AUC and are skipped (their weight too)."""
    labels, scores = _check(labels, scores)
    groups = np.asarray(groups)
    if groups.shape != labels.shape:
        raise ValueError(f"groups must match labels' shape {labels.shape}, got {groups.shape}")
    order = np.argsort(groups, kind="stable")
    g, lab, sc = groups[order], labels[order], scores[order]
    bounds = np.flatnonzero(np.diff(g)) + 1
    total, weight = 0.0, 0
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(g)]):
        y = lab[lo:hi]
        if y.min() == y.max():
            continue
        total += (hi - lo) * roc_auc_score(y, sc[lo:hi])
        weight += hi - lo
    if weight == 0:
        raise ValueError("GAUC needs at least one user with both classes")
    return float(total / weight)


def logloss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    labels, probs = _check(labels, probs)
    p = np.clip(probs, eps, 1.0 - eps)
    return float(-np.mean(labels * np.log(p) + (1.0 - labels) * np.log(1.0 - p)))
