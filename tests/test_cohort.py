"""The cohort that turns a host score into a verdict, and the set-level score on the real data set."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from tool.cohort import Cohort
from tool.fingerprint import Fingerprint
from tool.model import Model, set_vector


def _cohort(vectors, groups) -> Cohort:
    return Cohort(np.asarray(vectors, float), np.asarray(groups), 20, "0" * 64)


def test_false_match_weighs_every_cohort_device_the_same_and_leaves_out_the_nearest():
    fp = np.array([[1.0, 0.0]])
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


def test_false_match_is_monotone_in_the_score():
    rng = np.random.default_rng(0)
    cohort = _cohort(rng.normal(size=(300, 8)), rng.integers(0, 6, 300))
    fps = rng.normal(size=(3, 8))
    scores = np.sort(rng.uniform(-1, 1, size=(50, 3)), axis=0)
    rates = cohort.false_match(fps, scores)
    assert (np.diff(rates, axis=0) <= 1e-12).all() and ((0 <= rates) & (rates <= 1)).all()


@pytest.fixture(scope="module")
def model() -> Model:
    return Model.load()


def test_shipped_cohort_matches_the_shipped_encoder(model):
    cohort = Cohort.load(model)
    assert cohort is not None and len(cohort) >= 1000
    assert cohort.vectors.shape[1] == model.embedding_dim
    assert np.allclose(np.linalg.norm(cohort.vectors, axis=1), 1.0, atol=1e-3)


def test_each_device_finds_its_own_enrollment_capture_first(devices, model, tmp_path):
    """self_rank1 = 1 through the real scan: every device's enrollment capture(s), merged with the
    others' (one device of each pair that shares a MAC), and its own host first for its own fingerprint."""
    from tool.dataset import device_packets
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
