"""The evaluation protocols dnp-23 and lab2 (../shared/EVALUATION.md): enrollment, test captures, the
report. Both labs go through the same code; tool.evaluation.dataset.Lab holds what differs.

A method is measured through a small `Scorer` interface (enroll a device from its packets, score
packets against enrolled devices), so the shipped model and the training-free baselines go through
the same protocol and metric code. `ModelScorer` calls the runtime's own fingerprint and scan
functions: what is measured is what `dnp-enroll` and `dnp-scan` ship.

>>> data = load_protocol()                                        # doctest: +SKIP
>>> report = summarise(evaluate_scorer(data, ModelScorer()))      # doctest: +SKIP
>>> report["capture_top1"]["all"]                                 # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from tool.capture import Packet
from tool.constants import MAX_FALSE_MATCH, PACKETS, SET_SCORES
from tool.evaluation import metrics
from tool.evaluation.dataset import DEV_CAPTURES, IOT_SENTINEL, Device, DevicePackets, Lab, brand
from tool.files import sha256_file

if TYPE_CHECKING:
    from tool.model import Model

PROTOCOL = IOT_SENTINEL.protocol  # the default protocol
THRESHOLD = 0.5  # packet_balanced_accuracy's p(Target) threshold (docs/evaluation.md, metric 3)
ENROLL_CURVE = (5, 10, 20, 50, 100)  # docs/evaluation.md, metric 7
QUERY_CURVE = (1, 5, 20, 50, None)  # None: all the capture's device packets


class EvaluationError(Exception):
    """The evaluation cannot run (no data, no devices, no model): one line for the user."""


class Scorer(Protocol):
    """A method that learns a device from a few packets and scores packets against devices."""

    name: str

    def enroll(self, name: str, packets: Sequence[Packet]) -> Any:
        """What the method keeps of one device, from its enrollment packets."""
        ...

    def score(self, packets: Sequence[Packet], states: Sequence[Any]) -> np.ndarray:
        """A probability-like score in [0, 1] of each packet for each enrolled device: [N, K]."""
        ...

    def models(self) -> dict[str, str]:
        """The files the method's results depend on: {file name: sha256}."""
        ...

    def host_scores(
        self, hosts: Sequence[Sequence[Packet]], states: Sequence[Any], packets: int | None
    ) -> Any:
        """The method's host score of each host (its first `packets`, None: all) for each device: [H, K]."""
        ...

    def false_match(self, states: Sequence[Any], scores: np.ndarray) -> np.ndarray | None:
        """Each host score's false-match rate [H, K] where the method calibrates its verdicts, else None."""
        ...


class ModelScorer:
    """The shipped model, through the runtime's fingerprint and scan code."""

    name = "deepnetprint"

    def __init__(self, directory: str | os.PathLike | None = None, threads: int = 1, host_score: str = "set"):
        from tool.cohort import Cohort
        from tool.model import Model

        self.model: Model = Model.load(directory, threads=threads)
        self.host_score = host_score
        self.cohort = Cohort.load(self.model) if host_score in SET_SCORES else None

    def enroll(self, name: str, packets: Sequence[Packet]) -> Any:
        from tool.fingerprint import Fingerprint, FingerprintError

        try:
            return Fingerprint.from_packets(self.model, packets, name)
        except FingerprintError as e:
            raise EvaluationError(f"{name}: {e}") from None

    def score(self, packets: Sequence[Packet], states: Sequence[Any]) -> np.ndarray:
        from tool.scores import score_packets

        return np.asarray(score_packets(self.model, packets, states), dtype=np.float64)

    def host_scores(
        self, hosts: Sequence[Sequence[Packet]], states: Sequence[Any], packets: int | None
    ) -> Any:
        from tool.scores import host_scores

        how = self.host_score
        if packets is None:  # every packet of the host: the all-packet variant of the same score
            how = {"set": "set-all", "first20": "mean"}.get(how, how)
        return host_scores(self.model, hosts, states, how, packets or 1)

    def false_match(self, states: Sequence[Any], scores: np.ndarray) -> np.ndarray | None:
        if self.cohort is None:
            return None
        return self.cohort.false_match(states, scores, self.host_score)

    def models(self) -> dict[str, str]:
        from tool.cohort import COHORT
        from tool.model import MANIFEST

        # Model.load has checked every listed file against these digests.
        folder = Path(self.model.directory)
        files = {name: entry["sha256"] for name, entry in self.model.manifest["files"].items()}
        files[MANIFEST] = sha256_file(folder / MANIFEST)
        if self.cohort is not None:
            files[COHORT] = sha256_file(folder / COHORT)
        return dict(sorted(files.items()))


