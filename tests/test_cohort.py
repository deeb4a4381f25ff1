"""The cohort that turns a host score into a verdict, and the set-level score on the real data set."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from tool.cohort import Calibration, Cohort
from tool.fingerprint import Fingerprint
from tool.model import Model, set_vector, unit
from tool.scores import set_scores


class _Set:
    """What the cohort reads of a fingerprint: its packets' embeddings and their mean direction."""

    def __init__(self, packets):
        self.packets = unit(np.asarray(packets, float))
        self.vector = unit(self.packets.sum(axis=0))


def _cohort(vectors, groups) -> Cohort:
    # One packet per cohort host: then every set score is the cosine of the two packets.
    table = np.asarray(vectors, float)
    return Cohort(table, [np.array([i]) for i in range(len(table))], np.asarray(groups), 20, "0" * 64)


def test_false_match_weighs_every_cohort_device_the_same_and_leaves_out_the_nearest():
    fp = [_Set([[1.0, 0.0]])]
    # Device 0 is the fingerprint's own type (left out); device 1 gave 3 windows, device 2 one.
    angles = {0: [0.0, 0.05], 1: [0.5, 1.0, 1.5], 2: [0.3]}
    vectors, groups = [], []
    for g, thetas in angles.items():
        for t in thetas:
            vectors.append([np.cos(t), np.sin(t)])
            groups.append(g)
    cohort = _cohort(vectors, groups)
    scores = np.array([[1.0], [np.cos(0.3)], [np.cos(0.5)], [np.cos(1.2)], [-1.0]])
    rates = cohort.false_match(fp, scores)[:, 0]
    # Above every impostor: 0. At device 2's only window: device 2 (1/2). At device 1's best window:
    # all of device 2 and a third of device 1: 1/2 + 1/6. Below all: 1.
    assert rates == pytest.approx([0.0, 0.5, 0.5 + 1 / 6, 0.5 + 2 / 3 * 0.5, 1.0])


def test_other_hosts_are_never_left_out_and_a_brand_leaves_out_its_siblings():
    """A router nearer the fingerprint than any device stays an impostor; with leave_out "brand" the
    nearest device type's same-vendor siblings go with it."""
    fp = [_Set([[1.0, 0.0]])]
    # Group 0: a router, nearest of all. 1: the fingerprint's own type; 2: its sibling; 3: another brand.
    angles = {0: [0.0], 1: [0.1], 2: [0.2], 3: [1.0]}
    vectors = [[np.cos(t), np.sin(t)] for thetas in angles.values() for t in thetas]
    groups = [g for g, thetas in angles.items() for _ in thetas]
    devices = np.array([False, True, True, True])
    brands = ["", "TP-Link", "TP-Link", "Tuya"]
    score = np.array([[np.cos(0.25)]])
    by_type = Cohort(np.asarray(vectors), [np.array([i]) for i in range(4)], np.asarray(groups), 20, "0" * 64,
                     devices, brands, "type")  # fmt: skip
    # Left out: the own type only. The router and the sibling reach the score, the other brand not.
    assert by_type.false_match(fp, score)[0, 0] == pytest.approx(2 / 3)
    by_brand = Cohort(by_type.table, by_type.windows, by_type.groups, 20, "0" * 64, devices, brands, "brand")
    assert by_brand.false_match(fp, score)[0, 0] == pytest.approx(1 / 2)


def test_false_match_is_monotone_in_the_score():
    rng = np.random.default_rng(0)
    cohort = _cohort(unit(rng.normal(size=(300, 8))), rng.integers(0, 6, 300))
    fps = [_Set(rng.normal(size=(5, 8))) for _ in range(3)]
    scores = np.sort(rng.uniform(-1, 1, size=(50, 3)), axis=0)
    rates = cohort.false_match(fps, scores)
    assert (np.diff(rates, axis=0) <= 1e-12).all() and ((0 <= rates) & (rates <= 1)).all()


