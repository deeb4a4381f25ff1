"""Scanning: every packet of a capture scored against fingerprints, and every host summarised.

Packets stream from tshark in chunks; each distinct model input (masked text, and frame length
where the model reads it) is encoded and matched once and remembered, so the 175,000 packets of
the whole data set cost about 5,600 encoder inputs and 7,500 packet_text calls, and memory stays
flat as the capture grows: only the per-host sums, the bounded memos and the few best packets are
kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tool.capture import Packet, read_packets
from tool.constants import HOST_SCORES, PACKETS, SET_SCORES
from tool.fingerprint import Fingerprint
from tool.hosts import HostTally
from tool.hosts import host_packets_embedded as host_packets_embedded  # export/cohort.py's import
from tool.records import ScanResult, TopPackets, host_rows
from tool.scores import Matcher, grown, set_scores, sum_scores
from tool.verdict import verdict_rule

if TYPE_CHECKING:
    from tool.model import Model

PacketSink = Callable[[Packet, np.ndarray], None]


def scan(
    capture: str | Path,
    fingerprints: Sequence[Fingerprint],
    model: Model | None = None,
    *,
    threshold: float | None = None,
    max_false_match: float | None = None,
    judge_routers: bool = False,
    host_score: str = "set",
    host_packets: int = PACKETS,
    display_filter: str | None = None,
    fingerprint_files: Sequence[str] | None = None,
    on_packet: PacketSink | None = None,
) -> ScanResult:
    """Score every packet of a capture against the fingerprints and rank the hosts.

    `on_packet(packet, probs)` sees each packet as it is scored (tool.outputs.ScanOutputs spools its
    rows there). Hosts come best match first; `hosts[i]["match"]` maps fingerprint names to the
    host's score and `hosts[i]["false_match"]` to its false-match rate against the model's cohort.
    The result's lists go straight into pandas or jq:

    >>> result = scan("suspect.pcap", [load("cam.fp", model)], model)   # doctest: +SKIP
    >>> [(h["mac"], h["score"], h["verdict"]) for h in result.hosts[:3]]  # doctest: +SKIP
    """
    from tool.model import Model

    if host_score not in HOST_SCORES:
        raise ValueError(f"host_score must be one of {HOST_SCORES}")
    if not fingerprints:
        raise ValueError("scan needs at least one fingerprint")
    if host_packets < 1:
        raise ValueError("host_packets must be at least 1")
    model = model or Model.load()
    for fp in fingerprints:
        if fp.embeddings is None or (fp.encoder_sha256, fp.head_sha256) != (
            model.encoder_sha256,
            model.head_sha256,
        ):
            fp.check_model(model)
    rule = verdict_rule(model, host_score, threshold, max_false_match, judge_routers)
    names = [f.name for f in fingerprints]
    matcher = Matcher(model, fingerprints)
    use_set = host_score in SET_SCORES
    use_all = host_score in ("set-all", "mean")
    width = model.embedding_dim if use_set else len(names)
    # Per-host sums (of embeddings for set-all, of p(Target) for the paper's scores) live in arrays
    # indexed by host number and grow by whole chunks: a numpy call per chunk, not per packet, is what
    # keeps the scan as fast as tshark. "set" keeps each host's first packets' embeddings instead.
    sums = np.zeros((64, width), dtype=np.float64)
    best = TopPackets()
    total = 0
    tally = HostTally(host_packets, use_all)
    hosts = tally.hosts
    for batch, probs, embedded in matcher.chunks(read_packets(capture, display_filter)):
        total += len(batch)
        counted = tally.add(batch)
        if host_score == "set":  # at most host_packets packets a host: a short loop, not a sum
            for i, host in enumerate(counted):
                if host is not None:
                    host.firsts.append(embedded[i].copy())  # a view would keep the whole chunk alive
        else:
            if len(hosts) > len(sums):
                sums = grown(sums, 2 * len(hosts))
            mask = [i for i, host in enumerate(counted) if host is not None]
            rows = np.asarray([counted[i].number for i in mask], dtype=np.intp)  # type: ignore[union-attr]
            values = (embedded if use_set else probs).astype(np.float64)
            # np.add.at adds in packet order, so every sum equals the packet-by-packet one.
            np.add.at(sums, rows, values[mask])
        best.add(batch, probs)
        if on_packet is not None:
            for packet, row in zip(batch, probs):
                on_packet(packet, row)
    ordered = list(hosts.values())
    if host_score == "set":
        scores = set_scores([np.asarray(h.firsts) for h in ordered], fingerprints)
    else:
        scores = sum_scores(sums[: len(ordered)], ordered, fingerprints, host_score, use_all)
    return ScanResult(
        capture=str(capture),
        fingerprints=[
            {"name": f.name, "file": str(path)}
            for f, path in zip(fingerprints, fingerprint_files or [""] * len(fingerprints))
        ],
        threshold=rule.threshold,
        max_false_match=rule.max_false_match,
        host_score=host_score,
        host_packets=host_packets,
        packets=total,
        distinct_inputs=matcher.distinct_inputs,
        hosts=host_rows(ordered, fingerprints, scores, rule),
        top_packets=best.rows(names),
        rule=rule.describe(),
        cohort_hosts=rule.rate_over,
    )