@dataclass
class TestCapture:
    """One test capture: whose it is, its place among the device's test captures, its device packets."""

    device: str
    path: Path
    packets: list[Packet]
    position: int = 0  # k - 1 for the device's k-th test capture: the hosts of one position meet


@dataclass
class ProtocolData:
    """Everything the protocol reads: devices, their enrollment packets and their test captures."""

    root: Path | None
    devices: list[Device]
    packets: dict[str, DevicePackets]
    enrollment: dict[str, list[Packet]]
    tests: list[TestCapture]
    development: dict[str, list[list[Packet]]]  # each device's packets in the captures before its tests
    empty_tests: list[str] = field(default_factory=list)  # test captures without a device packet
    enrollment_hosts: dict[str, list[Packet]] = field(default_factory=dict)  # the enrollment capture(s)
    lab: Lab = IOT_SENTINEL

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.devices]

    @property
    def splits(self) -> dict[str, str]:
        return {d.name: d.split for d in self.devices}


def _enrollment_captures(per_capture: Sequence[Sequence[Packet]], count: int) -> int:
    """How many captures, from the first, the enrollment packets come from."""
    taken = 0
    for i, packets in enumerate(per_capture):
        taken += len(packets)
        if taken >= count:
            return i + 1
    return len(per_capture)


def tested_captures(device: Device, enrollment_captures: int, half: str = "test") -> list[int]:
    """The captures a device is tested on: 11-20, or, in a smaller folder, those after enrollment.

    half="dev" tests on the development half instead, on the captures after enrollment up to 10:
    where settings are chosen (docs/evaluation.md), with the test half never read."""
    n = len(device.captures)
    if half == "dev":
        return list(range(enrollment_captures, min(n, DEV_CAPTURES)))
    first = DEV_CAPTURES if n > DEV_CAPTURES else enrollment_captures
    return list(range(first, n))


def load_protocol(
    root: str | os.PathLike | None = None, half: str = "test", lab: Lab | str | None = None
) -> ProtocolData:
    """Read a lab's data folder the protocol's way: every device's enrollment packets and test
    captures (half="dev": the development half's captures after enrollment stand in for the test
    half). `lab` (a Lab, or its folder or protocol name) defaults to the one `root` holds; `root`
    to the lab's folder under ../shared/data."""
    from tool.capture import CaptureError
    from tool.evaluation.dataset import device_packets, lab_named, lab_of, load_devices

    if half not in ("test", "dev"):
        raise ValueError(f"half is test or dev, got {half!r}")
    try:
        lab = lab_named(lab) if isinstance(lab, str) else (lab or lab_of(root))
        devices = load_devices(root, lab)
        if half == "dev":
            for d in devices:
                d.captures = d.dev_captures  # the test half is not even read
        packets = device_packets(devices)
    except CaptureError as e:
        raise EvaluationError(str(e)) from None
    enrollment: dict[str, list[Packet]] = {}
    tests: list[TestCapture] = []
    development: dict[str, list[list[Packet]]] = {}
    empty: list[str] = []
    hosts: dict[str, list[Packet]] = {}
    for device in devices:
        dp = packets[device.name]
        enrollment[device.name] = dp.enrollment(PACKETS)
        if not enrollment[device.name]:
            raise EvaluationError(f"{device.name}: no packet from {device.mac} in its captures to enroll")
        used = _enrollment_captures(dp.per_capture, PACKETS)
        hosts[device.name] = [p for capture in dp.per_capture[:used] for p in capture]
        indices = tested_captures(device, used, half)
        development[device.name] = dp.per_capture[: indices[0] if indices else len(dp.per_capture)]
        for position, i in enumerate(indices):
            if dp.per_capture[i]:
                tests.append(TestCapture(device.name, device.captures[i], dp.per_capture[i], position))
            else:
                empty.append(str(device.captures[i]))
    return ProtocolData(
        Path(root) if root else None, devices, packets, enrollment, tests, development, empty, hosts, lab
    )


