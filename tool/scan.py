"""Scanning: every packet of a capture scored against fingerprints, and every host summarised.

Packets stream from tshark in chunks; each distinct model input (masked text, and frame length
where the model reads it) is encoded and matched once and remembered, so a capture of 175,000
packets costs about 3,000 encoder calls, and memory stays flat as the capture grows: only the
per-host sums, the memo and the few best packets are kept.
"""

from __future__ import annotations

import heapq
import itertools
import json
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tool.capture import Packet, read_packets
from tool.fingerprint import Fingerprint
from tool.text import packet_text

if TYPE_CHECKING:
    from tool.model import Model

CHUNK = 4096
HOST_PACKETS = 20  # dnp-23 scores a capture by the mean over its first 20 device packets
MAX_HOST_IPS = 8
TOP_PACKETS = 10
HOST_SCORES = ("first20", "mean")
FALLBACK_THRESHOLD = 0.5


class Matcher:
    """Scores packets against fingerprints, remembering the probabilities of each distinct input."""

    def __init__(self, model: Model, fingerprints: Sequence[Fingerprint]):
        self.model = model
        self.fingerprints = list(fingerprints)
        self.prototypes = np.asarray([f.prototype for f in fingerprints], dtype=np.float32)
        self._memo: dict[Hashable, np.ndarray] = {}

    @property
    def distinct_inputs(self) -> int:
        return len(self._memo)

    def score(self, packets: Sequence[Packet]) -> np.ndarray:
        """p(Target) of each packet for each fingerprint: [N, K]."""
        texts = [packet_text(p.protocol, p.info) for p in packets]
        keys = [self.model.key(t, p.length) for t, p in zip(texts, packets)]
        new: dict[Hashable, tuple[str, int]] = {}
        for key, text, packet in zip(keys, texts, packets):
            if key not in self._memo and key not in new:
                new[key] = (text, packet.length)
        if new:
            embedded = self.model.embed([t for t, _ in new.values()], [n for _, n in new.values()])
            probs = self.model.match(embedded, self.prototypes)
            for key, row in zip(new, probs):
                self._memo[key] = row
        if not packets:
            return np.zeros((0, len(self.fingerprints)), dtype=np.float32)
        return np.stack([self._memo[k] for k in keys])

    def stream(self, packets: Iterable[Packet], chunk: int = CHUNK) -> Iterator[tuple[Packet, np.ndarray]]:
        """Yield (packet, its probabilities) in capture order, scoring a chunk at a time."""
        it = iter(packets)
        while batch := list(itertools.islice(it, chunk)):
            yield from zip(batch, self.score(batch))


def score_packets(model: Model, packets: Sequence[Packet], fingerprints: Sequence[Fingerprint]) -> np.ndarray:
    """p(Target) of each packet for each fingerprint, [N, K]: the runtime's one scoring path.

    >>> probs = score_packets(Model.load(), packets, [fingerprint])   # doctest: +SKIP
    """
    return Matcher(model, fingerprints).score(list(packets))


@dataclass
class Host:
    """What a scan learns of one source MAC."""

    mac: str
    ips: list[str] = field(default_factory=list)
    packets: int = 0
    first_sum: np.ndarray | None = None
    first_count: int = 0
    total_sum: np.ndarray | None = None

    def add(self, packet: Packet, probs: np.ndarray, host_packets: int) -> None:
        self.packets += 1
        if packet.ip_src and packet.ip_src not in self.ips and len(self.ips) < MAX_HOST_IPS:
            # 0.0.0.0 is what a DHCP client says before it has an address, not an address it uses.
            if packet.ip_src not in ("0.0.0.0", "::"):
                self.ips.append(packet.ip_src)
        probs64 = probs.astype(np.float64)
        self.total_sum = probs64.copy() if self.total_sum is None else self.total_sum + probs64
        if self.first_count < host_packets:
            self.first_sum = probs64.copy() if self.first_sum is None else self.first_sum + probs64
            self.first_count += 1

    def scores(self, how: str) -> np.ndarray:
        if how == "first20":
            assert self.first_sum is not None
            return self.first_sum / self.first_count
        assert self.total_sum is not None
        return self.total_sum / self.packets


