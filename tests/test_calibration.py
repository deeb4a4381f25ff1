"""export.calibration: the rate a verdict states, fitted on held-out labs' trials."""

from __future__ import annotations

import numpy as np

from export.calibration import HeldOut, report, threshold


def test_the_threshold_lets_at_most_the_rate_of_the_trials_reach_it():
    margins = np.linspace(-1, 1, 1000)
    for rate in (0.001, 0.01, 0.03):
        t = threshold(margins, 1000 + 200, rate)  # 200 router trials, never named
        assert (margins >= t).sum() <= rate * 1200 < (margins >= t).sum() + 1


def test_the_report_states_each_held_out_lab_against_the_other():
    """Two held-out labs of the same spread: each one's fit states the other's rate within 2x, and
    the own hosts above every impostor reach every rate."""
    rng = np.random.default_rng(0)
    a = HeldOut("a", np.sort(rng.normal(0, 0.1, 20000)), np.full(10, 1.0), 100)
    b = HeldOut("b", np.sort(rng.normal(0, 0.1, 20000)), np.full(10, 1.0), 100)
    lines = report([a, b])
    assert lines[0].startswith("fitted on pooled, measured on a, b")
    fitted_on_a = lines[3]
    ratios = [float(x.split("x")[0]) for x in fitted_on_a.split(": ")[1:]]
    assert all(0.5 <= r <= 2 for r in ratios), fitted_on_a
    assert fitted_on_a.count("own 1.00") == 4