@dataclass
class Evaluation:
    """One method's outcome on the protocol: its predictions and (for packet scorers) its scores."""

    method: str
    names: list[str]  # the fingerprints, in column order
    splits: dict[str, str]
    capture_devices: list[str]
    capture_predicted: list[str]
    capture_scores: np.ndarray | None = None  # [C, K]
    packet_labels: np.ndarray | None = None  # [N] index into names
    packet_scores: np.ndarray | None = None  # [N, K]
    models: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)
    capture_positions: list[int] = field(default_factory=list)  # each test capture's position
    capture_false_match: np.ndarray | None = None  # [C, K] where the method calibrates its verdicts
    self_scores: np.ndarray | None = None  # [K hosts, K]: each device's enrollment capture(s) as a host
    curves: dict[str, dict[str, dict[str, float | None]]] = field(default_factory=dict)
    host_score: str = "set"  # how capture_scores were computed (tool.constants.HOST_SCORES)
    protocol: str = PROTOCOL  # dnp-23 or lab2


def _capture_numbers(data: ProtocolData, scores: np.ndarray) -> dict[str, float | None]:
    """capture_top1 and host_rank1 (over all fingerprints) of one [C, K] table of host scores."""
    names = data.names
    truth = [names.index(t.device) for t in data.tests]
    top1 = float(np.mean(scores.argmax(axis=1) == np.asarray(truth))) if len(truth) else math.nan
    ranks = metrics.host_rank1(scores, truth, [t.position for t in data.tests])
    hits = [h for k in ranks for h in ranks[k]]
    return {"capture_top1": _number(top1), "host_rank1": _number(float(np.mean(hits)) if hits else math.nan)}


def learning_curves(data: ProtocolData, scorer: Scorer) -> dict[str, dict[str, dict[str, float | None]]]:
    """capture_top1 and host_rank1 with n enrollment packets (m = 20) and m query packets (n = 20)."""
    names = data.names
    captures = [t.packets for t in data.tests]
    out: dict[str, dict[str, dict[str, float | None]]] = {"enroll_packets": {}, "query_packets": {}}
    for n in ENROLL_CURVE:
        states = [scorer.enroll(name, data.packets[name].enrollment(n)) for name in names]
        out["enroll_packets"][str(n)] = _capture_numbers(
            data, np.asarray(scorer.host_scores(captures, states, PACKETS), dtype=np.float64)
        )
    states = [scorer.enroll(name, data.enrollment[name]) for name in names]
    for m in QUERY_CURVE:
        out["query_packets"]["all" if m is None else str(m)] = _capture_numbers(
            data, np.asarray(scorer.host_scores(captures, states, m), dtype=np.float64)
        )
    return out


def evaluate_scorer(data: ProtocolData, scorer: Scorer, curves: bool = False) -> Evaluation:
    """Enroll every device, score every test packet and capture once, and read the protocol's numbers off."""
    start = time.perf_counter()
    names = data.names
    states = [scorer.enroll(name, data.enrollment[name]) for name in names]
    index = {name: i for i, name in enumerate(names)}
    packets: list[Packet] = []
    labels: list[int] = []
    for test in data.tests:
        packets.extend(test.packets)
        labels.extend([index[test.device]] * len(test.packets))
    scores = np.asarray(scorer.score(packets, states), dtype=np.float64)
    if scores.shape != (len(packets), len(names)):
        raise EvaluationError(
            f"{scorer.name}: scores of shape {scores.shape}, expected {(len(packets), len(names))}"
        )
    per_capture = np.asarray(
        scorer.host_scores([t.packets for t in data.tests], states, PACKETS), dtype=np.float64
    )
    predicted = [names[int(i)] for i in per_capture.argmax(axis=1)]
    hosts = [data.enrollment_hosts.get(name) or data.enrollment[name] for name in names]
    return Evaluation(
        method=scorer.name,
        names=names,
        splits=data.splits,
        capture_devices=[t.device for t in data.tests],
        capture_predicted=predicted,
        capture_scores=per_capture,
        packet_labels=np.asarray(labels, dtype=np.int64),
        packet_scores=scores,
        models=scorer.models(),
        capture_positions=[t.position for t in data.tests],
        capture_false_match=scorer.false_match(states, per_capture),
        self_scores=np.asarray(scorer.host_scores(hosts, states, PACKETS), dtype=np.float64),
        curves=learning_curves(data, scorer) if curves else {},
        host_score=getattr(scorer, "host_score", "set"),
        protocol=data.lab.protocol,
        seconds=time.perf_counter() - start,
    )


