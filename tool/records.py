"""Records: the rows every output is written from, each declared once with a comment per field.

A scored packet is a `PacketRow` (the CSV, the Wireshark sidecar, the pcapng comments, the JSON
report's best packets); a host with its scores and verdict is a `HostRow` (the JSON report's hosts,
the hosts table, a hunt's per-capture records); a host over a hunt's captures is a `HuntRow` (the
hunt's table and JSON); an alert of dnp-watch is an `Alert` (a JSONL line).
The field names are the outputs' column and key names: a contract, as Zeek's Info records are. Every
score is written by `score_text` or held by `score_value`.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from tool.capture import Packet
from tool.hosts import Host, add_ips, host_of
from tool.text import memo_info, packet_text

if TYPE_CHECKING:
    from tool.fingerprint import Fingerprint
    from tool.verdict import Verdict

TOP_PACKETS = 10  # the best-matching packets a report lists

SCORE_DIGITS = 6  # decimals of a score in the CSV and the JSON report
CSV_HEADER = ("frame", "time", "eth_src", "eth_dst", "protocol", "info")
CSV_HOST_COLUMNS = ("host_match", "router")  # the --csv columns after the p(Target) ones


def score_text(score: float, digits: int | None = SCORE_DIGITS) -> str:
    """A score as the outputs write it: `digits` decimals (the CSV: 6, a pcapng comment: 4), or with
    None every digit of the float (the sidecar, so the plugin shows exactly what dnp-scan computed)."""
    return repr(float(score)) if digits is None else f"{score:.{digits}f}"


def score_value(score: float) -> float:
    """A score as the JSON report holds it: a float rounded to SCORE_DIGITS decimals."""
    return round(float(score), SCORE_DIGITS)


@dataclass
class PacketRow:
    """One scored packet, as every per-packet output (CSV, sidecar, pcapng comment, the JSON report's
    best packets) writes it. The field names are the outputs' column and key names: a contract."""

    frame: int  # the 1-based number Wireshark gives the frame in its capture file
    time: float  # frame.time_epoch, seconds
    eth_src: str  # the Ethernet source ("" where the link has none)
    eth_dst: str  # the Ethernet destination
    host: str  # the sending host's address (tool.hosts.host_of): the key of the report's host rows
    protocol: str  # tshark's Protocol column
    length: int  # the frame length
    info: str  # tshark's Info column, unmasked
    probabilities: list[float]  # p(Target) for each fingerprint, in the scan's order
    names: list[str]  # the fingerprints' names, in the same order
    host_match: float | None = None  # the sending host's score for its best fingerprint
    router: bool = False  # the sending host is a router (tool.routers): not judged as a device

    @classmethod
    def of(cls, packet: Packet, probs: np.ndarray | Sequence[float], names: list[str]) -> PacketRow:
        return cls(
            packet.frame, packet.time, packet.eth_src, packet.eth_dst, host_of(packet)[0], packet.protocol,
            packet.length, packet.info, [float(p) for p in probs], names,
        )  # fmt: skip

    @property
    def best(self) -> int:
        """The index of the fingerprint this packet matches best."""
        return max(range(len(self.probabilities)), key=self.probabilities.__getitem__)

    def sidecar(self) -> tuple[int, float, str, float | None, bool]:
        """(frame, best p(Target), that fingerprint's name, host_match, router): the Wireshark
        sidecar's row, and the pcapng comment's."""
        best = self.best
        host = None if self.host_match is None else min(1.0, max(-1.0, self.host_match))
        return self.frame, self.probabilities[best], self.names[best], host, self.router

    def csv(self) -> list[object]:
        """The --csv row: CSV_HEADER's fields, one p(Target) per fingerprint, then CSV_HOST_COLUMNS
        (host_match; router: 1 or empty)."""
        return [
            self.frame, f"{self.time:.6f}", self.eth_src, self.eth_dst, self.protocol, self.info,
            *(score_text(p) for p in self.probabilities),
            "" if self.host_match is None else score_text(self.host_match), 1 if self.router else "",
        ]  # fmt: skip

    def top_packet(self) -> dict[str, Any]:
        """The JSON report's row of a best-matching packet."""
        best = self.best
        return {
            "frame": self.frame,
            "time": self.time,
            "eth_src": self.eth_src,
            "host": self.host,
            "protocol": self.protocol,
            "length": self.length,
            "info": self.info,
            "target": self.names[best],
            "probability": score_value(self.probabilities[best]),
        }


