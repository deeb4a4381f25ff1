"""The numbers of the dnp-23 protocol (docs/evaluation.md), computed from score tables.

Everything here is plain numpy on arrays, so the deep model and every baseline are measured by the
same code: a method only has to produce, for each test packet, a probability per fingerprint (or,
for a capture classifier, a predicted device per capture).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np


def _ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of the ranks they span."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    # Start of each run of equal values in sorted order.
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(values)]
    run_rank = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def roc_auc(scores: Sequence[float] | np.ndarray, positives: Sequence[bool] | np.ndarray) -> float:
    """Area under the ROC curve; a tie between a positive and a negative counts one half.

    NaN when there are no positives or no negatives (the area is undefined).

    >>> roc_auc([0.9, 0.5, 0.5, 0.1], [True, True, False, False])
    0.875
    """
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives, dtype=bool)
    n_pos = int(positives.sum())
    n_neg = len(positives) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    # Mann-Whitney U: the sum of the positives' ranks, less the ranks they would have among themselves.
    u = _ranks(scores)[positives].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(
    scores: Sequence[float] | np.ndarray, positives: Sequence[bool] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct threshold, from (0, 0) to (1, 1)."""
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives, dtype=bool)
    order = np.argsort(-scores, kind="mergesort")
    s, p = scores[order], positives[order]
    # One point per distinct score, so tied scores make one diagonal step, as the AUC counts them.
    last = np.r_[s[1:] != s[:-1], True]
    tp = np.cumsum(p)[last]
    fp = np.cumsum(~p)[last]
    n_pos, n_neg = max(int(p.sum()), 1), max(int((~p).sum()), 1)
    return np.r_[0.0, fp / n_neg], np.r_[0.0, tp / n_pos]


def balanced_accuracy(
    scores: Sequence[float] | np.ndarray, positives: Sequence[bool] | np.ndarray, threshold: float = 0.5
) -> float:
    """Mean of the true positive and true negative rates when `score >= threshold` says positive.

    NaN when there are no positives or no negatives.

    >>> balanced_accuracy([0.9, 0.4, 0.6, 0.1], [True, True, False, False])
    0.5
    """
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives, dtype=bool)
    if positives.all() or not positives.any():
        return math.nan
    said = scores >= threshold
    tpr = said[positives].mean()
    tnr = (~said[~positives]).mean()
    return float((tpr + tnr) / 2.0)


def accuracy(truth: Sequence[str], predicted: Sequence[str]) -> float:
    """Share of items whose prediction equals the truth; NaN for no items."""
    if len(truth) == 0:
        return math.nan
    return sum(t == p for t, p in zip(truth, predicted, strict=True)) / len(truth)


def confusions(truth: Sequence[str], predicted: Sequence[str]) -> list[dict[str, object]]:
    """The wrong predictions, counted per (true, predicted) pair, most frequent first.

    >>> confusions(["a", "a", "b"], ["b", "a", "a"])
    [{'true': 'a', 'predicted': 'b', 'count': 1}, {'true': 'b', 'predicted': 'a', 'count': 1}]
    """
    counts = Counter((t, p) for t, p in zip(truth, predicted, strict=True) if t != p)
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [{"true": t, "predicted": p, "count": n} for (t, p), n in ordered]


def confusion_matrix(truth: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Counts [true label, predicted label] in the order of `labels`."""
    index = {name: i for i, name in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for t, p in zip(truth, predicted, strict=True):
        matrix[index[t], index[p]] += 1
    return matrix


def nanmean(values: Sequence[float]) -> float:
    """Mean of the defined values; NaN when none is defined."""
    defined = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(defined)) if defined else math.nan


def rank1(own: float, others: Sequence[float] | np.ndarray) -> float:
    """1 when `own` beats every other score, 0 when one beats it; a tie with t others counts 1/(t+1),
    the chance that a random tie-break puts `own` first (identical traffic is a coin, not a win).

    >>> rank1(0.9, [0.5, 0.9])
    0.5
    """
    others = np.asarray(others, dtype=np.float64)
    if (others > own).any():
        return 0.0
    return 1.0 / (1 + int((others == own).sum()))


def host_rank1(scores: np.ndarray, truth: Sequence[int], positions: Sequence[int]) -> dict[int, list[float]]:
    """For each fingerprint k, one rank1() per position j: does device k's j-th capture come first
    among the j-th captures of every device, by fingerprint k's host score? `scores` [C, K], `truth` [C]
    the device (column) of each capture, `positions` [C] its position; {k: [rank1 per position]}.
    """
    truth = np.asarray(truth)
    positions = np.asarray(positions)
    out: dict[int, list[float]] = {}
    for k in range(scores.shape[1]):
        hits = []
        for j in np.unique(positions[truth == k]):
            at = positions == j
            own = np.flatnonzero(at & (truth == k))
            others = np.flatnonzero(at & (truth != k))
            hits.append(rank1(scores[own[0], k], scores[others, k]))
        if hits:
            out[k] = hits
    return out


def self_rank1(scores: np.ndarray) -> list[float]:
    """rank1() of each device's own host among all devices' hosts, by its own fingerprint: [K hosts, K]."""
    return [rank1(scores[k, k], np.delete(scores[:, k], k)) for k in range(scores.shape[1])]


def verdict_rates(matched: np.ndarray, truth: Sequence[int]) -> tuple[float, float]:
    """(false_match_rate, miss_rate) of verdicts `matched` [C, K] on captures whose device is `truth` [C]."""
    matched = np.asarray(matched, dtype=bool)
    own = np.asarray(truth)[:, None] == np.arange(matched.shape[1])[None, :]
    false_match = float(matched[~own].mean()) if (~own).any() else math.nan
    miss = float((~matched[own]).mean()) if own.any() else math.nan
    return false_match, miss