def _number(x: float) -> float | None:
    """JSON has no NaN: an undefined number (no positives, no captures) is null."""
    return None if x is None or math.isnan(x) else round(float(x), 6)


def _by_split(values: dict[str, float], splits: dict[str, str]) -> dict[str, float | None]:
    return {
        "all": _number(metrics.nanmean(list(values.values()))),
        "seen": _number(metrics.nanmean([v for k, v in values.items() if splits[k] == "seen"])),
        "unseen": _number(metrics.nanmean([v for k, v in values.items() if splits[k] == "unseen"])),
    }


def _accuracy_by_split(truth: list[str], pred: list[str], splits: dict[str, str]) -> dict[str, float | None]:
    out = {"all": _number(metrics.accuracy(truth, pred))}
    for split in ("seen", "unseen"):
        pairs = [(t, p) for t, p in zip(truth, pred) if splits[t] == split]
        out[split] = _number(metrics.accuracy([t for t, _ in pairs], [p for _, p in pairs]))
    return out


def packet_metrics(ev: Evaluation) -> dict[str, dict[str, float]]:
    """Per fingerprint: ROC-AUC and balanced accuracy at p >= 0.5 over every test packet."""
    assert ev.packet_scores is not None and ev.packet_labels is not None
    auc: dict[str, float] = {}
    bacc: dict[str, float] = {}
    for k, name in enumerate(ev.names):
        positives = ev.packet_labels == k
        auc[name] = metrics.roc_auc(ev.packet_scores[:, k], positives)
        bacc[name] = metrics.balanced_accuracy(ev.packet_scores[:, k], positives, THRESHOLD)
    return {"auc": auc, "balanced_accuracy": bacc}


def host_metrics(ev: Evaluation) -> dict[str, Any]:
    """What dnp-scan does, one fingerprint against many hosts: host_rank1, host_auc, self_rank1, the
    verdict's error rates at the product's default, and the learning curves (docs/evaluation.md 5-8)."""
    from tool.constants import FALLBACK_THRESHOLD

    assert ev.capture_scores is not None
    index = {name: k for k, name in enumerate(ev.names)}
    truth = [index[d] for d in ev.capture_devices]
    scores = ev.capture_scores
    ranks = metrics.host_rank1(scores, truth, ev.capture_positions)
    per_fp_rank = {ev.names[k]: float(np.mean(v)) for k, v in ranks.items()}
    positives = np.asarray(truth)[:, None] == np.arange(len(ev.names))[None, :]
    per_fp_auc = {n: metrics.roc_auc(scores[:, k], positives[:, k]) for k, n in enumerate(ev.names)}

    def by_split(per_fp: dict[str, float], weights: dict[str, int] | None = None) -> dict[str, float | None]:
        out = {}
        for split in ("all", "seen", "unseen"):
            keys = [n for n in per_fp if split == "all" or ev.splits[n] == split]
            w = np.asarray([(weights or {}).get(n, 1) for n in keys], dtype=np.float64)
            v = np.asarray([per_fp[n] for n in keys], dtype=np.float64)
            ok = ~np.isnan(v)
            out[split] = _number(float((v[ok] * w[ok]).sum() / w[ok].sum()) if ok.any() else math.nan)
        return out

    report: dict[str, Any] = {
        "host_score": ev.host_score,
        # host_rank1 is a share of (fingerprint, position) trials: each fingerprint weighs its trials.
        "host_rank1": by_split(per_fp_rank, {ev.names[k]: len(v) for k, v in ranks.items()}),
        "host_auc": by_split(per_fp_auc),
    }
    if ev.self_scores is not None:
        own_first = metrics.self_rank1(ev.self_scores)
        report["self_rank1"] = _number(float(np.mean(own_first)))
        report["self_rank1_misses"] = [n for n, r in zip(ev.names, own_first) if r < 1.0]
    if ev.capture_false_match is not None:
        matched = ev.capture_false_match <= MAX_FALSE_MATCH
        verdict: dict[str, Any] = {"max_false_match": MAX_FALSE_MATCH, "threshold": None}
    else:
        matched = scores >= FALLBACK_THRESHOLD
        verdict = {"max_false_match": None, "threshold": FALLBACK_THRESHOLD}
    false_match, miss = metrics.verdict_rates(matched, truth)
    verdict.update({"false_match_rate": _number(false_match), "miss_rate": _number(miss)})
    report["verdict"] = verdict
    if ev.curves:
        report["curves"] = ev.curves
    report["host_per_device"] = {
        n: {"host_rank1": _number(per_fp_rank.get(n, math.nan)), "host_auc": _number(per_fp_auc[n])}
        for n in ev.names
    }
    return report


