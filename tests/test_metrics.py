"""The dnp-23 metrics on small hand-made score tables whose answers are worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tool.evaluation import metrics
from tool.evaluation.protocol import Evaluation, summarise


def test_auc_counts_a_tie_between_a_positive_and_a_negative_as_one_half():
    # Pairs (pos, neg): 0.9>0.5, 0.9>0.1, 0.5=0.5 (a half), 0.5>0.1: 3.5 of 4.
    assert metrics.roc_auc([0.9, 0.5, 0.5, 0.1], [True, True, False, False]) == pytest.approx(0.875)
    assert metrics.roc_auc([0.3, 0.3, 0.3], [True, False, False]) == pytest.approx(0.5)
    assert metrics.roc_auc([0.1, 0.9], [True, False]) == pytest.approx(0.0)


def test_auc_is_undefined_without_positives_or_negatives():
    assert math.isnan(metrics.roc_auc([0.2, 0.4], [False, False]))
    assert math.isnan(metrics.roc_auc([0.2, 0.4], [True, True]))


def test_auc_agrees_with_scikit_learn_on_heavily_tied_scores():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(7)
    scores = rng.integers(0, 6, size=500) / 5.0  # six distinct values: ties everywhere
    labels = rng.random(500) < 0.2 + 0.1 * scores
    assert metrics.roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_roc_curve_runs_corner_to_corner_and_its_area_is_the_auc():
    scores = np.array([0.9, 0.8, 0.8, 0.6, 0.4, 0.4, 0.2])
    labels = np.array([True, False, True, True, False, False, False])
    fpr, tpr = metrics.roc_curve(scores, labels)
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(metrics.roc_auc(scores, labels))


def test_balanced_accuracy_says_positive_at_exactly_the_threshold():
    # Positives 0.5 (said yes: p >= 0.5), 0.4 (no): TPR 1/2. Negatives 0.6 (yes), 0.1 (no): TNR 1/2.
    assert metrics.balanced_accuracy([0.5, 0.4, 0.6, 0.1], [True, True, False, False]) == pytest.approx(0.5)
    # 3 of 3 positives and 1 of 4 negatives right: (1 + 0.25) / 2.
    scores = [0.7, 0.9, 0.5, 0.8, 0.6, 0.55, 0.2]
    labels = [True, True, True, False, False, False, False]
    assert metrics.balanced_accuracy(scores, labels) == pytest.approx(0.625)
    assert math.isnan(metrics.balanced_accuracy([0.9], [True]))


def test_confusions_count_only_mistakes_most_frequent_first():
    truth = ["a", "a", "a", "b", "b", "c"]
    pred = ["b", "b", "a", "c", "b", "a"]
    assert metrics.confusions(truth, pred) == [
        {"true": "a", "predicted": "b", "count": 2},
        {"true": "b", "predicted": "c", "count": 1},
        {"true": "c", "predicted": "a", "count": 1},
    ]
    assert metrics.confusions(["a"], ["a"]) == []


def _hand_made() -> Evaluation:
    names = ["Aria", "TP-LinkPlugHS100", "TP-LinkPlugHS110", "iKettle2"]
    splits = {"Aria": "seen", "TP-LinkPlugHS100": "seen", "TP-LinkPlugHS110": "unseen", "iKettle2": "unseen"}
    # Six test captures: Aria right twice, HS100 right once and taken for HS110 once,
    # HS110 taken for HS100 (same brand), iKettle2 taken for Aria (another brand).
    truth = ["Aria", "Aria", "TP-LinkPlugHS100", "TP-LinkPlugHS100", "TP-LinkPlugHS110", "iKettle2"]
    pred = ["Aria", "Aria", "TP-LinkPlugHS100", "TP-LinkPlugHS110", "TP-LinkPlugHS100", "Aria"]
    # Five test packets, columns in `names` order.
    labels = np.array([0, 0, 1, 2, 3])
    scores = np.array(
        [
            [0.9, 0.1, 0.1, 0.2],
            [0.6, 0.2, 0.3, 0.1],
            [0.3, 0.8, 0.9, 0.1],
            [0.2, 0.7, 0.6, 0.5],
            [0.4, 0.1, 0.1, 0.5],
        ]
    )
    return Evaluation("hand", names, splits, truth, pred, packet_labels=labels, packet_scores=scores)


def test_report_of_a_hand_made_score_table():
    report = summarise(_hand_made())
    assert report["protocol"] == "dnp-23"
    assert report["captures"] == {"all": 6, "seen": 4, "unseen": 2}
    assert report["capture_top1"]["all"] == pytest.approx(3 / 6)
    assert report["capture_top1"]["seen"] == pytest.approx(3 / 4)
    assert report["capture_top1"]["unseen"] == pytest.approx(0.0)
    # Brand: the two TP-Link swaps count as right, iKettle2 -> Aria does not.
    assert report["brand_top1"] == {"all": pytest.approx(5 / 6), "seen": 1.0, "unseen": 0.5}
    assert report["per_device"]["TP-LinkPlugHS100"]["capture_top1"] == pytest.approx(0.5)
    assert report["per_device"]["iKettle2"]["split"] == "unseen"
    assert report["per_brand"]["TP-Link"]["brand_top1"] == 1.0

    # Aria's column: positives 0.9, 0.6 above every negative (0.3, 0.2, 0.4): AUC 1.
    # HS100's: positive 0.8 above all: 1. HS110's: positive 0.6 < 0.9, > 0.1, 0.3, 0.1: 3/4.
    # iKettle2's: positive 0.5 above 0.2, 0.1, 0.1, tied with 0.5: 3.5/4.
    aucs = {"Aria": 1.0, "TP-LinkPlugHS100": 1.0, "TP-LinkPlugHS110": 0.75, "iKettle2": 0.875}
    for name, auc in aucs.items():
        assert report["per_device"][name]["packet_auc"] == pytest.approx(auc)
    assert report["packet_auc"]["all"] == pytest.approx(np.mean(list(aucs.values())))
    assert report["packet_auc"]["seen"] == pytest.approx(1.0)
    assert report["packet_auc"]["unseen"] == pytest.approx((0.75 + 0.875) / 2)
    # Balanced accuracy at p >= 0.5. Aria: TPR 2/2, TNR 3/3 -> 1. HS100: TPR 1, TNR 3/4 -> 0.875.
    # HS110: TPR 1 (0.6), TNR 3/4 (0.9 says yes) -> 0.875. iKettle2: TPR 1, TNR 3/4 (0.5) -> 0.875.
    assert report["packet_balanced_accuracy"]["all"] == pytest.approx((1 + 0.875 * 3) / 4)
    # Best column per packet: Aria, Aria, HS110 (wrong), HS100 (wrong), iKettle2: 3 of 5.
    assert report["single_packet_top1"]["all"] == pytest.approx(3 / 5)
    assert report["confusions"][0]["count"] == 1 and len(report["confusions"]) == 3


def test_a_capture_classifier_has_no_packet_metrics():
    ev = _hand_made()
    ev.packet_scores = ev.packet_labels = None
    report = summarise(ev)
    assert report["packet_auc"] == {"all": None, "seen": None, "unseen": None}
    assert report["single_packet_top1"] == {"all": None}
    assert report["capture_top1"]["all"] == pytest.approx(0.5)


def test_rank1_counts_a_tie_as_a_coin():
    assert metrics.rank1(0.9, [0.5, 0.8]) == 1.0
    assert metrics.rank1(0.9, [0.5, 0.95]) == 0.0
    assert metrics.rank1(0.9, [0.9, 0.9, 0.1]) == pytest.approx(1 / 3)


def test_host_rank1_compares_hosts_of_one_position_only():
    # Two devices, two positions; fingerprint 0 prefers device 1's host at position 1.
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.3], [0.7, 0.6]])
    truth, positions = [0, 1, 0, 1], [0, 0, 1, 1]
    assert metrics.host_rank1(scores, truth, positions) == {0: [1.0, 0.0], 1: [1.0, 1.0]}


def test_self_rank1_and_verdict_rates():
    scores = np.array([[1.0, 0.2], [0.3, 1.0]])
    assert metrics.self_rank1(scores) == [1.0, 1.0]
    matched = np.array([[True, True], [False, True], [False, False]])
    false_match, miss = metrics.verdict_rates(matched, [0, 1, 1])
    assert false_match == pytest.approx(1 / 3) and miss == pytest.approx(1 / 3)
