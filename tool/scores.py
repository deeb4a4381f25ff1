"""Scores: each packet's p(Target) for each fingerprint, and each host's set score.

The Matcher scores packets (the encoder and the prototype head, each distinct input once); `set_scores`
is the one computation of a host's set score, which dnp-scan, dnp-watch, dnp-hunt, the cohort and
dnp-eval all call. What a score means, a verdict or not, is tool/verdict.py's.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from tool.capture import Packet
from tool.constants import HOST_SCORES, PACKETS
from tool.hosts import Host, host_packets_embedded
from tool.text import field_tag, memo_info, packet_text

if TYPE_CHECKING:
    from tool.fingerprint import Fingerprint
    from tool.model import Model

CHUNK = 4096
# The memo holds at most this many entries: a capture of unique texts (random payloads, session tokens
# in URLs) must not grow memory with its length. 2**16 entries are ~40 MB at most. It forgets the
# least recently used first (by generations, see Matcher), so a stream of days keeps what recurs.
MEMO_LIMIT = 1 << 16


class Matcher:
    """Scores packets against fingerprints, remembering the probabilities of each distinct input.

    Two memos, both indexes into one table of probabilities: raw (protocol, blanked Info, the dissected
    fields' tag[, length]) to row, which spares packet_text on repeats, and model input (`Model.key`) to
    row, which spares the encoder on texts that differ only in what packet_text masks.

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
        self._texts: dict[tuple[str, str, str], str] = {}
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
            self._table = grown(self._table, 2 * len(self._table))
            self._embeddings = grown(self._embeddings, 2 * len(self._embeddings))
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
        fields = self.model.fields
        new: dict[Hashable, tuple[str, int, int]] = {}
        rows = []
        for p in packets:
            info = memo_info(p.info)
            # The dissected fields' tag (tool.text.field_tag), for a model that reads it.
            tag = field_tag(p) if fields else ""
            raw = (p.protocol, info, tag, p.length) if uses_length else (p.protocol, info, tag)
            row = by_raw.get(raw)
            if row is None:
                row = old_raw.get(raw)
                if row is None:
                    # Frames of several lengths share a text: packet_text once for all of them.
                    text = texts.get((p.protocol, info, tag))
                    if text is None:
                        text = texts[(p.protocol, info, tag)] = packet_text(p.protocol, info, tag)
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


def grown(array: np.ndarray, rows: int) -> np.ndarray:
    out = np.zeros((rows, array.shape[1]), dtype=array.dtype)
    out[: len(array)] = array
    return out


class PacketSet(Protocol):
    """What the set score reads of a fingerprint: its support packets' embeddings [S, E], unit rows."""

    @property
    def packets(self) -> np.ndarray: ...


def set_scores(
    hosts: Sequence[np.ndarray], fingerprints: Sequence[PacketSet], chamfer_weight: float | None = None
) -> np.ndarray:
    """The `set` host score [H, K] of each host, from the embeddings [n, E] of its first packets, for
    each fingerprint: in [-1, 1], 0 for a host without packets.

    Two sets of packets are compared by the Chamfer similarity (half the mean, over the host's
    packets, of each one's best cosine among the fingerprint's, plus half the same the other way
    round) and by the cosine of their mean embeddings, CHAMFER_WEIGHT each (`chamfer_weight` for
    another share). A join sequence is several kinds of packet (association, DHCP, ARP, DNS, TLS):
    every kind must find its like on the other side, and a host that sends only the kind everybody
    sends scores low; the mean part counts how often each kind comes, which the Chamfer part cannot,
    so two devices that send the same kinds in other numbers do not tie. Chosen on the development
    half's held-out fingerprints (model card).

    >>> set_scores([first_embeddings], [fingerprint])[0, 0]   # doctest: +SKIP
    """
    from tool.model import CHAMFER_WEIGHT, unit

    weight = CHAMFER_WEIGHT if chamfer_weight is None else chamfer_weight
    supports = [np.asarray(f.packets, dtype=np.float64) for f in fingerprints]  # [S, E] each
    support_means = [unit(s.sum(axis=0)) for s in supports]  # [E] each
    out = np.zeros((len(hosts), len(fingerprints)), dtype=np.float64)
    # Host by host: a host's score depends on its own packets only, to the last bit, so two hosts
    # that sent the same packets tie exactly (dnp-eval's ranks count ties).
    for h, first in enumerate(hosts):
        if len(first) == 0:
            continue
        queries = unit(first)  # [n, E]
        mean = unit(queries.sum(axis=0))  # [E]
        for k, support in enumerate(supports):
            if len(support) == 0:
                continue
            sims = queries @ support.T  # [n, S]
            chamfer = 0.5 * (sims.max(axis=1).mean() + sims.max(axis=0).mean())
            out[h, k] = weight * chamfer + (1 - weight) * float(mean @ support_means[k])
    return out


def sum_scores(
    sums: np.ndarray, hosts: Sequence[Host], fingerprints: Sequence[Fingerprint], how: str, use_all: bool
) -> np.ndarray:
    """Each host's score [H, K] for the scores dnp-scan sums as packets stream by: `set-all` from the
    sums of the embeddings [H, E], the paper's `first20` and `mean` from the sums of p(Target) [H, K]."""
    from tool.model import set_score

    if not len(hosts):
        return np.zeros((0, len(fingerprints)))
    if how == "set-all":
        return set_score(sums, np.asarray([f.vector for f in fingerprints]))
    counts = np.asarray([h.packets if use_all else h.first_count for h in hosts], dtype=np.float64)
    return sums / counts[:, None]


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
    from tool.model import unit

    if how not in HOST_SCORES:
        raise ValueError(f"host score must be one of {HOST_SCORES}")
    every = how in ("set-all", "mean")
    if how == "set":
        return set_scores(host_packets_embedded(model, hosts, host_packets), fingerprints)
    if how == "set-all":
        sums = [e.sum(axis=0) for e in host_packets_embedded(model, hosts, None)]
        vectors = unit(np.asarray(sums).reshape(len(hosts), model.embedding_dim))
        return vectors @ np.asarray([f.vector for f in fingerprints]).T
    matcher = Matcher(model, fingerprints)
    out = np.zeros((len(hosts), len(fingerprints)), dtype=np.float64)
    for h, packets in enumerate(hosts):
        packets = list(packets) if every else list(packets)[:host_packets]
        if packets:
            out[h] = matcher.score(packets).astype(np.float64).mean(axis=0)
    return out
