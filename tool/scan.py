"""Scanning: every packet of a capture scored against fingerprints, and every host summarised.

Packets stream from tshark in chunks; each distinct model input (masked text, and frame length
where the model reads it) is encoded and matched once and remembered, so the 175,000 packets of
the whole data set cost about 5,600 encoder inputs and 7,500 packet_text calls, and memory stays
flat as the capture grows: only the per-host sums, the bounded memos and the few best packets are
kept.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import json
import re
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tool.capture import Packet, read_packets
from tool.fingerprint import Fingerprint
from tool.text import mask_ports, packet_text

if TYPE_CHECKING:
    from tool.model import Model

CHUNK = 4096
HOST_PACKETS = 20  # dnp-23 scores a capture by the mean over its first 20 device packets
MAX_HOST_IPS = 8
TOP_PACKETS = 10
HOST_SCORES = ("first20", "mean")
FALLBACK_THRESHOLD = 0.5
# Past this many memo entries the memo starts again: a capture of unique texts (random payloads,
# session tokens in URLs) must not grow memory with its length. 2**16 entries are ~40 MB at most.
MEMO_LIMIT = 1 << 16

# Per-connection numbers that packet_text masks anyway: TCP counters, and the port pair that opens
# a TCP or UDP Info. Blanking them before the memo lookup turns the merged data set's 105,000
# distinct raw Infos into 7,900 memo keys, so packet_text runs once per key, not once per packet.
# A counter is blanked only where it is a whole token (no '.', ':' or '-' after it), so no address
# pattern that packet_text applies before its counter rule can have read those digits; leading
# ports are masked by packet_text's own rule. tests/test_robustness.py checks on every packet of the
# data set that packet_text of the blanked Info is packet_text of the raw one.
# The counter's name is checked behind the '=' so that the replacement is a literal string: re
# calls back into Python for a template or a function, once per counter, 421,000 times here.
_COUNTERS_RE = re.compile(
    r"=(?:(?<=\bSeq=)|(?<=\bAck=)|(?<=\bWin=)|(?<=\bSLE=)|(?<=\bSRE=)|(?<=\bTSval=)|(?<=\bTSecr=))"
    r"\d+(?![\w.:-])"
)
_LEADING_PORTS_RE = re.compile(r"(\d{1,5}) (→|->) (\d{1,5})\b")


@functools.lru_cache(maxsize=1 << 14)
def _masked_ports(head: str) -> str:
    match = _LEADING_PORTS_RE.match(head)
    assert match is not None
    return mask_ports(match)


def memo_info(info: str) -> str:
    """The Info with per-connection numbers blanked: packet_text(p, memo_info(i)) == packet_text(p, i).

    >>> memo_info("49158 → 80 [ACK] Seq=17735 Ack=1670 Win=14048 Len=0")
    'EPORT → 80 [ACK] Seq=0 Ack=0 Win=0 Len=0'
    """
    if info[:1].isdigit():
        m = _LEADING_PORTS_RE.match(info)
        if m is not None:
            info = _masked_ports(m.group(0)) + info[m.end() :]
    if "=" in info:
        info = _COUNTERS_RE.sub("=0", info)
    return info


class Matcher:
    """Scores packets against fingerprints, remembering the probabilities of each distinct input.

    Two memos, both indexes into one table of probabilities: raw (protocol, blanked Info[, length])
    to row, which spares packet_text on repeats, and model input (`Model.key`) to row, which spares
    the encoder on texts that differ only in what packet_text masks.
    """

    def __init__(self, model: Model, fingerprints: Sequence[Fingerprint], memo_limit: int = MEMO_LIMIT):
        self.model = model
        self.fingerprints = list(fingerprints)
        self.prototypes = np.asarray([f.prototype for f in fingerprints], dtype=np.float32)
        self.memo_limit = memo_limit
        self._encoded = 0
        self._reset()

    def _reset(self) -> None:
        self._by_raw: dict[tuple, int] = {}
        self._by_input: dict[Hashable, int] = {}
        self._texts: dict[tuple[str, str], str] = {}
        self._table = np.zeros((1024, len(self.fingerprints)), dtype=np.float32)

    @property
    def distinct_inputs(self) -> int:
        """How many distinct model inputs were encoded."""
        return self._encoded

    def rows(self, packets: Sequence[Packet]) -> np.ndarray:
        """Each packet's row in the probability table, encoding the inputs not seen before: [N]."""
        if len(self._by_raw) + len(packets) > self.memo_limit:
            self._reset()
        by_raw, by_input, texts = self._by_raw, self._by_input, self._texts
        uses_length = self.model.uses_length
        key_of = self.model.key
        new: dict[Hashable, tuple[str, int]] = {}
        rows = []
        for p in packets:
            info = memo_info(p.info)
            raw = (p.protocol, info, p.length) if uses_length else (p.protocol, info)
            row = by_raw.get(raw)
            if row is None:
                # Frames of several lengths share a text: packet_text once for all of them.
                text = texts.get((p.protocol, info))
                if text is None:
                    text = texts[(p.protocol, info)] = packet_text(p.protocol, info)
                key = key_of(text, p.length)
                row = by_input.get(key)
                if row is None:
                    row = by_input[key] = len(by_input)
                    new[key] = (text, p.length)
                by_raw[raw] = row
            rows.append(row)
        if new:
            embedded = self.model.embed([t for t, _ in new.values()], [n for _, n in new.values()])
            probs = self.model.match(embedded, self.prototypes)
            first = len(by_input) - len(new)
            if len(by_input) > len(self._table):
                grown = np.zeros((max(len(by_input), 2 * len(self._table)), self._table.shape[1]), np.float32)
                grown[:first] = self._table[:first]
                self._table = grown
            self._table[first : len(by_input)] = probs
            self._encoded += len(new)
        return np.asarray(rows, dtype=np.intp)

    def score(self, packets: Sequence[Packet]) -> np.ndarray:
        """p(Target) of each packet for each fingerprint: [N, K]."""
        packets = list(packets)
        if not packets:
            return np.zeros((0, len(self.fingerprints)), dtype=np.float32)
        out = np.empty((len(packets), len(self.fingerprints)), dtype=np.float32)
        # A sequence longer than the memo may hold is scored a memo's worth at a time.
        step = max(1, self.memo_limit // 2)
        for start in range(0, len(packets), step):
            part = packets[start : start + step]
            rows = self.rows(part)  # first: it may grow the table
            out[start : start + len(part)] = self._table[rows]
        return out

    def chunks(
        self, packets: Iterable[Packet], chunk: int = CHUNK
    ) -> Iterator[tuple[list[Packet], np.ndarray]]:
        """Yield (up to `chunk` packets, their probabilities [n, K]) in capture order."""
        it = iter(packets)
        while batch := list(itertools.islice(it, chunk)):
            yield batch, self.score(batch)

    def stream(self, packets: Iterable[Packet], chunk: int = CHUNK) -> Iterator[tuple[Packet, np.ndarray]]:
        """Yield (packet, its probabilities) in capture order, scoring a chunk at a time."""
        for batch, probs in self.chunks(packets, chunk):
            yield from zip(batch, probs)


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
    number: int = 0  # the host's row in a scan's per-host arrays

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
    # Per-host sums live in arrays indexed by host number and grow by whole chunks: a numpy call per
    # chunk, not per packet, is what keeps the scan as fast as tshark.
    first_sum = np.zeros((64, len(names)), dtype=np.float64)
    total_sum = np.zeros_like(first_sum)
    best: list[tuple[float, int, Packet, np.ndarray, tuple]] = []
    best_keys: set[tuple] = set()
    total = 0
    for batch, probs in matcher.chunks(read_packets(capture, display_filter)):
        total += len(batch)
        index: list[int] = []
        first: list[bool] = []
        for packet in batch:
            host = hosts.get(packet.eth_src)
            if host is None:
                host = hosts[packet.eth_src] = Host(packet.eth_src)
                host.number = len(hosts) - 1
            host.packets += 1
            ip = packet.ip_src
            if ip and len(host.ips) < MAX_HOST_IPS and ip not in host.ips and ip not in ("0.0.0.0", "::"):
                # 0.0.0.0 is what a DHCP client says before it has an address, not an address it uses.
                host.ips.append(ip)
            index.append(host.number)
            first.append(host.first_count < host_packets)
            if host.first_count < host_packets:
                host.first_count += 1
        if len(hosts) > len(total_sum):
            first_sum, total_sum = (_grown(a, 2 * len(hosts)) for a in (first_sum, total_sum))
        rows = np.asarray(index, dtype=np.intp)
        probs64 = probs.astype(np.float64)
        # np.add.at adds in packet order, so every sum equals the packet-by-packet one.
        np.add.at(total_sum, rows, probs64)
        mask = np.asarray(first, dtype=bool)
        np.add.at(first_sum, rows[mask], probs64[mask])
        tops = probs.max(axis=1)
        floor = best[0][0] if len(best) >= TOP_PACKETS else -np.inf
        for i in np.flatnonzero(tops > floor).tolist():
            packet = batch[i]
            # One row per distinct model input: ten copies of the same ARP request tell the analyst
            # less than ten different packets; the earliest frame of each stands for the rest.
            key = (packet_text(packet.protocol, memo_info(packet.info)), packet.length)
            if key in best_keys:
                continue
            top = float(tops[i])
            entry = (top, -packet.frame, packet, probs[i], key)
            if len(best) < TOP_PACKETS:
                heapq.heappush(best, entry)
            elif top > best[0][0]:
                best_keys.discard(heapq.heapreplace(best, entry)[4])
            else:
                continue
            best_keys.add(key)
        if on_packet is not None:
            for packet, row in zip(batch, probs):
                on_packet(packet, row)
    for host in hosts.values():
        host.total_sum = total_sum[host.number].copy()
        host.first_sum = first_sum[host.number].copy()
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
        top_packets=[_packet_row(p, probs, names) for _, _, p, probs, _ in sorted(best, reverse=True)],
    )


def _grown(array: np.ndarray, rows: int) -> np.ndarray:
    out = np.zeros((rows, array.shape[1]), dtype=array.dtype)
    out[: len(array)] = array
    return out


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
        "length": packet.length,
        "info": packet.info,
        "target": names[best],
        "probability": round(float(probs[best]), 6),
    }


def default_threshold(model: Model | None = None) -> float:
    """The host-score threshold calibrated on the development half for the shipped model."""
    from tool.model import models_dir

    path = (model.directory if model is not None else models_dir()) / "calibration.json"
    try:
        calibration = json.loads(path.read_text())
        threshold = float(calibration["threshold"])
    except (OSError, ValueError, KeyError, TypeError):
        return FALLBACK_THRESHOLD
    # A threshold calibrated for another encoder says nothing about this one's scores.
    if model is not None and calibration.get("encoder_sha256") != model.encoder_sha256:
        return FALLBACK_THRESHOLD
    return threshold
