"""The figures say what they draw: no legend entry without its bars, no 0 that looks like a gap, no
rate of 0 drawn as a number without saying so, and the verdict's dot labelled with what it measures.

The evaluations are small hand-made outcomes (which captures were predicted as what, and their
scores): what a figure draws from them is the subject here, not the model.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="figures: pip install '.[eval]'")

from tool.evaluation.plots import det_figure, per_device_figure, write_host_plots, write_plots  # noqa: E402
from tool.evaluation.protocol import Evaluation  # noqa: E402


def _evaluation(method: str = "deepnetprint") -> Evaluation:
    names = ["Cam", "Plug", "Kettle"]
    devices = [n for n in names for _ in range(4)]
    # Kettle's captures are all taken for Plug: a capture_top1 of 0.
    predicted = ["Cam"] * 4 + ["Plug"] * 3 + ["Cam"] + ["Plug"] * 4
    scores = np.full((len(devices), len(names)), 0.1)
    for c, d in enumerate(devices):
        scores[c, names.index(d)] = 0.9 if d != "Kettle" else 0.5
    rates = np.where(scores > 0.6, 0.0, 0.2)
    return Evaluation(
        method=method,
        names=names,
        splits={"Cam": "seen", "Plug": "seen", "Kettle": "unseen"},
        capture_devices=devices,
        capture_predicted=predicted,
        capture_scores=scores,
        capture_false_match=rates,
    )


def test_per_device_legend_shows_only_what_is_drawn_and_a_zero_is_written():
    fig = per_device_figure([_evaluation()])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["seen", "unseen"]  # no grey swatch
    assert "deepnetprint" in ax.get_title()
    assert [t.get_text() for t in ax.texts] == ["0"]  # Kettle: 0.0, not a missing bar
    two = per_device_figure([_evaluation(), _evaluation("ngram")])
    labels = [t.get_text() for t in two.axes[0].get_legend().get_texts()]
    assert labels == ["seen", "unseen", "deepnetprint (solid)", "ngram"]


def test_det_says_where_a_rate_of_zero_is_drawn_and_what_the_dot_measures():
    report = {"verdict": {"false_match_rate": 0.003, "miss_rate": 0.335, "max_false_match": 0.001}}
    ax = det_figure(_evaluation(), report).axes[0]
    notes = [t.get_text() for t in ax.texts]
    assert any(n.startswith("miss rate 0 (no own capture missed), drawn at 0.5/12") for n in notes), notes
    assert any(n.startswith("false-match rate 0, drawn at 0.5/24") for n in notes), notes
    label = ax.get_legend().get_texts()[0].get_text()
    assert "cohort rate <= 0.001" in label and "measured here" in label
    assert "0.30% false matches, 33.5% misses" in label
    assert ax.get_xlabel().startswith("false-match rate measured on the test captures")


def test_figures_are_written(tmp_path):
    ev = _evaluation()
    paths = write_plots([ev], tmp_path) + write_host_plots(ev, {"verdict": {}}, tmp_path)
    assert sorted(p.name for p in paths) == ["confusion-deepnetprint.png", "det.png", "per_device.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)
