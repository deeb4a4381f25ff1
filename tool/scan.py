"""Scanning: every packet of a capture scored against fingerprints, and every host summarised.

Packets stream from tshark in chunks; each distinct model input (masked text, and frame length
where the model reads it) is encoded and matched once and remembered, so the 175,000 packets of
the whole data set cost about 5,600 encoder inputs and 7,500 packet_text calls, and memory stays
flat as the capture grows: only the per-host sums, the bounded memos and the few best packets are
kept.
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
from tool.cohort import Cohort
from tool.constants import FALLBACK_THRESHOLD, HOST_SCORES, MAX_FALSE_MATCH, PACKETS, SET_SCORES
from tool.fingerprint import Fingerprint
from tool.text import memo_info, packet_text

if TYPE_CHECKING:
    from tool.model import Model

CHUNK = 4096
MAX_HOST_IPS = 8
TOP_PACKETS = 10
# The memo holds at most this many entries: a capture of unique texts (random payloads, session tokens
# in URLs) must not grow memory with its length. 2**16 entries are ~40 MB at most. It forgets the
# least recently used first (by generations, see Matcher), so a stream of days keeps what recurs.
MEMO_LIMIT = 1 << 16


class Matcher:
    """Scores packets against fingerprints, remembering the probabilities of each distinct input.

    Two memos, both indexes into one table of probabilities: raw (protocol, blanked Info[, length])
    to row, which spares packet_text on repeats, and model input (`Model.key`) to row, which spares
    the encoder on texts that differ only in what packet_text masks.

    Each memo is bounded least-recently-used by generations: entries go into the current generation;
    when it holds `memo_limit / 2`, it becomes the previous one and the one before is forgotten, its
    table rows reused. An entry found in the previous generation moves into the current one, so what
    keeps recurring is never forgotten and the memo holds at most `memo_limit` entries (plus a chunk).
    A lookup that hits the current generation, nearly every one in a capture, costs one dict lookup.
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
        self._old_raw: dict[tuple, int] = {}  # the previous generation of each
        self._old_input: dict[Hashable, int] = {}
        self._texts: dict[tuple[str, str], str] = {}
        self._free: list[int] = []  # table rows no entry refers to any more
        self._rows = 0  # table rows handed out
        self._table = np.zeros((1024, len(self.fingerprints)), dtype=np.float32)
        self._embeddings = np.zeros((1024, self.model.embedding_dim), dtype=np.float32)

    def _age(self) -> None:
        """A new generation: what was not used during the last one is forgotten, its rows freed."""
        self._old_raw, self._by_raw = self._by_raw, {}
        self._old_input, self._by_input = self._by_input, {}
        self._texts = {}
        live = np.zeros(self._rows, dtype=bool)
        live[list(self._old_raw.values())] = True
        live[list(self._old_input.values())] = True
        self._free = np.flatnonzero(~live).tolist()

    def _new_row(self) -> int:
        if self._free:
            return self._free.pop()
        row = self._rows
        self._rows += 1
        if row >= len(self._table):
            self._table = _grown(self._table, 2 * len(self._table))
            self._embeddings = _grown(self._embeddings, 2 * len(self._embeddings))
        return row

    @property
    def distinct_inputs(self) -> int:
        """How many distinct model inputs were encoded (an input forgotten and seen again counts twice)."""
        return self._encoded

    @property
    def memo_size(self) -> int:
        """Entries held in the memos (raw and model input, both generations)."""
        return len(self._by_raw) + len(self._old_raw) + len(self._by_input) + len(self._old_input)

    def rows(self, packets: Sequence[Packet]) -> np.ndarray:
        """Each packet's row in the probability table, encoding the inputs not seen before: [N].

        The rows stay valid until the next call: only a call's start may start a new generation."""
        if len(self._by_raw) + len(packets) > self.memo_limit // 2:
            self._age()
        by_raw, by_input, texts = self._by_raw, self._by_input, self._texts
        old_raw, old_input = self._old_raw, self._old_input
        uses_length = self.model.uses_length
        key_of = self.model.key
        new: dict[Hashable, tuple[str, int, int]] = {}
        rows = []
        for p in packets:
            info = memo_info(p.info)
            raw = (p.protocol, info, p.length) if uses_length else (p.protocol, info)
            row = by_raw.get(raw)
            if row is None:
                row = old_raw.get(raw)
                if row is None:
                    # Frames of several lengths share a text: packet_text once for all of them.
                    text = texts.get((p.protocol, info))
                    if text is None:
                        text = texts[(p.protocol, info)] = packet_text(p.protocol, info)
                    key = key_of(text, p.length)
                    row = by_input.get(key)
                    if row is None:
                        row = old_input.get(key)
                        if row is None:
                            row = self._new_row()
                            new[key] = (text, p.length, row)
                        by_input[key] = row
                by_raw[raw] = row
            rows.append(row)
        if new:
            embedded = self.model.embed([t for t, _, _ in new.values()], [n for _, n, _ in new.values()])
            probs = self.model.match(embedded, self.prototypes)
            index = np.asarray([r for _, _, r in new.values()], dtype=np.intp)
            self._table[index] = probs
            self._embeddings[index] = embedded
            self._encoded += len(new)
        return np.asarray(rows, dtype=np.intp)

    def score_and_embed(self, packets: Sequence[Packet]) -> tuple[np.ndarray, np.ndarray]:
        """p(Target) of each packet for each fingerprint [N, K], and each packet's embedding [N, E]."""
        packets = list(packets)
        probs = np.empty((len(packets), len(self.fingerprints)), dtype=np.float32)
        embedded = np.empty((len(packets), self.model.embedding_dim), dtype=np.float32)
        # A sequence longer than the memo may hold is scored a memo's worth at a time.
        step = max(1, self.memo_limit // 2)
        for start in range(0, len(packets), step):
            part = packets[start : start + step]
            rows = self.rows(part)  # first: it may grow the tables
            probs[start : start + len(part)] = self._table[rows]
            embedded[start : start + len(part)] = self._embeddings[rows]
        return probs, embedded

    def score(self, packets: Sequence[Packet]) -> np.ndarray:
        """p(Target) of each packet for each fingerprint: [N, K]."""
        return self.score_and_embed(packets)[0]

    def chunks(
        self, packets: Iterable[Packet], chunk: int = CHUNK
    ) -> Iterator[tuple[list[Packet], np.ndarray, np.ndarray]]:
        """Yield (up to `chunk` packets, their probabilities [n, K], their embeddings [n, E]) in order."""
        it = iter(packets)
        while batch := list(itertools.islice(it, chunk)):
            yield (batch, *self.score_and_embed(batch))

    def stream(self, packets: Iterable[Packet], chunk: int = CHUNK) -> Iterator[tuple[Packet, np.ndarray]]:
        """Yield (packet, its probabilities) in capture order, scoring a chunk at a time."""
        for batch, probs, _ in self.chunks(packets, chunk):
            yield from zip(batch, probs)


def score_packets(model: Model, packets: Sequence[Packet], fingerprints: Sequence[Fingerprint]) -> np.ndarray:
    """p(Target) of each packet for each fingerprint, [N, K]: the runtime's one scoring path.

    >>> probs = score_packets(Model.load(), packets, [fingerprint])   # doctest: +SKIP
    """
    return Matcher(model, fingerprints).score(list(packets))


def host_packets_embedded(
    model: Model, hosts: Sequence[Sequence[Packet]], host_packets: int | None
) -> list[np.ndarray]:
    """The embeddings [n, E] of each host's first `host_packets` packets (None: all), each of length 1;
    each distinct model input is encoded once."""
    from tool.model import unit

    keys: dict[Hashable, int] = {}
    inputs: list[tuple[str, int]] = []
    rows: list[list[int]] = []
    for packets in hosts:
        packets = list(packets) if host_packets is None else list(packets)[:host_packets]
        row = []
        for p in packets:
            text = packet_text(p.protocol, p.info)
            key = model.key(text, p.length)
            if key not in keys:
                keys[key] = len(inputs)
                inputs.append((text, p.length))
            row.append(keys[key])
        rows.append(row)
    embedded = unit(model.embed([t for t, _ in inputs], [n for _, n in inputs]))
    return [embedded[row] if row else np.zeros((0, model.embedding_dim)) for row in rows]


def host_vectors(model: Model, hosts: Sequence[Sequence[Packet]], host_packets: int | None) -> np.ndarray:
    """The set vector (tool.model.set_vector) of each host's first `host_packets` packets (None: all),
    [H, E]; a host without packets gets the zero vector."""
    from tool.model import unit

    sums = [e.sum(axis=0) for e in host_packets_embedded(model, hosts, host_packets)]
    return unit(np.asarray(sums).reshape(len(hosts), model.embedding_dim))


def host_scores(
    model: Model,
    hosts: Sequence[Sequence[Packet]],
    fingerprints: Sequence[Fingerprint],
    how: str = "set",
    host_packets: int = PACKETS,
) -> np.ndarray:
    """The host score of each packet sequence for each fingerprint, [H, K], as dnp-scan computes it.

    Each sequence stands for one host's packets in capture order; `how` is one of HOST_SCORES ("set"
    and "first20" read the first `host_packets` of them). A host without packets scores 0.
    """
    if how not in HOST_SCORES:
        raise ValueError(f"host score must be one of {HOST_SCORES}")
    every = how in ("set-all", "mean")
    if how == "set":
        return set_scores(host_packets_embedded(model, hosts, host_packets), fingerprints)
    if how == "set-all":
        return host_vectors(model, hosts, None) @ np.asarray([f.vector for f in fingerprints]).T
    matcher = Matcher(model, fingerprints)
    out = np.zeros((len(hosts), len(fingerprints)), dtype=np.float64)
    for h, packets in enumerate(hosts):
        packets = list(packets) if every else list(packets)[:host_packets]
        if packets:
            out[h] = matcher.score(packets).astype(np.float64).mean(axis=0)
    return out


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
        return [_packet_row(p, probs, names) for _, _, p, probs, _ in sorted(self.best, reverse=True)]


@dataclass
class Host:
    """What a scan learns of one sending host; its sums live in the scan's per-host arrays."""

    mac: str  # the host's address (Packet.host): a MAC, or an IP address where the link has none
    number: int  # the host's row in a scan's per-host arrays
    kind: str = "mac"  # Packet.host_kind: "mac", "wlan", "sll" or "ip"
    ips: list[str] = field(default_factory=list)
    packets: int = 0
    first_count: int = 0  # how many of its packets count as its first ones (up to host_packets)
    first_seen: float = 0.0  # the time of its first and last packets (epoch seconds)
    last_seen: float = 0.0


class HostTally:
    """The sending hosts of a capture as its packets stream by, in capture order: each host's
    addresses, packet count, first and last time, and which packets are its first `host_packets`."""

    def __init__(self, host_packets: int = PACKETS, use_all: bool = False):
        self.hosts: dict[str, Host] = {}
        self.host_packets = host_packets
        self.use_all = use_all  # every packet counts (set-all, mean), not only a host's first ones

    def add(self, batch: Sequence[Packet]) -> tuple[list[int], list[bool]]:
        """Count a batch of packets: each one's host number, and whether its host score reads it."""
        hosts, host_packets, use_all = self.hosts, self.host_packets, self.use_all
        index: list[int] = []
        counted: list[bool] = []
        for packet in batch:
            # The best address the link layer offers; a packet with none (no Ethernet, cooked or IP
            # source) belongs to no host: lumped together, such packets would make one bogus host.
            address = packet.host
            if not address:
                index.append(0)
                counted.append(False)
                continue
            host = hosts.get(address)
            if host is None:
                host = hosts[address] = Host(address, len(hosts), packet.host_kind, first_seen=packet.time)
            host.packets += 1
            host.last_seen = packet.time
            ip = packet.ip_src
            if ip and len(host.ips) < MAX_HOST_IPS and ip not in host.ips and ip not in ("0.0.0.0", "::"):
                # 0.0.0.0 is what a DHCP client says before it has an address, not an address it uses.
                host.ips.append(ip)
            index.append(host.number)
            counted.append(use_all or host.first_count < host_packets)
            if host.first_count < host_packets:
                host.first_count += 1
        return index, counted


@dataclass
class Verdict:
    """The rule that turns a host score into a verdict: a raw threshold, or a false-match rate."""

    threshold: float | None  # raw host score, when given (or when no cohort calibrates the score)
    max_false_match: float | None  # the share of cohort hosts allowed to reach a match
    cohort: Cohort | None
    how: str = "set"  # the host score the cohort's hosts are scored by

    def matches(self, score: float, false_match: float | None) -> bool:
        """Whether a host's score (and its false-match rate, for a calibrated rule) is a match."""
        if self.threshold is not None:
            return score >= self.threshold
        assert false_match is not None and self.max_false_match is not None
        return false_match <= self.max_false_match

    def describe(self) -> str:
        if self.threshold is not None:
            return f"threshold {self.threshold:.3f}"
        assert self.max_false_match is not None and self.cohort is not None
        return f"false-match rate <= {self.max_false_match:g} ({len(self.cohort)} cohort hosts)"


@dataclass
class ScanResult:
    """The outcome of a scan, as plain data (see `hosts_table` and `top_packets_table`)."""

    capture: str
    fingerprints: list[dict[str, str]]
    threshold: float | None
    max_false_match: float | None
    host_score: str
    host_packets: int
    packets: int
    distinct_inputs: int
    hosts: list[dict[str, Any]]
    top_packets: list[dict[str, Any]]
    rule: str = ""  # the verdict rule in words
    cohort_hosts: int = 0  # how many cohort hosts the false-match rates are counted over (0: none)

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


PacketSink = Callable[[Packet, np.ndarray], None]


def verdict_rule(
    model: Model, host_score: str, threshold: float | None = None, max_false_match: float | None = None
) -> Verdict:
    """The verdict a scan applies: --threshold if given, else the cohort's false-match rate for the set
    scores (default MAX_FALSE_MATCH), else the fallback threshold (the paper's p(Target) scores, or a
    model that ships no cohort)."""
    if threshold is not None:
        return Verdict(float(threshold), None, None, host_score)
    cohort = Cohort.load(model) if host_score in SET_SCORES else None
    if cohort is None:
        return Verdict(FALLBACK_THRESHOLD, None, None, host_score)
    rate = MAX_FALSE_MATCH if max_false_match is None else float(max_false_match)
    return Verdict(None, rate, cohort, host_score)


def scan(
    capture: str | Path,
    fingerprints: Sequence[Fingerprint],
    model: Model | None = None,
    *,
    threshold: float | None = None,
    max_false_match: float | None = None,
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
    rule = verdict_rule(model, host_score, threshold, max_false_match)
    names = [f.name for f in fingerprints]
    matcher = Matcher(model, fingerprints)
    use_set = host_score in SET_SCORES
    use_all = host_score in ("set-all", "mean")
    width = model.embedding_dim if use_set else len(names)
    # Per-host sums (of embeddings for set-all, of p(Target) for the paper's scores) live in arrays
    # indexed by host number and grow by whole chunks: a numpy call per chunk, not per packet, is what
    # keeps the scan as fast as tshark. "set" reads each host's first packets themselves instead.
    sums = np.zeros((64, width), dtype=np.float64)
    firsts: dict[int, list[np.ndarray]] = {}  # for "set": each host's first host_packets embeddings
    best = TopPackets()
    total = 0
    tally = HostTally(host_packets, use_all)
    hosts = tally.hosts
    for batch, probs, embedded in matcher.chunks(read_packets(capture, display_filter)):
        total += len(batch)
        index, counted = tally.add(batch)
        if len(hosts) > len(sums):
            sums = _grown(sums, 2 * len(hosts))
        rows = np.asarray(index, dtype=np.intp)
        mask = np.asarray(counted, dtype=bool)
        if host_score == "set":  # at most host_packets packets a host: a short loop, not a sum
            for i in np.flatnonzero(mask).tolist():
                firsts.setdefault(index[i], []).append(embedded[i])
        else:
            values = (embedded if use_set else probs).astype(np.float64)
            # np.add.at adds in packet order, so every sum equals the packet-by-packet one.
            np.add.at(sums, rows[mask], values[mask])
        best.add(batch, probs)
        if on_packet is not None:
            for packet, row in zip(batch, probs):
                on_packet(packet, row)
    ordered = list(hosts.values())
    scores = _host_scores(sums[: len(ordered)], firsts, ordered, fingerprints, host_score, use_all)
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
        hosts=rank_hosts(ordered, names, scores, fingerprints, rule),
        top_packets=best.rows(names),
        rule=rule.describe(),
        cohort_hosts=len(rule.cohort) if rule.cohort is not None else 0,
    )


def set_host_rows(
    hosts: Sequence[Host],
    firsts: dict[int, list[np.ndarray]],
    fingerprints: Sequence[Fingerprint],
    rule: Verdict,
) -> list[dict[str, Any]]:
    """The host rows of ScanResult.hosts, best match first, under the `set` score, for hosts whose
    first packets' embeddings (`firsts[host.number]`, in capture order) were gathered elsewhere: how
    dnp-hunt ranks the hosts of a capture it read in several parts."""
    hosts = list(hosts)
    scores = set_scores([np.asarray(firsts[h.number]) for h in hosts], fingerprints)
    return rank_hosts(hosts, [f.name for f in fingerprints], scores, fingerprints, rule)


def _host_scores(
    sums: np.ndarray,
    firsts: dict[int, list[np.ndarray]],
    hosts: list[Host],
    fingerprints: Sequence[Fingerprint],
    how: str,
    use_all: bool,
) -> np.ndarray:
    """Each host's score for each fingerprint [H, K] from its per-host sums or first packets."""
    from tool.model import set_score

    if not hosts:
        return np.zeros((0, len(fingerprints)))
    if how == "set":
        return set_scores([np.asarray(firsts[h.number]) for h in hosts], fingerprints)
    if how == "set-all":
        return set_score(sums, np.asarray([f.vector for f in fingerprints]))
    counts = np.asarray([h.packets if use_all else h.first_count for h in hosts], dtype=np.float64)
    return sums / counts[:, None]


def set_scores(firsts: Sequence[np.ndarray], fingerprints: Sequence[Fingerprint]) -> np.ndarray:
    """dnp-scan's `set` score [H, K] of each host from the embeddings [n, E] of its first packets."""
    from tool.model import set_similarity, unit

    supports = [f.packets for f in fingerprints]
    scores = [[set_similarity(unit(first), s) for s in supports] for first in firsts]
    return np.asarray(scores, dtype=np.float64).reshape(len(firsts), len(fingerprints))


def _grown(array: np.ndarray, rows: int) -> np.ndarray:
    out = np.zeros((rows, array.shape[1]), dtype=array.dtype)
    out[: len(array)] = array
    return out


def best_fingerprint(scores: np.ndarray, false_match: np.ndarray | None) -> np.ndarray:
    """Each host's best fingerprint [H]: the lowest false-match rate, ties (and no cohort) by score."""
    if false_match is None:
        return scores.argmax(axis=1)
    # lexsort's last key is the primary one.
    return np.asarray([np.lexsort((-s, f))[0] for s, f in zip(scores, false_match)], dtype=np.intp)


def rank_hosts(
    hosts: list[Host],
    names: list[str],
    scores: np.ndarray,
    fingerprints: Sequence[Fingerprint],
    rule: Verdict,
) -> list[dict[str, Any]]:
    """dnp-scan's host rows (the --json report's "hosts"), best match first, from the hosts' scores
    [H, K] for the fingerprints named `names`."""
    from tool.outputs import score_value

    false_match = None
    if rule.cohort is not None and len(hosts):
        false_match = rule.cohort.false_match(fingerprints, scores, rule.how)
    best = best_fingerprint(scores, false_match)
    rows = []
    for h, host in enumerate(hosts):
        k = int(best[h])
        matched = rule.matches(scores[h, k], None if false_match is None else false_match[h, k])
        row: dict[str, Any] = {
            # "mac" stays what it always was for Ethernet hosts; "host" is the key for every kind.
            "mac": host.mac if host.kind in ("mac", "wlan", "sll") else None,
            "host": host.mac,
            "host_kind": host.kind,
            "ips": host.ips,
            "packets": host.packets,
            "match": {n: score_value(s) for n, s in zip(names, scores[h])},
        }
        if false_match is not None:
            row["false_match"] = {n: score_value(f) for n, f in zip(names, false_match[h])}
        row["best"] = names[k]
        row["score"] = score_value(scores[h, k])
        row["verdict"] = names[k] if matched else None
        rows.append(row)
    rows.sort(
        key=lambda r: (r["false_match"][r["best"]] if "false_match" in r else 0.0, -r["score"], r["host"])
    )
    return rows


def _packet_row(packet: Packet, probs: np.ndarray, names: list[str]) -> dict[str, Any]:
    from tool.outputs import PacketRow

    return PacketRow.of(packet, probs, names).top_packet()
