"""Classification metrics of a scorer's answers, as delphi computes them.

Answers that could not be parsed (prediction None) are left out. Balanced accuracy is the
mean of the true-positive and true-negative rates (a missing class counts 0); precision,
recall and F1 are 0 where undefined. AUC uses the answers' P("1") / (P("0") + P("1")) where
the client returned token probabilities, else it is None.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def roc_auc(truth: Sequence[bool], scores: Sequence[float]) -> float | None:
    """Area under the ROC curve (ties count one half); None unless both classes occur."""
    pos = [s for t, s in zip(truth, scores, strict=True) if t]
    neg = [s for t, s in zip(truth, scores, strict=True) if not t]
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def classification_metrics(
    truth: Sequence[bool],
    predictions: Sequence[int | None],
    probabilities: Sequence[float | None] | None = None,
) -> dict[str, Any]:
    """Balanced accuracy, precision, recall, F1, AUC and the confusion counts."""
    pairs = [(bool(t), p == 1) for t, p in zip(truth, predictions, strict=True) if p is not None]
    tp = sum(t and p for t, p in pairs)
    tn = sum(not t and not p for t, p in pairs)
    fp = sum(not t and p for t, p in pairs)
    fn = sum(t and not p for t, p in pairs)
    pos, neg = tp + fn, tn + fp
    tpr = tp / pos if pos else 0.0
    tnr = tn / neg if neg else 0.0
    precision = tp / (tp + fp) if tp + fp else 0.0
    f1 = 2 * precision * tpr / (precision + tpr) if precision + tpr else 0.0
    auc = None
    if probabilities is not None:
        scored = [(bool(t), p) for t, p in zip(truth, probabilities, strict=True) if p is not None]
        if scored:
            auc = roc_auc([t for t, _ in scored], [p for _, p in scored])
    return {
        "balanced_accuracy": (tpr + tnr) / 2,
        "precision": precision,
        "recall": tpr,
        "f1": f1,
        "auc": auc,
        "accuracy": (tp + tn) / len(pairs) if pairs else 0.0,
        "tp": tp, "tn": tn, "fp": fp, "fn": fn,
        "n": len(truth),
        "n_failed": len(truth) - len(pairs),
    }  # fmt: skip