def test_a_calibrated_rate_is_the_share_of_held_out_pairs_at_or_above_the_margin():
    """With a calibration, a host's rate is counted over the held-out pairs' margins over their
    fingerprint's anchor (the score that 0.001 of its cohort's impostors reach), not over the cohort."""
    fp = [_Set([[1.0, 0.0]])]
    # 2000 impostor windows of 4 devices (and the fingerprint's own type, left out) spread over angles.
    rng = np.random.default_rng(1)
    thetas = rng.uniform(0.2, 3.0, 2000)
    vectors = [[1.0, 0.0]] + [[np.cos(t), np.sin(t)] for t in thetas]
    groups = [0] + [1 + i % 4 for i in range(2000)]
    plain = _cohort(vectors, groups)
    impostors = plain.impostors(fp)
    anchor = Cohort.anchors(impostors)[0]
    # The anchor is the lowest impostor score that at most 0.001 of the (equally weighted) impostors reach.
    assert plain.false_match(fp, np.array([[anchor]]))[0, 0] <= 0.001
    below = impostors[0][0][impostors[0][0] < anchor][-1]
    assert plain.false_match(fp, np.array([[below]]))[0, 0] > 0.001
    # Held-out margins -0.2, -0.1, 0, 0.1 out of 10 pairs (6 of them routers, never named).
    calibrated = _cohort(vectors, groups)
    calibrated.calibration = Calibration(np.array([-0.2, -0.1, 0.0, 0.1]), 10)
    scores = anchor + np.array([[-0.3], [-0.1], [0.05], [0.1], [0.2]])
    assert calibrated.false_match(fp, scores)[:, 0] == pytest.approx([0.4, 0.3, 0.1, 0.1, 0.0])
    assert calibrated.rate_over() == 10 and plain.rate_over() == 2001 == calibrated.rate_over("set-all")
    # The set-all score has no calibration: its rates stay the cohort's.
    set_all = plain.false_match(fp, scores, "set-all")
    assert calibrated.false_match(fp, scores, "set-all") == pytest.approx(set_all)


def test_a_window_that_sends_the_fingerprints_own_traffic_is_no_impostor():
    """With same_traffic 0.9, a twin type's window that scores 0.99 against the fingerprint does not
    set its scale; the other windows still do, and a cohort of nothing but twins keeps them all."""
    fp = [_Set([[1.0, 0.0]])]
    # Group 0: the fingerprint's type (left out); 1: its twin (cos 0.1 = 0.995); 2 and 3 further off.
    angles = {0: [0.0], 1: [0.1, 1.2], 2: [0.8], 3: [1.0]}
    vectors = [[np.cos(t), np.sin(t)] for thetas in angles.values() for t in thetas]
    groups = [g for g, thetas in angles.items() for _ in thetas]
    cohort = _cohort(vectors, groups)
    assert cohort.impostors(fp)[0][0].max() == pytest.approx(np.cos(0.1))
    cohort.same_traffic = 0.9
    kept = cohort.impostors(fp)[0][0]
    assert kept.max() == pytest.approx(np.cos(0.8)) and len(kept) == 3
    twins = _cohort([[1.0, 0.0], [np.cos(0.1), np.sin(0.1)]], [0, 1])
    twins.same_traffic = 0.9
    assert len(twins.impostors(fp)[0][0]) == 1


def test_the_shipped_calibration_was_measured_on_labs_the_model_never_trained_on(model):
    cohort = Cohort.load(model)
    assert cohort is not None and cohort.calibration is not None
    calibration = cohort.calibration
    assert calibration.pairs >= 4000 and (np.diff(calibration.margins) >= 0).all()
    # Its floor: a margin above every held-out pair states a rate below 1 / pairs, shown as such.
    assert calibration.rate(np.array([calibration.margins[-1] + 1]))[0] == 0
    assert calibration.rate(np.array([calibration.margins[0] - 1]))[0] <= 1


def test_cohort_scores_its_windows_as_the_scan_scores_a_host():
    rng = np.random.default_rng(1)
    table = unit(rng.normal(size=(40, 8)))
    windows = [rng.choice(40, size=int(n), replace=False) for n in rng.integers(5, 21, 30)]
    cohort = Cohort(table, windows, np.arange(30) % 3, 20, "0" * 64)
    fps = [_Set(rng.normal(size=(20, 8))), _Set(rng.normal(size=(7, 8)))]
    expected = [[set_scores([table[w]], [f])[0, 0] for f in fps] for w in windows]
    assert cohort.scores(fps) == pytest.approx(np.asarray(expected))


