"""The dnp-23 evaluation protocol (../shared/EVALUATION.md): enrollment, test captures, the report.

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

from tool import metrics
from tool.capture import Packet
from tool.dataset import DEV_CAPTURES, ENROLL_PACKETS, Device, DevicePackets, brand, sha256_file

if TYPE_CHECKING:
    from tool.model import Model

PROTOCOL = "dnp-23"
CAPTURE_PACKETS = 20  # a test capture is scored by the mean over its first 20 device packets
THRESHOLD = 0.5


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


class ModelScorer:
    """The shipped model, through the runtime's fingerprint and scan code."""

    name = "deepnetprint"

    def __init__(self, directory: str | os.PathLike | None = None, threads: int = 1):
        from tool.model import Model

        self.model: Model = Model.load(directory, threads=threads)

    def enroll(self, name: str, packets: Sequence[Packet]) -> Any:
        from tool.fingerprint import Fingerprint, FingerprintError

        try:
            return Fingerprint.from_packets(self.model, packets, name)
        except FingerprintError as e:
            raise EvaluationError(f"{name}: {e}") from None

    def score(self, packets: Sequence[Packet], states: Sequence[Any]) -> np.ndarray:
        from tool.scan import score_packets

        return np.asarray(score_packets(self.model, packets, states), dtype=np.float64)

    def models(self) -> dict[str, str]:
        from tool.model import MANIFEST

        # Model.load has checked every listed file against these digests.
        folder = Path(self.model.directory)
        files = {name: entry["sha256"] for name, entry in self.model.manifest["files"].items()}
        files[MANIFEST] = sha256_file(folder / MANIFEST)
        return dict(sorted(files.items()))


@dataclass
class TestCapture:
    """One test capture: whose it is, and the device's own packets in it."""

    device: str
    path: Path
    packets: list[Packet]


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


def tested_captures(device: Device, enrollment_captures: int) -> list[int]:
    """The captures a device is tested on: 11-20, or, in a smaller folder, those after enrollment."""
    n = len(device.captures)
    first = DEV_CAPTURES if n > DEV_CAPTURES else enrollment_captures
    return list(range(first, n))


def load_protocol(root: str | os.PathLike | None = None) -> ProtocolData:
    """Read a data folder the dnp-23 way: every device's enrollment packets and test captures."""
    from tool.capture import CaptureError
    from tool.dataset import device_packets, load_devices

    try:
        devices = load_devices(root)
        packets = device_packets(devices)
    except CaptureError as e:
        raise EvaluationError(str(e)) from None
    enrollment: dict[str, list[Packet]] = {}
    tests: list[TestCapture] = []
    development: dict[str, list[list[Packet]]] = {}
    empty: list[str] = []
    for device in devices:
        dp = packets[device.name]
        enrollment[device.name] = dp.enrollment(ENROLL_PACKETS)
        if not enrollment[device.name]:
            raise EvaluationError(f"{device.name}: no packet from {device.mac} in its captures to enroll")
        used = _enrollment_captures(dp.per_capture, ENROLL_PACKETS)
        indices = tested_captures(device, used)
        development[device.name] = dp.per_capture[: indices[0] if indices else len(dp.per_capture)]
        for i in indices:
            if dp.per_capture[i]:
                tests.append(TestCapture(device.name, device.captures[i], dp.per_capture[i]))
            else:
                empty.append(str(device.captures[i]))
    return ProtocolData(Path(root) if root else None, devices, packets, enrollment, tests, development, empty)


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


def evaluate_scorer(data: ProtocolData, scorer: Scorer) -> Evaluation:
    """Enroll every device, score every test packet once, and read the protocol's numbers off."""
    start = time.perf_counter()
    names = data.names
    states = [scorer.enroll(name, data.enrollment[name]) for name in names]
    index = {name: i for i, name in enumerate(names)}
    packets: list[Packet] = []
    labels: list[int] = []
    bounds: list[tuple[int, int]] = []
    for test in data.tests:
        bounds.append((len(packets), len(packets) + len(test.packets)))
        packets.extend(test.packets)
        labels.extend([index[test.device]] * len(test.packets))
    scores = np.asarray(scorer.score(packets, states), dtype=np.float64)
    if scores.shape != (len(packets), len(names)):
        raise EvaluationError(
            f"{scorer.name}: scores of shape {scores.shape}, expected {(len(packets), len(names))}"
        )
    per_capture = metrics.capture_scores(scores, bounds, CAPTURE_PACKETS)
    predicted = [names[int(i)] for i in per_capture.argmax(axis=1)]
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


def summarise(ev: Evaluation) -> dict[str, Any]:
    """The JSON report of one method (the keys EVALUATION.md lists, and a few more)."""
    truth, pred, splits = ev.capture_devices, ev.capture_predicted, ev.splits
    brand_pred = [t if brand(t) == brand(p) else p for t, p in zip(truth, pred)]
    report: dict[str, Any] = {
        "protocol": PROTOCOL,
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