@dataclass
class HostRow:
    """One host with its scores and verdict: a row of the JSON report's "hosts" (`to_dict`, in this
    order), of the hosts table, and of a hunt's per-capture records (with first_seen, last_seen)."""

    mac: str | None  # the host's MAC; None for a host known by its IP (where the link has no MAC)
    host: str  # the host's address (tool.hosts.host_of): the key of the row, for every kind of host
    host_kind: str  # what `host` is: "mac" (Ethernet), "wlan" (802.11 source), "sll" (cooked capture's
    # source MAC) or "ip"
    router: bool  # it forwards other hosts' packets (tool.routers): no verdict unless routers are judged
    forwarded: int  # the packets it forwarded (counted in `packets`, read by no score)
    ips: list[str]  # its own IP source addresses, up to tool.hosts.MAX_HOST_IPS, first used first
    packets: int  # how many packets it sent
    match: dict[str, float]  # its host score for each fingerprint, by name (score_value)
    false_match: dict[str, float] | None  # each score's false-match rate; None without a cohort
    best: str  # the fingerprint it matches best: lowest false-match rate, then highest score
    score: float  # its score for `best`
    verdict: str | None  # `best` where the verdict holds for it, else None
    # The other fingerprints whose verdict it also reaches, best score first: the verdict is then
    # uncertain between `verdict` and these (same-vendor siblings send the same traffic).
    alternatives: list[str]
    first_seen: float | None = None  # the times of its first and last packets (epoch seconds): a
    last_seen: float | None = None  # hunt's records hold them, dnp-scan's report does not

    def to_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            # "mac" stays what it always was for Ethernet hosts; "host" is the key for every kind.
            "mac": self.mac,
            "host": self.host,
            "host_kind": self.host_kind,
            "router": self.router,
            "forwarded": self.forwarded,
            "ips": self.ips,
            "packets": self.packets,
            "match": self.match,
        }
        if self.false_match is not None:
            row["false_match"] = self.false_match
        row["best"] = self.best
        row["score"] = self.score
        row["verdict"] = self.verdict
        row["alternatives"] = self.alternatives
        if self.first_seen is not None:
            row["first_seen"], row["last_seen"] = self.first_seen, self.last_seen
        return row


def host_rows(
    hosts: Sequence[Host],
    fingerprints: Sequence[Fingerprint],
    scores: np.ndarray,
    rule: Verdict,
    times: bool = False,
) -> list[dict[str, Any]]:
    """The hosts' rows (HostRow.to_dict), best match first, from their scores [H, K] for the
    fingerprints under the verdict `rule`; `times`: with first_seen and last_seen."""
    names = [f.name for f in fingerprints]
    judged = rule.judge(fingerprints, scores, [host.router for host in hosts])
    rows = []
    for h, host in enumerate(hosts):
        k = int(judged.best[h])
        rates = None if judged.false_match is None else judged.false_match[h]
        rows.append(
            HostRow(
                mac=host.address if host.kind in ("mac", "wlan", "sll") else None,
                host=host.address,
                host_kind=host.kind,
                router=host.router,
                forwarded=host.forwarded,
                ips=host.ips,
                packets=host.packets,
                match={n: score_value(s) for n, s in zip(names, scores[h])},
                false_match=None if rates is None else {n: score_value(f) for n, f in zip(names, rates)},
                best=names[k],
                score=score_value(scores[h, k]),
                verdict=names[k] if judged.matched[h] else None,
                alternatives=[names[j] for j in judged.also[h]],
                first_seen=host.first_seen if times else None,
                last_seen=host.last_seen if times else None,
            )
        )
    rows.sort(key=lambda r: (r.false_match[r.best] if r.false_match is not None else 0.0, -r.score, r.host))
    return [r.to_dict() for r in rows]


@dataclass
class HuntRow:
    """One host and one fingerprint over a hunt's captures: a row of dnp-hunt's table and of its --json
    "hosts" (`to_dict`, in this order), merged from the host's HostRows in every capture where it
    matched the fingerprint (with --all-hosts and verdict None: every capture it was seen in, under
    its best fingerprint)."""

    mac: str | None  # as HostRow's: the host's MAC, None for a host known by its IP
    host: str  # the host's address, for every kind of host
    host_kind: str  # "mac", "wlan", "sll" or "ip"
    ips: list[str]  # its IP sources over the captures, up to tool.hosts.MAX_HOST_IPS
    fingerprint: str  # the fingerprint matched (verdict None: the host's best one)
    score: float  # its best score for the fingerprint over the captures
    false_match_rate: float | None  # the false-match rate of the best match; None for a raw --threshold
    verdict: str | None  # `fingerprint` where the verdict held, else None
    captures: int  # the captures merged into the row
    packets: int  # the packets the host sent in them
    first_seen: float  # the times of its first and last packets over them (epoch seconds)
    last_seen: float
    best_capture: str  # the capture of the best match
    router: bool = False  # it forwarded other hosts' packets in some capture (HostRow.router)

    @classmethod
    def of(cls, row: dict[str, Any], name: str, capture: str, verdict: str | None) -> HuntRow:
        """The row of one capture's host row (HostRow.to_dict) for the fingerprint `name`."""
        return cls(
            row["mac"], row["host"], row["host_kind"], list(row["ips"]), name, row["match"][name],
            row["false_match"][name] if "false_match" in row else None, verdict, 1, row["packets"],
            row["first_seen"], row["last_seen"], capture, row.get("router", False),
        )  # fmt: skip

    def add(self, row: dict[str, Any], name: str, capture: str) -> None:
        """Merge in the same host's row of another capture, for the fingerprint `name`."""
        rate = row["false_match"][name] if "false_match" in row else None
        score = row["match"][name]
        self.captures += 1
        self.packets += row["packets"]
        self.router |= row.get("router", False)
        add_ips(self.ips, row["ips"])  # as dnp-scan keeps them: a router's would be hundreds
        self.first_seen = min(self.first_seen, row["first_seen"])
        self.last_seen = max(self.last_seen, row["last_seen"])
        mine = self.false_match_rate if self.false_match_rate is not None else 0.0
        better = (rate if rate is not None else 0.0, -score) < (mine, -self.score)
        if self.verdict is None and better:  # the unmatched row follows the host's best fingerprint
            self.fingerprint = name
        if better:
            self.score, self.false_match_rate, self.best_capture = score, rate, capture

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class TopPackets:
    """The TOP_PACKETS best-matching packets seen so far, one per distinct model input."""

    def __init__(self) -> None:
        self.best: list[tuple[float, int, Packet, np.ndarray, tuple]] = []
        self.keys: set[tuple] = set()

    def add(self, batch: Sequence[Packet], probs: np.ndarray) -> None:
        """Offer a chunk of packets and their p(Target) [n, K]."""
        best, best_keys = self.best, self.keys
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

    def rows(self, names: list[str]) -> list[dict[str, Any]]:
        """The report's "top_packets" rows, best first."""
        best = sorted(self.best, reverse=True)
        return [PacketRow.of(p, probs, names).top_packet() for _, _, p, probs, _ in best]