def test_set_score_is_one_for_the_same_set_and_counts_repeats():
    rng = np.random.default_rng(2)
    a = unit(rng.normal(size=(4, 8)))
    assert set_scores([a], [_Set(a)])[0, 0] == pytest.approx(1.0)
    # The same kinds of packet in other numbers: Chamfer alone would tie, the mean part does not.
    more = np.concatenate([a, a[:1], a[:1], a[:1]])
    assert set_scores([more], [_Set(a)], chamfer_weight=1.0)[0, 0] == pytest.approx(1.0)
    assert set_scores([more], [_Set(a)])[0, 0] < 1.0


@pytest.fixture(scope="module")
def model() -> Model:
    return Model.load()


def test_shipped_cohort_matches_the_shipped_encoder(model):
    cohort = Cohort.load(model)
    assert cohort is not None and len(cohort) >= 1000
    assert cohort.table.shape[1] == model.embedding_dim
    assert np.allclose(np.linalg.norm(cohort.table, axis=1), 1.0, atol=1e-3)
    assert all(1 <= len(w) <= cohort.packets for w in cohort.windows)


def test_each_device_finds_its_own_enrollment_capture_first(devices, model, tmp_path):
    """self_rank1 = 1 through the real scan: every device's enrollment capture(s), merged with the
    others' (one device of each pair that shares a MAC), and its own host first for its own fingerprint."""
    from tool.evaluation.dataset import device_packets
    from tool.scan import scan

    shared_mac = {"D-LinkHomeHub", "HueSwitch"}  # each shares a MAC with another device (data README)
    chosen = [d for name, d in sorted(devices.items()) if name not in shared_mac]
    macs = [d.mac for d in chosen]
    assert len(set(macs)) == len(macs)
    packets = device_packets(chosen)
    fps = [Fingerprint.from_packets(model, packets[d.name].enrollment(20), d.name) for d in chosen]
    # Each device's enrollment capture(s): capture 1, and the next ones where it holds under 20 packets.
    files = []
    for d in chosen:
        count = 0
        for capture, own in zip(d.captures, packets[d.name].per_capture):
            files.append(str(capture))
            count += len(own)
            if count >= 20:
                break
    merged = tmp_path / "enrollment-captures.pcapng"
    subprocess.run(["mergecap", "-a", "-w", str(merged), *files], check=True, capture_output=True)
    result = scan(merged, fps, model)
    for d in chosen:
        ranked = sorted(result.hosts, key=lambda h: -h["match"][d.name])
        assert ranked[0]["mac"] == d.mac, (d.name, [(h["mac"], h["match"][d.name]) for h in ranked[:3]])


def test_set_vector_is_the_normalised_mean():
    vectors = np.array([[3.0, 0.0], [0.0, 4.0]])
    assert set_vector(vectors) == pytest.approx(np.array([1.5, 2.0]) / 2.5)


@pytest.mark.parametrize(
    "content",
    [
        '{"format": "deepnetprint-cohort"}',
        "not json",
        '{"format": "deepnetprint-cohort", "embeddings": [[1]]}',
        "calibration",
    ],
)
def test_damaged_cohort_is_one_line_and_exit_2(tmp_path, clean_env, content):
    import shutil

    from conftest import run_command
    from tool.model import models_dir

    models = tmp_path / "models"
    shutil.copytree(models_dir(), models, ignore=shutil.ignore_patterns("__pycache__", "*.py", "README.md"))
    if content == "calibration":  # a good cohort whose calibration is damaged
        import json

        data = json.loads((models / "cohort.json").read_text())
        data["calibration"]["margins"] = ["x"]
        content = json.dumps(data)
    (models / "cohort.json").write_text(content)
    demo = Path(__file__).resolve().parent.parent / "examples"
    fp = tmp_path / "camera.fp"
    mac = (demo / "camera.mac").read_text().strip()
    enrolled = run_command(
        "dnp-enroll", str(demo / "enroll-camera.pcap"), "--mac", mac, "-o", str(fp), "--models", str(models),
        "--quiet", env=clean_env,
    )  # fmt: skip
    assert enrolled.returncode == 0, enrolled.stderr
    done = run_command(
        "dnp-scan", str(demo / "demo.pcapng"), "-f", str(fp), "--models", str(models), env=clean_env
    )
    assert done.returncode == 2 and "cohort" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