def summarise(ev: Evaluation) -> dict[str, Any]:
    """The JSON report of one method (the keys docs/evaluation.md lists, and a few more)."""
    truth, pred, splits = ev.capture_devices, ev.capture_predicted, ev.splits
    brand_pred = [t if brand(t) == brand(p) else p for t, p in zip(truth, pred)]
    report: dict[str, Any] = {
        "protocol": ev.protocol,
        "method": ev.method,
        "models": dict(ev.models),
        "captures": {
            "all": len(truth),
            "seen": sum(splits[t] == "seen" for t in truth),
            "unseen": sum(splits[t] == "unseen" for t in truth),
        },
        "capture_top1": _accuracy_by_split(truth, pred, splits),
        "brand_top1": _accuracy_by_split(truth, brand_pred, splits),
    }
    per_packet = packet_metrics(ev) if ev.packet_scores is not None else None
    if per_packet is not None:
        assert ev.packet_scores is not None and ev.packet_labels is not None
        report["packet_auc"] = _by_split(per_packet["auc"], splits)
        report["packet_balanced_accuracy"] = _by_split(per_packet["balanced_accuracy"], splits)
        best = ev.packet_scores.argmax(axis=1)
        right = best == ev.packet_labels
        seen = np.asarray([splits[ev.names[i]] == "seen" for i in ev.packet_labels], dtype=bool)
        report["single_packet_top1"] = {
            "all": _number(right.mean() if len(right) else math.nan),
            "seen": _number(right[seen].mean() if seen.any() else math.nan),
            "unseen": _number(right[~seen].mean() if (~seen).any() else math.nan),
        }
        report["test_packets"] = len(right)
    else:
        # A capture classifier gives no per-packet probability: the packet metrics do not apply.
        report["packet_auc"] = {"all": None, "seen": None, "unseen": None}
        report["packet_balanced_accuracy"] = {"all": None, "seen": None, "unseen": None}
        report["single_packet_top1"] = {"all": None}
    per_device: dict[str, Any] = {}
    for name in ev.names:
        mine = [(t, p) for t, p in zip(truth, pred) if t == name]
        entry: dict[str, Any] = {
            "split": splits[name],
            "brand": brand(name),
            "captures": len(mine),
            "capture_top1": _number(metrics.accuracy([t for t, _ in mine], [p for _, p in mine])),
        }
        if per_packet is not None:
            entry["packet_auc"] = _number(per_packet["auc"][name])
            entry["packet_balanced_accuracy"] = _number(per_packet["balanced_accuracy"][name])
        else:
            entry["packet_auc"] = None
        per_device[name] = entry
    report["per_device"] = per_device
    if ev.capture_scores is not None and ev.capture_positions:
        report.update(host_metrics(ev))
    brands: dict[str, Any] = {}
    for b in sorted({brand(n) for n in ev.names}):
        mine = [(t, p) for t, p in zip(truth, brand_pred) if brand(t) == b]
        brands[b] = {
            "devices": [n for n in ev.names if brand(n) == b],
            "captures": len(mine),
            "brand_top1": _number(metrics.accuracy([t for t, _ in mine], [p for _, p in mine])),
        }
    report["per_brand"] = brands
    report["confusions"] = metrics.confusions(truth, pred)
    if ev.capture_scores is not None and ev.capture_scores.shape[1] > 1 and len(ev.capture_scores):
        # Captures whose best two fingerprints are this close are decided by noise, not behaviour.
        top2 = np.sort(ev.capture_scores, axis=1)[:, -2:]
        margin = top2[:, 1] - top2[:, 0]
        report["close_calls"] = {f"margin_under_{m:g}": int((margin < m).sum()) for m in (0.001, 0.01)}
    report["seconds"] = round(ev.seconds, 2)
    if ev.notes:
        report["notes"] = ev.notes
    return report