@dataclass
class ScanResult:
    """The outcome of a scan, as plain data (see `hosts_table` and `top_packets_table`)."""

    capture: str
    fingerprints: list[dict[str, str]]
    threshold: float
    host_score: str
    packets: int
    distinct_inputs: int
    hosts: list[dict[str, Any]]
    top_packets: list[dict[str, Any]]

    @property
    def matched(self) -> bool:
        """True when some host scores at or above the threshold for some fingerprint."""
        return any(h["verdict"] is not None for h in self.hosts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "capture": self.capture,
            "fingerprints": self.fingerprints,
            "threshold": self.threshold,
            "host_score": self.host_score,
            "packets": self.packets,
            "distinct_inputs": self.distinct_inputs,
            "hosts": self.hosts,
            "top_packets": self.top_packets,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n"


PacketSink = Callable[[Packet, np.ndarray], None]


def scan(
    capture: str | Path,
    fingerprints: Sequence[Fingerprint],
    model: Model | None = None,
    *,
    threshold: float | None = None,
    host_score: str = "first20",
    display_filter: str | None = None,
    fingerprint_files: Sequence[str] | None = None,
    on_packet: PacketSink | None = None,
    host_packets: int = HOST_PACKETS,
) -> ScanResult:
    """Score every packet of a capture against the fingerprints and rank the hosts.

    `on_packet(packet, probs)` sees each packet as it is scored (the CLI writes CSV and sidecar
    rows there). Hosts come best match first; `hosts[i]["match"]` maps fingerprint names to
    the host's score. The result's lists go straight into pandas:

    >>> result = scan("suspect.pcap", [load("cam.fp", model)], model)   # doctest: +SKIP
    >>> pandas.DataFrame(result.hosts)                                   # doctest: +SKIP
    """
    from tool.model import Model

    if host_score not in HOST_SCORES:
        raise ValueError(f"host_score must be one of {HOST_SCORES}")
    if not fingerprints:
        raise ValueError("scan needs at least one fingerprint")
    model = model or Model.load()
    for fp in fingerprints:
        fp.check_model(model)
    threshold = default_threshold(model) if threshold is None else threshold
    names = [f.name for f in fingerprints]
    matcher = Matcher(model, fingerprints)
    hosts: dict[str, Host] = {}
    best: list[tuple[float, int, Packet, np.ndarray]] = []
    total = 0
    for packet, probs in matcher.stream(read_packets(capture, display_filter)):
        total += 1
        host = hosts.get(packet.eth_src)
        if host is None:
            host = hosts[packet.eth_src] = Host(packet.eth_src)
        host.add(packet, probs, host_packets)
        top = float(probs.max())
        entry = (top, -packet.frame, packet, probs)
        if len(best) < TOP_PACKETS:
            heapq.heappush(best, entry)
        elif top > best[0][0]:
            heapq.heapreplace(best, entry)
        if on_packet is not None:
            on_packet(packet, probs)
    return ScanResult(
        capture=str(capture),
        fingerprints=[
            {"name": f.name, "file": str(path)}
            for f, path in zip(fingerprints, fingerprint_files or [""] * len(fingerprints))
        ],
        threshold=threshold,
        host_score=host_score,
        packets=total,
        distinct_inputs=matcher.distinct_inputs,
        hosts=_rank_hosts(hosts.values(), names, host_score, threshold),
        top_packets=[_packet_row(p, probs, names) for _, _, p, probs in sorted(best, reverse=True)],
    )


def _rank_hosts(hosts: Iterable[Host], names: list[str], how: str, threshold: float) -> list[dict[str, Any]]:
    rows = []
    for host in hosts:
        scores = host.scores(how)
        best = int(np.argmax(scores))
        rows.append(
            {
                "mac": host.mac,
                "ips": host.ips,
                "packets": host.packets,
                "match": {n: round(float(s), 6) for n, s in zip(names, scores)},
                "best": names[best],
                "score": round(float(scores[best]), 6),
                "verdict": names[best] if scores[best] >= threshold else None,
            }
        )
    rows.sort(key=lambda r: (-r["score"], r["mac"]))
    return rows


def _packet_row(packet: Packet, probs: np.ndarray, names: list[str]) -> dict[str, Any]:
    best = int(np.argmax(probs))
    return {
        "frame": packet.frame,
        "time": packet.time,
        "eth_src": packet.eth_src,
        "protocol": packet.protocol,
        "info": packet.info,
        "target": names[best],
        "probability": round(float(probs[best]), 6),
    }


def default_threshold(model: Model | None = None) -> float:
    """The host-score threshold calibrated on the development half for the shipped model."""
    from tool.model import models_dir

    path = (model.directory if model is not None else models_dir()) / "calibration.json"
    try:
        return float(json.loads(path.read_text())["threshold"])
    except (OSError, ValueError, KeyError, TypeError):
        return FALLBACK_THRESHOLD