@dataclass
class ScanResult:
    """The outcome of a scan (or of a watch, so far), as plain data: `to_dict` is the --json report and
    tool.report prints its tables."""

    capture: str  # the capture's path (a watch's: its interface or file)
    fingerprints: list[dict[str, str]]  # each fingerprint's name and file, in the scan's order
    threshold: float | None  # the verdict's raw threshold, or None for a false-match rate
    max_false_match: float | None  # the verdict's false-match rate, or None for a threshold
    host_score: str  # the host score (tool.constants.HOST_SCORES)
    host_packets: int  # the packets of a host its score reads ("set", "first20")
    packets: int  # packets scanned
    distinct_inputs: int  # distinct model inputs encoded
    hosts: list[dict[str, Any]]  # HostRow.to_dict of each host, best match first
    top_packets: list[dict[str, Any]]  # PacketRow.top_packet of the best-matching packets, best first
    rule: str = ""  # the verdict rule in words
    cohort_hosts: int = 0  # how many hosts the false-match rates are counted over (Verdict.rate_over)

    @property
    def matched(self) -> bool:
        """True when some host gets a verdict for some fingerprint."""
        return any(h["verdict"] is not None for h in self.hosts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "capture": self.capture,
            "fingerprints": self.fingerprints,
            "host_score": self.host_score,
            "host_packets": self.host_packets,
            "threshold": self.threshold,
            "max_false_match": self.max_false_match,
            "cohort_hosts": self.cohort_hosts,
            "packets": self.packets,
            "distinct_inputs": self.distinct_inputs,
            "hosts": self.hosts,
            "top_packets": self.top_packets,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n"


# The keys of an alert line of dnp-watch's --jsonl, in order: a contract with whoever reads them (a
# SIEM, jq; README).
ALERT_KEYS = (
    "event", "time", "mac", "ips", "fingerprint", "alternatives", "score", "false_match_rate", "packets",
)  # fmt: skip
# The keys of the summary line of each matching host, written at exit.
HOST_KEYS = (*ALERT_KEYS, "host_kind", "first_seen", "last_seen", "alerts")


@dataclass
class Alert:
    """A line of dnp-watch's --jsonl: a host that reached the verdict (ALERT_KEYS), or, with `summary`,
    a host that matched during the watch, as it stood at the end (HOST_KEYS)."""

    time: float  # capture time (epoch seconds) of the packet that brought the host to the verdict
    mac: str  # the host's address: its MAC, or its IP where the link layer has none
    ips: list[str]  # its IP source addresses, up to tool.hosts.MAX_HOST_IPS
    fingerprint: str  # the fingerprint it matches best
    score: float  # its set score for that fingerprint
    false_match_rate: (
        float | None
    )  # that score's false-match rate; None where the verdict is a raw --threshold
    packets: int  # packets the host had sent when the alert was raised
    summary: dict[str, Any] | None = None  # a summary's host_kind, first_seen, last_seen, alerts
    # The other fingerprints whose verdict the host also reaches (HostRow.alternatives).
    alternatives: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "event": "alert" if self.summary is None else "host",
            "time": self.time,
            "mac": self.mac,
            "ips": list(self.ips),
            "fingerprint": self.fingerprint,
            "alternatives": list(self.alternatives),
            "score": score_value(self.score),
            "false_match_rate": None if self.false_match_rate is None else score_value(self.false_match_rate),
            "packets": self.packets,
            **(self.summary or {}),
        }
